//! Q4_1 (the packaged SmolLM2's format), whose candle `vec_dot` is the scalar fallback on x86. Weights stay in
//! their GGUF blocks (20 bytes per 32 values); activations are quantized per row to Q8_1
//! blocks (the same scheme as llama.cpp's `ggml_vec_dot_q4_1_q8_1`), and one block's dot
//! product is an integer sum, so the AVX2 kernel and the scalar reference agree up to the
//! order of the float additions of the per-block terms.
//!
//! [`QLinear`] wraps a matrix as a candle custom op, so the decoder calls it like any other
//! `QMatMul`; the work is split over candle's own CPU thread pool (the barrier pool its
//! quantized matmuls use), so the two never compete for the cores.
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use half::f16;

use candle_core::{Result, bail};

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

/// Quantizes `x` (a multiple of 32 values) to Q8_1 blocks (round to nearest, scale = max |x| / 127).
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(xs) {
            let r = (v * id).round() as i32;
            *q = r as i8;
            sum += r;
        }
        block.d = f16::from_f32(d);
        block.s = f16::from_f32(d * sum as f32);
    }
}

/// The dot product of a Q4_1 row with a Q8_1 row, block by block in plain Rust: the
/// reference the SIMD kernels are tested against.
pub fn dot_q4_1_q8_1_scalar(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
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

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

/// The dot product of a Q4_1 row with a Q8_1 row (AVX2 where the CPU has it).
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { avx2::dot_q4_1_q8_1(w, x) };
    }
    dot_q4_1_q8_1_scalar(w, x)
}

/// Four dot products of one Q4_1 row with four Q8_1 rows (the weight row is unpacked once).
fn dot4_q4_1_q8_1(w: &[BlockQ4_1], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { avx2::dot4_q4_1_q8_1(w, x) };
    }
    x.map(|x| dot_q4_1_q8_1_scalar(w, x))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ4_1, BlockQ8_1};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The two f16 scalars at the start of a block, as f32 lanes 0 and 1.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(p: *const u8) -> __m128 {
        // SAFETY: both block types start with two f16 values.
        _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
            (p as *const i32).read_unaligned()
        }))
    }

    /// 32 unsigned 4-bit values in the order of the block (low nibbles, then high ones).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(a: &BlockQ4_1) -> __m256i {
        // SAFETY: qs is 16 bytes.
        let raw = unsafe { _mm_loadu_si128(a.qs.as_ptr() as *const __m128i) };
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }

    /// Σ qw·qx over one block as 8 f32 partial sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn products(qw: __m256i, b: &BlockQ8_1) -> __m256 {
        // SAFETY: qs is 32 bytes.
        let qx = unsafe { _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i) };
        // u8 (0..=15) × i8 pairs fit i16 (at most 2 · 15 · 128).
        let p16 = _mm256_maddubs_epi16(qw, qx);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut mins = _mm_setzero_ps();
        for (a, b) in w.iter().zip(x) {
            // SAFETY: the blocks are valid references.
            unsafe {
                // (d_w·d_x, m_w·s_x) in lanes 0 and 1.
                let ds = _mm_mul_ps(
                    scales(a as *const _ as *const u8),
                    scales(b as *const _ as *const u8),
                );
                mins = _mm_add_ps(mins, ds);
                let d = _mm256_broadcastss_ps(ds);
                acc = _mm256_fmadd_ps(d, products(nibbles(a), b), acc);
            }
        }
        // Lane 1 of `mins` holds Σ m_w·s_x (lane 0 collected the d products, unused).
        hsum(acc) + _mm_cvtss_f32(_mm_movehdup_ps(mins))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q4_1_q8_1(w: &[BlockQ4_1], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [_mm_setzero_ps(); 4];
        for (i, a) in w.iter().enumerate() {
            // SAFETY: the blocks are valid references; every row has w.len() blocks.
            unsafe {
                let sw = scales(a as *const _ as *const u8);
                let qw = nibbles(a);
                for r in 0..4 {
                    let b = x[r].get_unchecked(i);
                    let ds = _mm_mul_ps(sw, scales(b as *const _ as *const u8));
                    mins[r] = _mm_add_ps(mins[r], ds);
                    acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), products(qw, b), acc[r]);
                }
            }
        }
        let mut out = [0f32; 4];
        for r in 0..4 {
            out[r] = hsum(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[r]));
        }
        out
    }
}

/// A Q4_1 matrix of `rows × cols` (one row per output), in its GGUF blocks.
pub struct Q4_1Matrix {
    rows: usize,
    cols: usize,
    blocks: Vec<BlockQ4_1>,
}

impl Q4_1Matrix {
    /// A matrix from the raw bytes of a GGUF Q4_1 tensor of `rows × cols`.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(QK) {
            bail!("a Q4_1 matrix needs a multiple of {QK} columns, not {cols}");
        }
        let n = rows * cols / QK;
        if bytes.len() != n * std::mem::size_of::<BlockQ4_1>() {
            bail!("{} bytes are not a {rows}×{cols} Q4_1 matrix", bytes.len());
        }
        let blocks = bytes
            .chunks_exact(20)
            .map(|b| BlockQ4_1 {
                d: f16::from_le_bytes([b[0], b[1]]),
                m: f16::from_le_bytes([b[2], b[3]]),
                qs: b[4..20].try_into().expect("16 bytes"),
            })
            .collect();
        Ok(Self { rows, cols, blocks })
    }

    /// Stacks matrices with the same column count (fused q/k/v or gate/up projections).
    pub fn stack(parts: &[&Q4_1Matrix]) -> Result<Self> {
        let cols = parts.first().map_or(0, |p| p.cols);
        if parts.iter().any(|p| p.cols != cols) {
            bail!("stacked matrices must have the same width");
        }
        Ok(Self {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            blocks: parts
                .iter()
                .flat_map(|p| p.blocks.iter().copied())
                .collect(),
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<BlockQ4_1>()
    }

    fn row(&self, r: usize) -> &[BlockQ4_1] {
        let per = self.cols / QK;
        &self.blocks[r * per..(r + 1) * per]
    }

    /// The matrix in F32, row-major (the reference for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for b in &self.blocks {
            let (d, m) = (b.d.to_f32(), b.m.to_f32());
            out.extend(b.qs.iter().map(|q| (q & 0x0F) as f32 * d + m));
            out.extend(b.qs.iter().map(|q| (q >> 4) as f32 * d + m));
        }
        out
    }

    /// `out = x · selfᵀ` for `x` of `m × cols` (row-major): `out` is `m × rows`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "lhs is not m × cols");
        assert_eq!(out.len(), m * self.rows, "out is not m × rows");
        let per = self.cols / QK;
        let mut xq = vec![BlockQ8_1::default(); m * per];
        for (row, q) in x.chunks_exact(self.cols).zip(xq.chunks_exact_mut(per)) {
            quantize_q8_1(row, q);
        }
        let xq = &xq;
        let n = self.rows;
        let out_ptr = out.as_mut_ptr() as usize;
        // Work items are tiles of weight rows; each item computes its rows for every x row,
        // so a weight row is unpacked once per four x rows while it is in L1.
        const TILE: usize = 4;
        let items = n.div_ceil(TILE);
        candle_core::utils::barrier_pool().execute_chunked(items, |range| {
            let out = out_ptr as *mut f32;
            for item in range {
                for r in item * TILE..n.min(item * TILE + TILE) {
                    let w = self.row(r);
                    let mut i = 0;
                    while i + 4 <= m {
                        let rows = [0, 1, 2, 3].map(|j| &xq[(i + j) * per..(i + j + 1) * per]);
                        let d = dot4_q4_1_q8_1(w, rows);
                        for (j, v) in d.into_iter().enumerate() {
                            // SAFETY: (i + j, r) is written by this item only, inside `out`.
                            unsafe { *out.add((i + j) * n + r) = v };
                        }
                        i += 4;
                    }
                    for i in i..m {
                        let v = dot_q4_1_q8_1(w, &xq[i * per..(i + 1) * per]);
                        // SAFETY: as above.
                        unsafe { *out.add(i * n + r) = v };
                    }
                }
            }
        });
    }
}

/// A Q4_1 matrix as a candle op: `x (…, cols) → (…, rows)`, F32, CPU.
#[derive(Clone)]
pub struct QLinear(pub Arc<Q4_1Matrix>);

impl QLinear {
    /// Applies the matrix to `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for QLinear {
    fn name(&self) -> &'static str {
        "q4_1-linear"
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
        if dims.last() != Some(&w.cols) {
            bail!(
                "{}: input {:?} does not end in {} columns",
                self.name(),
                dims,
                w.cols
            );
        }
        let m = (end - start) / w.cols;
        let mut out = vec![0f32; m * w.rows];
        w.matmul(&data[start..end], m, &mut out);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("dims end in cols") = w.rows;
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

    fn random_q4_1(rows: usize, cols: usize, rng: &mut Lcg) -> Q4_1Matrix {
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / QK {
            let d = f16::from_f32(rng.float().abs() * 0.05 + 1e-3);
            let m = f16::from_f32(rng.float() * 0.4);
            bytes.extend(d.to_le_bytes());
            bytes.extend(m.to_le_bytes());
            bytes.extend((0..16).map(|_| rng.next() as u8));
        }
        Q4_1Matrix::from_bytes(&bytes, rows, cols).unwrap()
    }

    #[test]
    fn simd_dot_products_match_the_scalar_reference() {
        let mut rng = Lcg(7);
        // 576 columns (SmolLM2's width, 18 blocks), odd block counts and a single block.
        for cols in [32, 96, 576, 1536] {
            let w = random_q4_1(1, cols, &mut rng);
            for _ in 0..20 {
                let x: Vec<f32> = (0..cols).map(|_| rng.float() * 3.0).collect();
                let mut xq = vec![BlockQ8_1::default(); cols / QK];
                quantize_q8_1(&x, &mut xq);
                let reference = dot_q4_1_q8_1_scalar(w.row(0), &xq);
                let fast = dot_q4_1_q8_1(w.row(0), &xq);
                assert!(
                    (fast - reference).abs() <= 1e-5 * reference.abs().max(1.0),
                    "{cols} columns: {fast} vs {reference}"
                );
                let four = dot4_q4_1_q8_1(w.row(0), [&xq, &xq, &xq, &xq]);
                assert!(
                    four.iter()
                        .all(|v| (v - fast).abs() <= 1e-5 * fast.abs().max(1.0))
                );
            }
        }
    }

    #[test]
    fn matmul_agrees_with_the_dequantized_matrix() {
        let mut rng = Lcg(11);
        // Odd shapes: 7 output rows (no full tile), 576 columns, 1–9 input rows.
        for (rows, cols, m) in [(7, 576, 1), (193, 576, 5), (64, 1536, 9), (3, 32, 4)] {
            let w = random_q4_1(rows, cols, &mut rng);
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
                    // The only difference is the 8-bit rounding of x: half a step (amax / 254)
                    // per value plus the f16 rounding of the step (127 · 2⁻¹¹ of a step), times
                    // |w|, and the f16 rounding of each block's d·Σq (times |m| ≤ 0.4).
                    let step = amax / 127.0;
                    let bound: f32 = wr.iter().map(|v| v.abs()).sum::<f32>() * step * 0.57
                        + (cols / QK) as f32 * 0.4 * 32.0 * amax / 2048.0
                        + 1e-4;
                    let got = out[i * rows + r];
                    assert!(
                        (got - exact).abs() <= bound,
                        "{rows}×{cols}, row {i}, col {r}: {got} vs {exact} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_candle_op_keeps_the_leading_dimensions() {
        let mut rng = Lcg(3);
        let w = Arc::new(random_q4_1(10, 64, &mut rng));
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
