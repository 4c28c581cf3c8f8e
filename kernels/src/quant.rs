//! Quantized matrix products for the CPU: Q4_1 (the packaged SmolLM2's matrices), whose
//! candle `vec_dot` is the scalar fallback on x86, and Q8_0 (its embedding table and tied
//! output matrix), whose candle matmul reads the whole matrix again for every input row.
//! Weights stay in their GGUF blocks (20 or 34 bytes per 32 values); activations are quantized
//! per row to Q8_1 blocks (llama.cpp's scheme), and one block's dot product is an integer sum,
//! so the SIMD kernels (AVX2, and AVX-512 VNNI where the CPU has it) and the scalar references
//! agree up to the order of the float operations on the per-block terms. Several input rows
//! (batched decode, prefill) are taken eight or four at a time as a [`Panel`], each weight
//! block loaded and unpacked once for the panel, the panel's block scales converted to f32
//! once per product.
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

/// `R` activation rows (4 or 8) for the multi-row kernels: their blocks, and each block's
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
    /// The rows (of equal length); `R` is 4 or 8.
    pub fn new(q: [&'a [BlockQ8_1]; R]) -> Self {
        assert!(R == 4 || R == 8, "panels are 4 or 8 rows");
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
    /// The dot products of one weight row with a panel of activation rows.
    fn dotn<const R: usize>(w: &[Self], x: &Panel<R>) -> [f32; R];
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
}

#[cfg(target_arch = "x86_64")]
mod avx2;

/// A matrix of `rows × cols` (one row per output) in blocks of one format.
pub struct Blocks<B> {
    rows: usize,
    cols: usize,
    blocks: Vec<B>,
}

impl<B: WeightBlock> Blocks<B> {
    fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(QK) {
            bail!("a quantized matrix needs a multiple of {QK} columns, not {cols}");
        }
        if bytes.len() != rows * cols / QK * B::BYTES {
            bail!(
                "{} bytes are not a {rows}×{cols} matrix of this format",
                bytes.len()
            );
        }
        Ok(Self {
            rows,
            cols,
            blocks: bytes.chunks_exact(B::BYTES).map(B::parse).collect(),
        })
    }

    fn row(&self, r: usize) -> &[B] {
        let per = self.cols / QK;
        &self.blocks[r * per..(r + 1) * per]
    }

    fn row_values(&self, r: usize, out: &mut [f32]) {
        for (b, o) in self.row(r).iter().zip(out.chunks_exact_mut(QK)) {
            o.copy_from_slice(&b.values());
        }
    }

    fn matmul(&self, xq: &[BlockQ8_1], m: usize, out: &mut [f32]) {
        let per = self.cols / QK;
        let n = self.rows;
        let out_ptr = out.as_mut_ptr() as usize;
        // Work items are tiles of weight rows; each item computes its rows for every input
        // row, eight input rows per pass over a weight row (which stays in L1; then four, then
        // one at a time for what is left), input rows taken sixteen at a time so that they too
        // stay in L1 while the tile's weight rows pass over them (a long prompt's rows would
        // otherwise stream from L2 once per weight row).
        const TILE: usize = 4;
        const CHUNK: usize = 2;
        let items = n.div_ceil(TILE);
        let rows = |i: usize| &xq[i * per..][..per];
        let eights: Vec<Panel<8>> = (0..m / 8)
            .map(|g| Panel::new(std::array::from_fn(|j| rows(8 * g + j))))
            .collect();
        let done = eights.len() * 8;
        let four =
            (m - done >= 4).then(|| Panel::<4>::new(std::array::from_fn(|j| rows(done + j))));
        let singles = done + if four.is_some() { 4 } else { 0 }..m;
        candle_core::utils::barrier_pool().execute_chunked(items, |range| {
            let out = out_ptr as *mut f32;
            // SAFETY (every write below): (i, r) for r in this item's tile is written by this
            // item only, inside `out` (m × n).
            let put = |i: usize, r: usize, v: f32| unsafe { *out.add(i * n + r) = v };
            for item in range {
                let tile = item * TILE..n.min(item * TILE + TILE);
                for (c, chunk) in eights.chunks(CHUNK).enumerate() {
                    for r in tile.clone() {
                        let w = self.row(r);
                        for (k, panel) in chunk.iter().enumerate() {
                            let first = 8 * (c * CHUNK + k);
                            for (j, v) in B::dotn(w, panel).into_iter().enumerate() {
                                put(first + j, r, v);
                            }
                        }
                    }
                }
                for r in tile {
                    let w = self.row(r);
                    if let Some(panel) = &four {
                        for (j, v) in B::dotn(w, panel).into_iter().enumerate() {
                            put(done + j, r, v);
                        }
                    }
                    for i in singles.clone() {
                        put(i, r, B::dot(w, rows(i)));
                    }
                }
            }
        });
    }
}

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
        fn cat<B: WeightBlock>(parts: Vec<&Blocks<B>>) -> Result<Blocks<B>> {
            let cols = parts.first().map_or(0, |p| p.cols);
            if parts.iter().any(|p| p.cols != cols) {
                bail!("stacked matrices must have the same width");
            }
            Ok(Blocks {
                rows: parts.iter().map(|p| p.rows).sum(),
                cols,
                blocks: parts
                    .iter()
                    .flat_map(|p| p.blocks.iter().copied())
                    .collect(),
            })
        }
        let format = parts.first().map(|p| p.format());
        if parts.iter().any(|p| Some(p.format()) != format) {
            bail!("stacked matrices must have the same format");
        }
        macro_rules! stack_as {
            ($variant:ident) => {
                QMatrix::$variant(cat(parts
                    .iter()
                    .filter_map(|p| match p {
                        QMatrix::$variant(b) => Some(b),
                        _ => None,
                    })
                    .collect())?)
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
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream (tests need no seedable RNG crate).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn float(&mut self) -> f32 {
            self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
        }
    }

    /// Random blocks: scales and minimums in the range real models have, and every quant
    /// value (Q8_0 down to -127; -128 is not produced by GGUF quantizers).
    fn random(format: Format, rows: usize, cols: usize, rng: &mut Lcg) -> QMatrix {
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / QK {
            let d = f16::from_f32(rng.float().abs() * 0.05 + 1e-3);
            bytes.extend(d.to_le_bytes());
            match format {
                Format::Q4_1 => {
                    bytes.extend(f16::from_f32(rng.float() * 0.4).to_le_bytes());
                    bytes.extend((0..16).map(|_| rng.next() as u8));
                }
                // Q5_0: 4 bytes of fifth bits, then the nibbles.
                Format::Q4_0 => bytes.extend((0..16).map(|_| rng.next() as u8)),
                Format::Q5_0 => bytes.extend((0..20).map(|_| rng.next() as u8)),
                Format::Q8_0 => bytes.extend(
                    (0..32)
                        .map(|_| (rng.next() % 255) as i32 - 127)
                        .map(|q| q as u8),
                ),
            }
        }
        QMatrix::from_bytes(format, &bytes, rows, cols).unwrap()
    }

    const ALL: [Format; 4] = [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q8_0];

    type Results = Vec<(String, Vec<f32>)>;

    /// Row 0 of `w` with each of eight rows of `x`: the scalar reference, then, for every
    /// kernel this CPU runs (the dispatched one, and each SIMD variant it supports), `dot` of
    /// each row, `dotn` of the first four and `dotn` of the eight (named results, in row
    /// order).
    fn dots(w: &QMatrix, x: [&[BlockQ8_1]; 8]) -> ([f32; 8], Results) {
        macro_rules! variants {
            ($b:ident, $m:ident) => {{
                let row = $b.row(0);
                let four = Panel::<4>::new([x[0], x[1], x[2], x[3]]);
                let eight = Panel::<8>::new(x);
                let mut got: Results = Vec::new();
                let mut add = |name: &str, one: [f32; 8], four: [f32; 4], eight: [f32; 8]| {
                    got.push((format!("{name} dot"), one.to_vec()));
                    got.push((format!("{name} dotn 4"), four.to_vec()));
                    got.push((format!("{name} dotn 8"), eight.to_vec()));
                };
                add(
                    "dispatched",
                    x.map(|x| WeightBlock::dot(row, x)),
                    WeightBlock::dotn(row, &four),
                    WeightBlock::dotn(row, &eight),
                );
                #[cfg(target_arch = "x86_64")]
                {
                    if crate::features::avx2() {
                        // SAFETY: the CPU has AVX2.
                        unsafe {
                            add(
                                "avx2",
                                x.map(|x| avx2::$m::avx2::dot(row, x)),
                                avx2::$m::avx2::dotn(row, &four),
                                avx2::$m::avx2::dotn(row, &eight),
                            )
                        }
                    }
                    if crate::features::vnni() {
                        // SAFETY: the CPU has AVX-512 VNNI.
                        unsafe {
                            add(
                                "vnni",
                                x.map(|x| avx2::$m::vnni::dot(row, x)),
                                avx2::$m::vnni::dotn(row, &four),
                                avx2::$m::vnni::dotn(row, &eight),
                            )
                        }
                    }
                }
                (x.map(|x| WeightBlock::dot_scalar(row, x)), got)
            }};
        }
        match w {
            QMatrix::Q4_0(b) => variants!(b, q4_0),
            QMatrix::Q4_1(b) => variants!(b, q4_1),
            QMatrix::Q5_0(b) => variants!(b, q5_0),
            QMatrix::Q8_0(b) => variants!(b, q8_0),
        }
    }

    #[test]
    fn simd_dot_products_match_the_scalar_reference() {
        let mut rng = Lcg(7);
        for format in ALL {
            // 576 columns (SmolLM2's width, 18 blocks), odd block counts and a single block.
            for cols in [32, 96, 576, 1536] {
                let w = random(format, 1, cols, &mut rng);
                for _ in 0..10 {
                    let xq: Vec<Vec<BlockQ8_1>> = (0..8)
                        .map(|_| {
                            let x: Vec<f32> = (0..cols).map(|_| rng.float() * 3.0).collect();
                            let mut xq = vec![BlockQ8_1::default(); cols / QK];
                            quantize_q8_1(&x, &mut xq);
                            xq
                        })
                        .collect();
                    let (reference, got) = dots(&w, std::array::from_fn(|r| &xq[r][..]));
                    for (kernel, values) in got {
                        for (r, v) in values.into_iter().enumerate() {
                            // The kernels add the per-block terms in another order (and
                            // scale them in another order): a rounding error that grows
                            // with the number of blocks.
                            let tolerance =
                                1e-5 * ((cols / QK) as f32).sqrt() * reference[r].abs().max(1.0);
                            assert!(
                                (v - reference[r]).abs() <= tolerance,
                                "{format:?} {cols} {kernel} row {r}: {v} vs {}",
                                reference[r]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn simd_quantization_gives_the_scalar_bytes() {
        let mut rng = Lcg(13);
        let mut rows: Vec<Vec<f32>> = (0..50)
            .map(|i| (0..96).map(|_| rng.float() * (i as f32 + 0.5)).collect())
            .collect();
        // Zeros; exact ties (the largest value 127, so that the scale is 1); NaN and infinity.
        rows.push(vec![0.0; 64]);
        rows.push(
            (0..64)
                .map(|j| [127.0, 2.5, -3.5, 0.5, -0.5, -0.0][j % 6])
                .collect(),
        );
        rows.push(
            (0..64)
                .map(|j| {
                    if j % 7 == 3 {
                        f32::NAN
                    } else {
                        j as f32 - 30.0
                    }
                })
                .collect(),
        );
        rows.push(
            (0..32)
                .map(|j| if j == 5 { f32::INFINITY } else { 1.0 })
                .collect(),
        );
        for row in rows {
            let mut fast = vec![BlockQ8_1::default(); row.len() / QK];
            let mut reference = fast.clone();
            quantize_q8_1(&row, &mut fast);
            quantize_q8_1_scalar(&row, &mut reference);
            for (a, b) in fast.iter().zip(&reference) {
                assert_eq!(a.qs, b.qs, "{row:?}");
                assert_eq!(a.d.to_bits(), b.d.to_bits(), "{row:?}");
                assert_eq!(a.s.to_bits(), b.s.to_bits(), "{row:?}");
            }
        }
    }

    #[test]
    fn matmul_agrees_with_the_dequantized_matrix() {
        let mut rng = Lcg(11);
        for format in ALL {
            // Odd shapes: 7 output rows (no full tile), 576 columns, 1–9 input rows (one row,
            // four and one, eight and one), and 45 (a prompt: two chunks of eight-row panels,
            // the second short, then four rows and one left over).
            for (rows, cols, m) in [
                (7, 576, 1),
                (193, 576, 5),
                (64, 1536, 9),
                (3, 32, 4),
                (37, 640, 45),
            ] {
                let w = random(format, rows, cols, &mut rng);
                let dense = w.dequantize();
                let x: Vec<f32> = (0..m * cols).map(|_| rng.float()).collect();
                let mut out = vec![0f32; m * rows];
                w.matmul(&x, m, &mut out);
                for i in 0..m {
                    let xi = &x[i * cols..(i + 1) * cols];
                    let amax = xi.iter().fold(0f32, |a, v| a.max(v.abs()));
                    for r in 0..rows {
                        let wr = &dense[r * cols..(r + 1) * cols];
                        let exact: f32 = wr.iter().zip(xi).map(|(a, b)| a * b).sum();
                        // The only difference is the 8-bit rounding of x: half a step
                        // (amax / 254) per value plus the f16 rounding of the step (127 · 2⁻¹¹
                        // of a step), times |w|, and for Q4_1 the f16 rounding of each block's
                        // d·Σq (times |m|: at most 0.4 for Q4_1, 8d and 16d ≤ 0.82 for Q4_0 and
                        // Q5_0).
                        let step = amax / 127.0;
                        let bound: f32 = wr.iter().map(|v| v.abs()).sum::<f32>() * step * 0.57
                            + (cols / QK) as f32 * 0.82 * 32.0 * amax / 2048.0
                            + 1e-4;
                        let got = out[i * rows + r];
                        assert!(
                            (got - exact).abs() <= bound,
                            "{format:?} {rows}×{cols}, row {i}, col {r}: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rows_stack_and_select_like_the_dense_matrix() {
        let mut rng = Lcg(5);
        for format in ALL {
            let (a, b) = (
                random(format, 3, 64, &mut rng),
                random(format, 2, 64, &mut rng),
            );
            let both = QMatrix::stack(&[&a, &b]).unwrap();
            assert_eq!((both.rows(), both.cols()), (5, 64));
            let dense = [a.dequantize(), b.dequantize()].concat();
            assert_eq!(both.dequantize(), dense);
            let picked = both.select_rows(&[4, 0, 4]).unwrap();
            assert_eq!(picked[..64], dense[4 * 64..5 * 64]);
            assert_eq!(picked[64..128], dense[..64]);
            assert!(both.select_rows(&[5]).is_err());
        }
        let (a, b) = (
            random(Format::Q4_1, 1, 64, &mut rng),
            random(Format::Q8_0, 1, 64, &mut rng),
        );
        assert!(QMatrix::stack(&[&a, &b]).is_err());
        let c = random(Format::Q4_1, 1, 96, &mut rng);
        assert!(QMatrix::stack(&[&a, &c]).is_err());
    }

    /// The blocks mean what GGML means by them: dequantized here as candle (GGML's reference
    /// code) dequantizes the same bytes, for matrices candle quantized.
    #[test]
    fn blocks_dequantize_as_candle_does() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let cpu = candle_core::Device::Cpu;
        let dense = Tensor::randn(0f32, 1.0, (6, 96), &cpu).unwrap();
        for (format, dtype) in [
            (Format::Q4_0, GgmlDType::Q4_0),
            (Format::Q4_1, GgmlDType::Q4_1),
            (Format::Q5_0, GgmlDType::Q5_0),
            (Format::Q8_0, GgmlDType::Q8_0),
        ] {
            let q = QTensor::quantize(&dense, dtype).unwrap();
            let ours = QMatrix::from_bytes(format, &q.data().unwrap(), 6, 96).unwrap();
            let theirs: Vec<f32> = q
                .dequantize(&cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(ours.dequantize(), theirs, "{format:?}");
        }
    }

    #[test]
    fn the_candle_op_keeps_the_leading_dimensions() {
        let mut rng = Lcg(3);
        let w = Arc::new(random(Format::Q4_1, 10, 64, &mut rng));
        let x = Tensor::rand(-1f32, 1f32, (2, 3, 64), &candle_core::Device::Cpu).unwrap();
        let y = QLinear(w.clone()).forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 3, 10]);
        let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let mut out = vec![0f32; 6 * 10];
        w.matmul(&flat, 6, &mut out);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), out);
        let bad = Tensor::zeros((2, 63), candle_core::DType::F32, &candle_core::Device::Cpu);
        assert!(QLinear(w).forward(&bad.unwrap()).is_err());
    }
}
