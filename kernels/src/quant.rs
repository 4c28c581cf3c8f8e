//! Quantized matrix products for the CPU: Q4_1 (the packaged SmolLM2's matrices), whose
//! candle `vec_dot` is the scalar fallback on x86, and Q8_0 (its embedding table and tied
//! output matrix), whose candle matmul reads the whole matrix again for every input row.
//! Weights stay in their GGUF blocks (20 or 34 bytes per 32 values); activations are quantized
//! per row to Q8_1 blocks (llama.cpp's scheme), and one block's dot product is an integer sum,
//! so the SIMD kernels (AVX2, and AVX-512 VNNI where the CPU has it) and the scalar references
//! agree up to the order of the float operations on the per-block terms. Several input rows
//! (batched decode, prefill) are taken eight or four at a time as a [`Panel`], each weight
//! block loaded and unpacked once for the panel, the panel's block scales converted to f32
//! once per product. Where the CPU runs them, a matrix's rows are stored eight at a time in
//! a grouped layout ([`grouped`]: Q4_0, Q4_1, Q8_0), whose kernels compute eight weight rows
//! per pass with one register of sums, so that a block's conversion and scaling serve eight
//! rows; the rows after the last eight stay plain blocks ([`Blocks`]).
//!
//! [`QLinear`] wraps a matrix as a candle custom op, so the decoder calls it like any other
//! `QMatMul`; the work is split over candle's own CPU thread pool (the barrier pool its
//! quantized matmuls use), so the two never compete for the cores.
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use half::f16;

/// Values per block.
pub const QK: usize = 32;

/// A GGUF Q4_1 block: `value = d · q + m` for 4-bit `q`; byte `j` holds value `j` in its low
/// nibble and value `j + 16` in its high one.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Packed 4-bit values.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// A GGUF Q4_0 block: `value = d · (q − 8)` for 4-bit `q`, packed as in Q4_1.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Packed 4-bit values.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// A GGUF Q5_0 block: `value = d · (q − 16)` for 5-bit `q`: the low 4 bits packed as in Q4_1,
/// bit `j` of `qh` the fifth bit of value `j`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits, little-endian.
    pub qh: [u8; 4],
    /// Packed low 4 bits.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// A GGUF Q8_0 block: `value = d · q` for signed 8-bit `q`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Signed 8-bit values.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// A Q8_1 block of activations: `value ≈ d · q`, with `s = d · Σq` kept for the minimum term
/// of the Q4_1 dot product.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d` times the sum of `qs`.
    pub s: f16,
    /// Signed 8-bit values.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

impl Default for BlockQ8_1 {
    fn default() -> Self {
        Self {
            d: f16::ZERO,
            s: f16::ZERO,
            qs: [0; QK],
        }
    }
}

/// Quantizes `x` (a multiple of 32 values) to Q8_1 blocks (round half away from zero, scale =
/// max |x| / 127, NaN values quantized to 0 and left out of the maximum), with AVX2 where the
/// CPU has it (the same bytes as [`quantize_q8_1_scalar`]).
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    assert_eq!(x.len(), out.len() * QK, "x is not whole blocks");
    #[cfg(target_arch = "x86_64")]
    if crate::features::avx2() {
        // SAFETY: the CPU has AVX2; x holds out.len() blocks.
        return unsafe { avx2::quantize_q8_1(x, out) };
    }
    quantize_q8_1_scalar(x, out)
}

/// [`quantize_q8_1`] in plain Rust: the reference the SIMD version is tested against.
pub fn quantize_q8_1_scalar(x: &[f32], out: &mut [BlockQ8_1]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(xs) {
            // Round half away from zero, inline (f32::round is a libm call).
            let x = v * id;
            let r = (x + 0.5f32.copysign(x)) as i32;
            *q = r as i8;
            sum += r;
        }
        block.d = f16::from_f32(d);
        block.s = f16::from_f32(d * sum as f32);
    }
}

/// `R` activation rows (1, 4 or 8) for the multi-row kernels: their blocks, and each block's
/// `d` and `s` as f32 (`d[i][r]`, `s[i][r]`: block `i` of row `r`), converted once per
/// product rather than once per weight row.
pub struct Panel<'a, const R: usize> {
    q: [&'a [BlockQ8_1]; R],
    d: Vec<[f32; R]>,
    // Read by the SIMD kernels only (the scalar reference reads the blocks).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    s: Vec<[f32; R]>,
}

impl<'a, const R: usize> Panel<'a, R> {
    /// The rows (of equal length); `R` is 1, 4 or 8 (the row kernels' [`WeightBlock::dotn`]
    /// takes 4 or 8, the grouped kernels any).
    pub fn new(q: [&'a [BlockQ8_1]; R]) -> Self {
        assert!(R == 1 || R == 4 || R == 8, "panels are 1, 4 or 8 rows");
        let n = q[0].len();
        assert!(q.iter().all(|r| r.len() == n), "rows of unequal length");
        let d = (0..n).map(|i| q.map(|r| r[i].d.to_f32())).collect();
        let s = (0..n).map(|i| q.map(|r| r[i].s.to_f32())).collect();
        Self { q, d, s }
    }

    /// Blocks per row.
    pub fn len(&self) -> usize {
        self.d.len()
    }

    /// Whether the rows are empty.
    pub fn is_empty(&self) -> bool {
        self.d.is_empty()
    }
}

/// A block format of weight matrices, multiplied with Q8_1 activations.
pub trait WeightBlock: Copy + Send + Sync + 'static {
    /// Bytes of one block in a GGUF file.
    const BYTES: usize;
    /// A block from its GGUF bytes (little-endian).
    fn parse(bytes: &[u8]) -> Self;
    /// The 32 values of the block.
    fn values(&self) -> [f32; QK];
    /// The dot product of a row of blocks with a row of activations, in plain Rust: the
    /// reference the SIMD kernels are tested against.
    fn dot_scalar(w: &[Self], x: &[BlockQ8_1]) -> f32;
    /// The same with the CPU's SIMD where it has it.
    fn dot(w: &[Self], x: &[BlockQ8_1]) -> f32;
    /// The dot products of one weight row with a panel of 4 or 8 activation rows.
    fn dotn<const R: usize>(w: &[Self], x: &Panel<R>) -> [f32; R];
    /// Eight rows' blocks of one block column in the format's grouped layout ([`grouped`]);
    /// [`NoGroup`] for a format without one.
    type Group: Copy + Send + Sync + 'static;
    /// The group of eight rows' blocks, or `None` where the format has no grouped layout.
    fn group(blocks: [&Self; 8]) -> Option<Self::Group>;
    /// Row `lane`'s block of a group: the block it was made from, bit for bit.
    fn ungroup(g: &Self::Group, lane: usize) -> Self;
    /// The dot products of eight weight rows (their groups, one per block column) with a panel
    /// of activation rows: `[r][lane]`.
    fn group_dotn<const R: usize>(g: &[Self::Group], x: &Panel<R>) -> [[f32; 8]; R];
}

/// `dot` and `dotn` of a [`WeightBlock`] impl: the kernels of module `avx2::$m` where the
/// CPU has AVX-512 VNNI (`vnni`) or AVX2 (`avx2`), the scalar reference elsewhere.
macro_rules! simd_dispatch {
    ($m:ident) => {
        fn dot(w: &[Self], x: &[BlockQ8_1]) -> f32 {
            debug_assert_eq!(w.len(), x.len());
            #[cfg(target_arch = "x86_64")]
            {
                if crate::features::vnni() {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx2::$m::vnni::dot(w, x) };
                }
                if crate::features::avx2() {
                    // SAFETY: as above.
                    return unsafe { avx2::$m::avx2::dot(w, x) };
                }
            }
            Self::dot_scalar(w, x)
        }

        fn dotn<const R: usize>(w: &[Self], x: &Panel<R>) -> [f32; R] {
            assert!(
                R == 4 || R == 8,
                "the row kernels take panels of 4 or 8 rows"
            );
            assert_eq!(
                w.len(),
                x.len(),
                "weight and activation rows differ in length"
            );
            #[cfg(target_arch = "x86_64")]
            {
                if crate::features::vnni() {
                    // SAFETY: as above; every row of `x` has w.len() blocks.
                    return unsafe { avx2::$m::vnni::dotn(w, x) };
                }
                if crate::features::avx2() {
                    // SAFETY: as above.
                    return unsafe { avx2::$m::avx2::dotn(w, x) };
                }
            }
            x.q.map(|x| Self::dot_scalar(w, x))
        }
    };
}

/// The grouped layout of a [`WeightBlock`] impl: `Group = $group`, made and read by the
/// functions `grouped::$make` / `grouped::$block`, multiplied by the kernel `$kernel` of
/// `avx2::grouped` where the CPU has AVX2 (with VNNI where it has that), by the scalar
/// reference elsewhere.
macro_rules! grouped_layout {
    ($group:ty, $make:ident, $block:ident, $kernel:ident) => {
        type Group = $group;

        fn group(blocks: [&Self; 8]) -> Option<$group> {
            Some(grouped::$make(blocks))
        }

        fn ungroup(g: &$group, lane: usize) -> Self {
            grouped::$block(g, lane)
        }

        fn group_dotn<const R: usize>(g: &[$group], x: &Panel<R>) -> [[f32; 8]; R] {
            assert_eq!(
                g.len(),
                x.len(),
                "groups and activation rows differ in length"
            );
            #[cfg(target_arch = "x86_64")]
            {
                if crate::features::vnni() {
                    // SAFETY: the CPU has the features; every row of `x` has g.len() blocks.
                    return unsafe { avx2::grouped::vnni::$kernel(g, x) };
                }
                if crate::features::avx2() {
                    // SAFETY: as above.
                    return unsafe { avx2::grouped::avx2::$kernel(g, x) };
                }
            }
            grouped::dotn_scalar::<Self, R>(g, x)
        }
    };
}

impl WeightBlock for BlockQ4_1 {
    const BYTES: usize = 20;

    fn parse(b: &[u8]) -> Self {
        Self {
            d: f16::from_le_bytes([b[0], b[1]]),
            m: f16::from_le_bytes([b[2], b[3]]),
            qs: b[4..20].try_into().expect("16 bytes"),
        }
    }

    fn values(&self) -> [f32; QK] {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        std::array::from_fn(|i| {
            let q = if i < QK / 2 {
                self.qs[i] & 0x0F
            } else {
                self.qs[i - QK / 2] >> 4
            };
            q as f32 * d + m
        })
    }

    fn dot_scalar(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        let mut sum = 0f32;
        for (a, b) in w.iter().zip(x) {
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let lo = (a.qs[j] & 0x0F) as i32;
                let hi = (a.qs[j] >> 4) as i32;
                sumi += lo * b.qs[j] as i32 + hi * b.qs[j + QK / 2] as i32;
            }
            sum += sumi as f32 * a.d.to_f32() * b.d.to_f32() + a.m.to_f32() * b.s.to_f32();
        }
        sum
    }

    simd_dispatch!(q4_1);
    grouped_layout!(Q4Group, q4_1, q4_1_block, q4);
}

/// The unsigned quant `j` (0..32) of a block packed like Q4_1, with an optional fifth bit.
fn unsigned_quant(qs: &[u8; QK / 2], qh: u32, j: usize) -> i32 {
    let low = if j < QK / 2 {
        qs[j] & 0x0F
    } else {
        qs[j - QK / 2] >> 4
    };
    low as i32 | (((qh >> j) & 1) << 4) as i32
}

/// The dot product of unsigned quants `q(j)` (value `d·q + m`) with Q8_1 activations, in the
/// same form as the SIMD kernels: `d·d_x·Σ q·q_x + m·s_x` per block.
fn unsigned_dot(d: f32, m: f32, q: impl Fn(usize) -> i32, b: &BlockQ8_1) -> f32 {
    let sumi: i32 = (0..QK).map(|j| q(j) * b.qs[j] as i32).sum();
    sumi as f32 * d * b.d.to_f32() + m * b.s.to_f32()
}

impl WeightBlock for BlockQ4_0 {
    const BYTES: usize = 18;

    fn parse(b: &[u8]) -> Self {
        Self {
            d: f16::from_le_bytes([b[0], b[1]]),
            qs: b[2..18].try_into().expect("16 bytes"),
        }
    }

    fn values(&self) -> [f32; QK] {
        let d = self.d.to_f32();
        std::array::from_fn(|j| (unsigned_quant(&self.qs, 0, j) - 8) as f32 * d)
    }

    fn dot_scalar(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        w.iter()
            .zip(x)
            .map(|(a, b)| {
                let d = a.d.to_f32();
                unsigned_dot(d, -8.0 * d, |j| unsigned_quant(&a.qs, 0, j), b)
            })
            .sum()
    }

    simd_dispatch!(q4_0);
    grouped_layout!(Q4Group, q4_0, q4_0_block, q4);
}

impl WeightBlock for BlockQ5_0 {
    const BYTES: usize = 22;

    fn parse(b: &[u8]) -> Self {
        Self {
            d: f16::from_le_bytes([b[0], b[1]]),
            qh: b[2..6].try_into().expect("4 bytes"),
            qs: b[6..22].try_into().expect("16 bytes"),
        }
    }

    fn values(&self) -> [f32; QK] {
        let (d, qh) = (self.d.to_f32(), u32::from_le_bytes(self.qh));
        std::array::from_fn(|j| (unsigned_quant(&self.qs, qh, j) - 16) as f32 * d)
    }

    fn dot_scalar(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        w.iter()
            .zip(x)
            .map(|(a, b)| {
                let (d, qh) = (a.d.to_f32(), u32::from_le_bytes(a.qh));
                unsigned_dot(d, -16.0 * d, |j| unsigned_quant(&a.qs, qh, j), b)
            })
            .sum()
    }

    simd_dispatch!(q5_0);

    type Group = NoGroup;

    fn group(_: [&Self; 8]) -> Option<NoGroup> {
        None
    }

    fn ungroup(g: &NoGroup, _: usize) -> Self {
        match *g {}
    }

    fn group_dotn<const R: usize>(_: &[NoGroup], _: &Panel<R>) -> [[f32; 8]; R] {
        // No group exists, so eight rows of none have every product 0.
        [[0.0; 8]; R]
    }
}

impl WeightBlock for BlockQ8_0 {
    const BYTES: usize = 34;

    fn parse(b: &[u8]) -> Self {
        Self {
            d: f16::from_le_bytes([b[0], b[1]]),
            qs: std::array::from_fn(|i| b[2 + i] as i8),
        }
    }

    fn values(&self) -> [f32; QK] {
        let d = self.d.to_f32();
        self.qs.map(|q| q as f32 * d)
    }

    fn dot_scalar(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        let mut sum = 0f32;
        for (a, b) in w.iter().zip(x) {
            let sumi: i32 =
                a.qs.iter()
                    .zip(&b.qs)
                    .map(|(&p, &q)| p as i32 * q as i32)
                    .sum();
            sum += sumi as f32 * a.d.to_f32() * b.d.to_f32();
        }
        sum
    }

    simd_dispatch!(q8_0);
    grouped_layout!(Q8Group, q8_0, q8_0_block, q8);
}

#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;
pub mod grouped;

pub use blocks::Blocks;
pub use grouped::{NoGroup, Q4Group, Q8Group};

/// The block formats with kernels here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 4-bit values with a scale per 32 (18 bytes).
    Q4_0,
    /// 4-bit values with a scale and a minimum per 32 (20 bytes).
    Q4_1,
    /// 5-bit values with a scale per 32 (22 bytes).
    Q5_0,
    /// 8-bit values with a scale per 32 (34 bytes).
    Q8_0,
}

/// A quantized matrix of `rows × cols` (one row per output), in its GGUF blocks.
pub enum QMatrix {
    /// Q4_0 blocks.
    Q4_0(Blocks<BlockQ4_0>),
    /// Q4_1 blocks.
    Q4_1(Blocks<BlockQ4_1>),
    /// Q5_0 blocks.
    Q5_0(Blocks<BlockQ5_0>),
    /// Q8_0 blocks.
    Q8_0(Blocks<BlockQ8_0>),
}

macro_rules! each {
    ($m:expr, $b:ident => $e:expr) => {
        match $m {
            QMatrix::Q4_0($b) => $e,
            QMatrix::Q4_1($b) => $e,
            QMatrix::Q5_0($b) => $e,
            QMatrix::Q8_0($b) => $e,
        }
    };
}

impl QMatrix {
    /// A matrix from the raw bytes of a GGUF tensor of `rows × cols` in `format`.
    pub fn from_bytes(format: Format, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Ok(match format {
            Format::Q4_0 => QMatrix::Q4_0(Blocks::from_bytes(bytes, rows, cols)?),
            Format::Q4_1 => QMatrix::Q4_1(Blocks::from_bytes(bytes, rows, cols)?),
            Format::Q5_0 => QMatrix::Q5_0(Blocks::from_bytes(bytes, rows, cols)?),
            Format::Q8_0 => QMatrix::Q8_0(Blocks::from_bytes(bytes, rows, cols)?),
        })
    }

    /// The block format.
    pub fn format(&self) -> Format {
        match self {
            QMatrix::Q4_0(_) => Format::Q4_0,
            QMatrix::Q4_1(_) => Format::Q4_1,
            QMatrix::Q5_0(_) => Format::Q5_0,
            QMatrix::Q8_0(_) => Format::Q8_0,
        }
    }

    /// Stacks matrices of one format and width (fused q/k/v or gate/up projections).
    pub fn stack(parts: &[&QMatrix]) -> Result<Self> {
        let format = parts.first().map(|p| p.format());
        if parts.iter().any(|p| Some(p.format()) != format) {
            bail!("stacked matrices must have the same format");
        }
        macro_rules! stack_as {
            ($variant:ident) => {
                QMatrix::$variant(Blocks::concat(
                    &parts
                        .iter()
                        .filter_map(|p| match p {
                            QMatrix::$variant(b) => Some(b),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                )?)
            };
        }
        Ok(match format {
            None => bail!("nothing to stack"),
            Some(Format::Q4_0) => stack_as!(Q4_0),
            Some(Format::Q4_1) => stack_as!(Q4_1),
            Some(Format::Q5_0) => stack_as!(Q5_0),
            Some(Format::Q8_0) => stack_as!(Q8_0),
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        each!(self, b => b.rows)
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        each!(self, b => b.cols)
    }

    /// The matrix in F32, row-major (the reference for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let (rows, cols) = (self.rows(), self.cols());
        let mut out = vec![0f32; rows * cols];
        for (r, o) in out.chunks_exact_mut(cols).enumerate() {
            each!(self, b => b.row_values(r, o));
        }
        out
    }

    /// Rows `ids` in F32 (an embedding lookup): `ids.len() × cols`, row-major.
    pub fn select_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let cols = self.cols();
        let mut out = vec![0f32; ids.len() * cols];
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(cols)) {
            if id as usize >= self.rows() {
                bail!("row {id} of a matrix of {} rows", self.rows());
            }
            each!(self, b => b.row_values(id as usize, o));
        }
        Ok(out)
    }

    /// `out = x · selfᵀ` for `x` of `m × cols` (row-major): `out` is `m × rows`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let (rows, cols) = (self.rows(), self.cols());
        assert_eq!(x.len(), m * cols, "lhs is not m × cols");
        assert_eq!(out.len(), m * rows, "out is not m × rows");
        let per = cols / QK;
        let mut xq = vec![BlockQ8_1::default(); m * per];
        for (row, q) in x.chunks_exact(cols).zip(xq.chunks_exact_mut(per)) {
            quantize_q8_1(row, q);
        }
        each!(self, b => b.matmul(&xq, m, out));
    }
}

/// A quantized matrix as a candle op: `x (…, cols) → (…, rows)`, F32, CPU.
#[derive(Clone)]
pub struct QLinear(pub Arc<QMatrix>);

impl QLinear {
    /// Applies the matrix to `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for QLinear {
    fn name(&self) -> &'static str {
        "quantized-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0;
        let CpuStorage::F32(data) = storage else {
            bail!("{} takes F32 input", self.name());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("{} takes contiguous input", self.name());
        };
        let dims = layout.shape().dims();
        if dims.last() != Some(&w.cols()) {
            bail!(
                "{}: input {:?} does not end in {} columns",
                self.name(),
                dims,
                w.cols()
            );
        }
        let m = (end - start) / w.cols();
        let mut out = vec![0f32; m * w.rows()];
        w.matmul(&data[start..end], m, &mut out);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("dims end in cols") = w.rows();
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests;
