//! Int8 matrix products for dense layers: weights quantized once per output channel, inputs
//! quantized per row as they arrive, integer dot products accumulated exactly in `i32`.
//!
//! - **Weights**: `w[k][c] ≈ ws[c] · q[k][c]` with `q ∈ [-127, 127]`, except where AVX2 is the
//!   best kernel: there `q ∈ [-63, 63]` (seven bits), so that `vpmaddubsw` (255·63 + 255·63 <
//!   2¹⁵) never saturates. Each kernel computes the exact integer sums of the matrix it is
//!   given: for the same matrix, every kernel gives bit-identical results.
//! - **Inputs**: each row `x[r][k] ≈ s[r] · (u[r][k] − z[r])` with `u ∈ [0, 255]`, asymmetric
//!   (the row's own minimum and maximum, zero exactly representable), so the one-sided
//!   outputs of GELU lose no half of the range.
//! - **Product**: `Σ_k x·w ≈ s·ws · (Σ_k u·q − z·Σ_k q)`; the column sums `Σ_k q` are kept
//!   with the weights.
//!
//! Kernels: AVX-512 VNNI (`vpdpbusd` on 256-bit registers: 32 products an instruction) where
//! the CPU has it, AVX2 (`vpmaddubsw` + `vpmaddwd`) on other x86-64 CPUs, plain Rust
//! elsewhere; all give the same numbers.
#[cfg(target_arch = "x86_64")]
use crate::features;
use std::ops::Range;

/// Largest weight magnitude the AVX2 kernel takes (see the module documentation).
pub const WEIGHT_MAX_AVX2: i32 = 63;
/// Largest weight magnitude otherwise.
pub const WEIGHT_MAX: i32 = 127;

/// The weight range of [`I8Matrix::quantize`] on this CPU: seven bits where AVX2 is the best
/// kernel, eight elsewhere.
pub fn weight_max() -> i32 {
    #[cfg(target_arch = "x86_64")]
    if !features::vnni() && features::avx2() {
        return WEIGHT_MAX_AVX2;
    }
    WEIGHT_MAX
}
/// Output columns of one packed block (one 256-bit register of `i32`).
pub const BLOCK: usize = 8;

/// The kernel [`I8Matrix::quantize`]'s matrices are multiplied with on this CPU.
pub fn kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if features::vnni() {
            return "avx512-vnni";
        }
        if features::avx2() {
            return "avx2";
        }
    }
    "scalar"
}

/// A weight matrix `k × n` (`Wᵀ` of a dense layer: `in × out`) in int8, packed for the
/// kernels: block `j` holds columns `8j..8j+8`, four consecutive inputs of a column side by
/// side (`[k/4][8][4]` bytes a block).
pub struct I8Matrix {
    k: usize,
    n: usize,
    /// `k` rounded up to a multiple of 4 (padded with zero weights).
    kp: usize,
    packed: Vec<i8>,
    /// Per output column; padding columns have scale 0.
    scales: Vec<f32>,
    /// `Σ_k q[k][c]` per output column.
    sums: Vec<i32>,
    /// Largest `|q|` allowed.
    max: i32,
}

impl I8Matrix {
    /// Quantizes `w` (`k × n`, row-major: row `i` holds input `i`'s weight to every output)
    /// to this CPU's [`weight_max`].
    pub fn quantize(w: &[f32], k: usize, n: usize) -> Self {
        Self::quantize_to(w, k, n, weight_max())
    }

    /// [`I8Matrix::quantize`] to weights in `[-max, max]` (`max` in 1..=127).
    pub fn quantize_to(w: &[f32], k: usize, n: usize, max: i32) -> Self {
        assert_eq!(w.len(), k * n, "a {k} × {n} matrix");
        assert!((1..=127).contains(&max), "weights in [-{max}, {max}]");
        let kp = k.next_multiple_of(4);
        let blocks = n.div_ceil(BLOCK);
        let mut scales = vec![0f32; blocks * BLOCK];
        let mut sums = vec![0i32; blocks * BLOCK];
        let mut packed = vec![0i8; blocks * BLOCK * kp];
        for c in 0..n {
            let amax = (0..k).map(|i| w[i * n + c].abs()).fold(0f32, f32::max);
            let scale = amax / max as f32;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let (j, lane) = (c / BLOCK, c % BLOCK);
            let mut sum = 0i32;
            for i in 0..k {
                let q = (w[i * n + c] * inv).round().clamp(-max as f32, max as f32) as i32;
                sum += q;
                packed[j * BLOCK * kp + (i / 4) * BLOCK * 4 + lane * 4 + i % 4] = q as i8;
            }
            scales[c] = scale;
            sums[c] = sum;
        }
        Self {
            k,
            n,
            kp,
            packed,
            scales,
            sums,
            max,
        }
    }

    /// Inputs (`k`).
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Outputs (`n`).
    pub fn cols(&self) -> usize {
        self.n
    }

    /// The largest weight magnitude of the quantized matrix (`WEIGHT_MAX` or
    /// `WEIGHT_MAX_AVX2`).
    pub fn weight_range(&self) -> i32 {
        self.max
    }

    /// The dequantized weight of input `i` to output `c`.
    pub fn weight(&self, i: usize, c: usize) -> f32 {
        let (j, lane) = (c / BLOCK, c % BLOCK);
        let q = self.packed[j * BLOCK * self.kp + (i / 4) * BLOCK * 4 + lane * 4 + i % 4];
        f32::from(q) * self.scales[c]
    }

    /// Bytes of weights and their scales.
    pub fn bytes(&self) -> usize {
        self.packed.len() + 8 * self.scales.len()
    }

    /// `out[r][c] += Σ_i x[r][i] · w[i][c]` for all rows of `x` and all columns, `out` being
    /// `x.rows() × n` row-major.
    pub fn matmul_acc(&self, x: &QuantizedRows, out: &mut [f32]) {
        let m = x.len();
        assert_eq!(out.len(), m * self.n, "an output of {m} × {}", self.n);
        // SAFETY: out holds m rows of n values.
        unsafe { self.matmul_acc_raw(x, 0..m, 0..self.n, out.as_mut_ptr(), self.n) }
    }

    /// `out[r·ldo + c − c0] += Σ_i x[r][i] · w[i][c]` for rows `rows` of `x` (`out` points at
    /// the output of row 0) and columns `cols`.
    ///
    /// # Safety
    /// `out` must be valid for writes at every `r·ldo + c − cols.start` for `r` in `rows` and
    /// `c` in `cols`, and no other thread may access those places meanwhile.
    ///
    /// # Panics
    /// When `cols.start` is not a multiple of [`BLOCK`], the ranges are out of bounds or `x`
    /// was quantized for another input size.
    pub unsafe fn matmul_acc_raw(
        &self,
        x: &QuantizedRows,
        rows: Range<usize>,
        cols: Range<usize>,
        out: *mut f32,
        ldo: usize,
    ) {
        let job = self.job(x, rows, cols, out, ldo);
        if job.rows.is_empty() || job.cols.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if features::vnni() {
                // SAFETY: the CPU has the features; the caller vouches for `out`.
                return unsafe { vnni::run(&job) };
            }
            if features::avx2() && self.max <= WEIGHT_MAX_AVX2 {
                // SAFETY: as above; the weights are small enough not to saturate.
                return unsafe { avx2::run(&job) };
            }
        }
        // SAFETY: the caller vouches for `out`.
        unsafe { job.scalar() }
    }

    /// A product of this matrix, its ranges checked (see [`I8Matrix::matmul_acc_raw`]).
    fn job<'a>(
        &'a self,
        x: &'a QuantizedRows,
        rows: Range<usize>,
        cols: Range<usize>,
        out: *mut f32,
        ldo: usize,
    ) -> Job<'a> {
        assert_eq!(
            x.k, self.k,
            "inputs of {} values for {} weights",
            x.k, self.k
        );
        assert!(
            rows.end <= x.len() && rows.start <= rows.end,
            "rows {rows:?}"
        );
        assert!(
            cols.start.is_multiple_of(BLOCK) && cols.start <= cols.end && cols.end <= self.n,
            "columns {cols:?} of {}",
            self.n
        );
        Job {
            w: self,
            x,
            rows,
            cols,
            out,
            ldo,
        }
    }

    /// The same product in plain Rust, whatever the CPU: the reference of the tests.
    ///
    /// # Safety
    /// As [`I8Matrix::matmul_acc_raw`].
    pub unsafe fn matmul_acc_scalar(
        &self,
        x: &QuantizedRows,
        rows: Range<usize>,
        cols: Range<usize>,
        out: *mut f32,
        ldo: usize,
    ) {
        let job = self.job(x, rows, cols, out, ldo);
        // SAFETY: the caller vouches for `out`.
        unsafe { job.scalar() }
    }
}

/// Rows of inputs quantized for [`I8Matrix`] products.
#[derive(Default)]
pub struct QuantizedRows {
    k: usize,
    kp: usize,
    /// `rows × kp` bytes (padding holds the row's zero point; its weights are zero).
    data: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<i32>,
}

impl QuantizedRows {
    /// Rows quantized.
    pub fn len(&self) -> usize {
        self.scales.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// Quantizes the `m = x.len() / k` rows of `x` (row-major), reusing this buffer. Rows are
    /// independent: threads of the caller's choosing may each take a share of
    /// [`QuantizedRows::parts_mut`] through [`quantize_rows`] instead.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        self.reset(x.len() / k, k);
        let (data, scales, zeros) = self.parts_mut();
        quantize_rows(x, k, data, scales, zeros);
    }

    /// Makes room for `m` rows of `k` inputs; their values are written through
    /// [`QuantizedRows::parts_mut`] (by [`quantize_rows`]).
    pub fn reset(&mut self, m: usize, k: usize) {
        self.k = k;
        self.kp = k.next_multiple_of(4);
        self.data.resize(m * self.kp, 0);
        self.scales.resize(m, 0.0);
        self.zeros.resize(m, 0);
    }

    /// The buffers to fill, split by the caller per row range: `(bytes, scales, zeros)` with
    /// `kp` bytes a row.
    pub fn parts_mut(&mut self) -> (&mut [u8], &mut [f32], &mut [i32]) {
        (&mut self.data, &mut self.scales, &mut self.zeros)
    }

    /// Bytes a quantized row takes in [`QuantizedRows::parts_mut`].
    pub fn row_bytes(&self) -> usize {
        self.kp
    }

    /// The dequantized input `i` of row `r`.
    pub fn value(&self, r: usize, i: usize) -> f32 {
        (self.data[r * self.kp + i] as i32 - self.zeros[r]) as f32 * self.scales[r]
    }
}

/// Quantizes rows of `k` values from `x` into `data` (`kp = k` rounded up to 4 bytes a row),
/// `scales` and `zeros`, one entry a row: the body of [`QuantizedRows::quantize`], for callers
/// that split the rows over threads.
pub fn quantize_rows(x: &[f32], k: usize, data: &mut [u8], scales: &mut [f32], zeros: &mut [i32]) {
    let kp = k.next_multiple_of(4);
    let m = scales.len();
    assert!(x.len() == m * k && data.len() == m * kp && zeros.len() == m);
    for ((row, q), (scale, zero)) in x
        .chunks_exact(k)
        .zip(data.chunks_exact_mut(kp))
        .zip(scales.iter_mut().zip(zeros.iter_mut()))
    {
        let (lo, hi) = min_max(row);
        let s = (hi - lo) / 255.0;
        if s > 0.0 && s.is_finite() {
            let inv = 1.0 / s;
            let z = (-lo * inv).round_ties_even().clamp(0.0, 255.0);
            quantize_row(row, inv, z, &mut q[..k]);
            q[k..].fill(z as u8);
            *scale = s;
            *zero = z as i32;
        } else {
            // All zero (or not finite: the row then contributes nothing rather than NaN).
            q.fill(0);
            *scale = 0.0;
            *zero = 0;
        }
    }
}

/// The smallest and largest value of a row, widened to take in 0.
fn min_max(row: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if features::avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::min_max(row) };
    }
    min_max_scalar(row)
}

fn min_max_scalar(row: &[f32]) -> (f32, f32) {
    row.iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// `q[i] = clamp(round_even(x[i]·inv + z), 0, 255)`: the multiply and the add rounded apart
/// (no fused multiply-add), as the SIMD version does.
fn quantize_row(row: &[f32], inv: f32, z: f32, q: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if features::avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::quantize_row(row, inv, z, q) };
    }
    quantize_row_scalar(row, inv, z, q)
}

fn quantize_row_scalar(row: &[f32], inv: f32, z: f32, q: &mut [u8]) {
    for (u, &v) in q.iter_mut().zip(row) {
        *u = (v * inv + z).round_ties_even().clamp(0.0, 255.0) as u8;
    }
}

/// A vector as int8 codes for approximate search: `v ≈ scale · code`, `code ∈ [-127, 127]`
/// (symmetric, one scale a vector); returns the scale (0 for the zero vector).
pub fn quantize_vector(v: &[f32], code: &mut [i8]) -> f32 {
    assert_eq!(v.len(), code.len());
    #[cfg(target_arch = "x86_64")]
    if features::avx2() {
        // SAFETY: the CPU has AVX2.
        if let Some(amax) = unsafe { avx2::abs_max(v) } {
            if amax == 0.0 || !amax.is_finite() {
                code.fill(0);
                return 0.0;
            }
            // SAFETY: as above; the lengths are checked.
            unsafe { avx2::vector_codes(v, 127.0 / amax, code) };
            return amax / 127.0;
        }
    }
    quantize_vector_scalar(v, code)
}

/// [`quantize_vector`] one value at a time (NaNs are skipped by the maximum and coded 0).
fn quantize_vector_scalar(v: &[f32], code: &mut [i8]) -> f32 {
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if amax == 0.0 || !amax.is_finite() {
        code.fill(0);
        return 0.0;
    }
    vector_codes_scalar(v, 127.0 / amax, code);
    amax / 127.0
}

fn vector_codes_scalar(v: &[f32], inv: f32, code: &mut [i8]) {
    for (c, &x) in code.iter_mut().zip(v) {
        *c = (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
}

/// `out[i] = Σ_j query[j] · codes[i·d + j]` for the `out.len()` vectors of `d = query.len()`
/// codes each in `codes`: exact integer dot products (codes in [-127, 127]), AVX2 where the CPU
/// has it.
pub fn dots_i8(query: &[i8], codes: &[i8], out: &mut [i32]) {
    let d = query.len();
    assert_eq!(
        codes.len(),
        d * out.len(),
        "{} vectors of {d} codes",
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if features::avx2() {
        // SAFETY: the CPU has AVX2; the lengths are checked above.
        return unsafe { avx2::dots_i8(query, codes, out) };
    }
    dots_i8_scalar(query, codes, out)
}

fn dots_i8_scalar(query: &[i8], codes: &[i8], out: &mut [i32]) {
    for (o, v) in out.iter_mut().zip(codes.chunks_exact(query.len().max(1))) {
        *o = query
            .iter()
            .zip(v)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
    }
}

/// One product: what the kernels share.
struct Job<'a> {
    w: &'a I8Matrix,
    x: &'a QuantizedRows,
    rows: Range<usize>,
    cols: Range<usize>,
    out: *mut f32,
    ldo: usize,
}

impl Job<'_> {
    /// The output for row `r`, column `c`, from the exact integer sum `acc = Σ u·q`: the same
    /// floating-point steps in every kernel (no fused multiply-add), so all agree bit for bit.
    #[inline(always)]
    fn finish(&self, r: usize, c: usize, acc: i32, prev: f32) -> f32 {
        let t = (acc - self.x.zeros[r] * self.w.sums[c]) as f32;
        prev + t * (self.x.scales[r] * self.w.scales[c])
    }

    /// # Safety
    /// As [`I8Matrix::matmul_acc_raw`].
    unsafe fn scalar(&self) {
        let (w, x) = (self.w, self.x);
        for r in self.rows.clone() {
            let u = &x.data[r * x.kp..][..x.kp];
            for c in self.cols.clone() {
                let (j, lane) = (c / BLOCK, c % BLOCK);
                let block = &w.packed[j * BLOCK * w.kp..][..BLOCK * w.kp];
                let mut acc = 0i32;
                for g in 0..w.kp / 4 {
                    for t in 0..4 {
                        acc += i32::from(u[4 * g + t]) * i32::from(block[g * 32 + lane * 4 + t]);
                    }
                }
                // SAFETY: the caller vouches for this place.
                unsafe {
                    let o = self.out.add(r * self.ldo + c - self.cols.start);
                    *o = self.finish(r, c, acc, *o);
                }
            }
        }
    }
}

/// The tiling both SIMD kernels share: tiles of up to `$mr` rows × `$nb` blocks of 8 columns;
/// the micro-kernel `tile::<R, B>(job, r0, j0)` runs over the whole input, adding four u8 × i8
/// products into each i32 lane with `|sum, a, w| …` (`a`: four input bytes broadcast, `w`: a
/// block's 4 × 8 weights). Columns are taken a panel of `$nb` blocks at a time and, inside a
/// panel, rows in tiles, so the panel's weights stay in cache while the inputs stream.
#[cfg(target_arch = "x86_64")]
macro_rules! tiled {
    ($feature:literal, $mr:literal, $nb:literal, |$sum:ident, $a:ident, $w:ident| $madd:expr) => {
        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn tile<const R: usize, const B: usize>(job: &Job<'_>, r0: usize, j0: usize) {
            let (w, x) = (job.w, job.x);
            let mut acc = [[_mm256_setzero_si256(); B]; R];
            let wp = w.packed.as_ptr();
            let up = x.data.as_ptr();
            for g in 0..w.kp / 4 {
                let mut wv = [_mm256_setzero_si256(); B];
                for (b, v) in wv.iter_mut().enumerate() {
                    // SAFETY: block j0 + b exists; group g is inside it.
                    *v = unsafe {
                        _mm256_loadu_si256(
                            wp.add((j0 + b) * BLOCK * w.kp + g * 32) as *const __m256i
                        )
                    };
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    // SAFETY: row r0 + i exists; 4 bytes at 4g are inside it.
                    let $a = _mm256_set1_epi32(unsafe {
                        (up.add((r0 + i) * x.kp + 4 * g) as *const i32).read_unaligned()
                    });
                    for (s, &$w) in row.iter_mut().zip(&wv) {
                        let $sum = *s;
                        *s = $madd;
                    }
                }
            }
            // SAFETY: forwarded from the caller.
            unsafe { store(job, r0, j0, &acc) }
        }

        /// # Safety
        /// The CPU has the features; the caller of the product vouches for `job.out`.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn run(job: &Job<'_>) {
            let blocks = job.cols.start / BLOCK..job.cols.end.div_ceil(BLOCK);
            let mut j0 = blocks.start;
            while j0 < blocks.end {
                let nb = (blocks.end - j0).min($nb);
                let mut r0 = job.rows.start;
                while r0 < job.rows.end {
                    let mr = (job.rows.end - r0).min($mr);
                    // SAFETY: the tile lies inside the job's rows and blocks.
                    unsafe { dispatch(job, r0, j0, mr, nb) };
                    r0 += mr;
                }
                j0 += nb;
            }
        }

        #[target_feature(enable = $feature)]
        unsafe fn dispatch(job: &Job<'_>, r0: usize, j0: usize, mr: usize, nb: usize) {
            macro_rules! by_blocks {
                ($r:literal) => {
                    match nb {
                        1 => tile::<$r, 1>(job, r0, j0),
                        2 => tile::<$r, 2>(job, r0, j0),
                        3 if $nb >= 3 => tile::<$r, 3>(job, r0, j0),
                        _ if $nb >= 4 => tile::<$r, 4>(job, r0, j0),
                        _ => unreachable!(),
                    }
                };
            }
            // SAFETY: forwarded from the caller.
            unsafe {
                match mr {
                    1 => by_blocks!(1),
                    2 => by_blocks!(2),
                    3 => by_blocks!(3),
                    4 => by_blocks!(4),
                    5 if $mr >= 5 => by_blocks!(5),
                    _ if $mr >= 6 => by_blocks!(6),
                    _ => unreachable!(),
                }
            }
        }

        /// Writes the `R × B` tile of exact sums `acc` into the output.
        #[inline]
        #[target_feature(enable = $feature)]
        unsafe fn store<const R: usize, const B: usize>(
            job: &Job<'_>,
            r0: usize,
            j0: usize,
            acc: &[[__m256i; B]; R],
        ) {
            for (i, row) in acc.iter().enumerate() {
                let r = r0 + i;
                let zero = _mm256_set1_epi32(job.x.zeros[r]);
                let scale = _mm256_set1_ps(job.x.scales[r]);
                for (b, &sum) in row.iter().enumerate() {
                    let c = (j0 + b) * BLOCK;
                    // SAFETY: scales and sums are padded to whole blocks.
                    let (ws, cs) = unsafe {
                        (
                            _mm256_loadu_ps(job.w.scales.as_ptr().add(c)),
                            _mm256_loadu_si256(job.w.sums.as_ptr().add(c) as *const __m256i),
                        )
                    };
                    let t = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum, _mm256_mullo_epi32(zero, cs)));
                    let f = _mm256_mul_ps(t, _mm256_mul_ps(scale, ws));
                    // SAFETY: the caller vouches for the output row; a block cut by the end
                    // of the columns is written lane by lane.
                    unsafe {
                        let o = job.out.add(r * job.ldo + c - job.cols.start);
                        if c + BLOCK <= job.cols.end {
                            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), f));
                        } else {
                            let mut lanes = [0f32; BLOCK];
                            _mm256_storeu_ps(lanes.as_mut_ptr(), f);
                            for (l, v) in lanes.iter().enumerate().take(job.cols.end - c) {
                                *o.add(l) += v;
                            }
                        }
                    }
                }
            }
        }
    };
}

/// AVX2: `vpmaddubsw` (u8 × i8 pairs to i16; the seven-bit weights keep it from saturating)
/// then `vpmaddwd` by ones (i16 pairs to i32).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Job};

    // Σ of four u8 × i8 products into each i32 lane: pairs to i16, then pairs of those.
    tiled!("avx2", 4, 2, |sum, a, w| _mm256_add_epi32(
        sum,
        _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), _mm256_set1_epi16(1))
    ));

    /// See `super::dots_i8`. The query's magnitudes go in as unsigned bytes and its signs onto
    /// each vector's codes (`vpsignb`), so that `vpmaddubsw` multiplies u8 × i8 pairs: at most
    /// 2 · 127 · 127, no saturation.
    #[target_feature(enable = "avx2")]
    pub(super) fn dots_i8(query: &[i8], codes: &[i8], out: &mut [i32]) {
        let d = query.len();
        let full = d / 32 * 32;
        let ones = _mm256_set1_epi16(1);
        let q: Vec<__m256i> = query[..full]
            .chunks_exact(32)
            // SAFETY: each chunk is 32 bytes.
            .map(|c| unsafe { _mm256_loadu_si256(c.as_ptr() as *const __m256i) })
            .collect();
        let qabs: Vec<__m256i> = q.iter().map(|&v| _mm256_abs_epi8(v)).collect();
        for (o, v) in out.iter_mut().zip(codes.chunks_exact(d.max(1))) {
            let mut acc = _mm256_setzero_si256();
            for (i, (&qs, &qa)) in q.iter().zip(&qabs).enumerate() {
                // SAFETY: v holds d ≥ full bytes.
                let w = unsafe { _mm256_loadu_si256(v.as_ptr().add(32 * i) as *const __m256i) };
                let p = _mm256_maddubs_epi16(qa, _mm256_sign_epi8(w, qs));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
            }
            let s = _mm_add_epi32(
                _mm256_castsi256_si128(acc),
                _mm256_extracti128_si256::<1>(acc),
            );
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            let tail: i32 = query[full..]
                .iter()
                .zip(&v[full..])
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
            *o = _mm_cvtsi128_si32(s) + tail;
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn min_max(row: &[f32]) -> (f32, f32) {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let chunks = row.chunks_exact(8);
        let tail = super::min_max_scalar(chunks.remainder());
        for c in chunks {
            // SAFETY: c holds 8 values.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
        }
        let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
        // SAFETY: 8 values each.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), lo);
            _mm256_storeu_ps(h.as_mut_ptr(), hi);
        }
        (
            l.iter().fold(tail.0, |a, &b| a.min(b)),
            h.iter().fold(tail.1, |a, &b| a.max(b)),
        )
    }

    /// As `super::quantize_row_scalar`: `cvtps2dq` rounds half to even (the default
    /// rounding mode), the packs saturate to [0, 255].
    #[target_feature(enable = "avx2")]
    pub(super) fn quantize_row(row: &[f32], inv: f32, z: f32, q: &mut [u8]) {
        let (vinv, vz) = (_mm256_set1_ps(inv), _mm256_set1_ps(z));
        let n = row.len() / 32 * 32;
        for (c, out) in row[..n].chunks_exact(32).zip(q[..n].chunks_exact_mut(32)) {
            let mut ints = [_mm256_setzero_si256(); 4];
            for (i, v) in ints.iter_mut().enumerate() {
                // SAFETY: c holds 32 values.
                let x = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * i)) };
                *v = _mm256_cvtps_epi32(_mm256_add_ps(_mm256_mul_ps(x, vinv), vz));
            }
            // Packs work within 128-bit lanes: bytes come out as 0-3 8-11 4-7 12-15 groups
            // of four; one permutation of 32-bit groups puts them in order.
            let w01 = _mm256_packs_epi32(ints[0], ints[1]);
            let w23 = _mm256_packs_epi32(ints[2], ints[3]);
            let b = _mm256_packus_epi16(w01, w23);
            let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: out holds 32 bytes.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, b) };
        }
        super::quantize_row_scalar(&row[n..], inv, z, &mut q[n..]);
    }

    /// The largest magnitude in `v`, or `None` when `v` holds a NaN (the scalar fold skips
    /// NaNs, `vmaxps` does not: the caller takes the scalar path then).
    #[target_feature(enable = "avx2")]
    pub(super) fn abs_max(v: &[f32]) -> Option<f32> {
        let sign = _mm256_set1_ps(-0.0);
        let (mut m, mut nan) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let chunks = v.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            // SAFETY: c holds 8 values.
            let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, x));
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        }
        if _mm256_movemask_ps(nan) != 0 || tail.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        Some(lanes.iter().chain(tail).fold(0f32, |a, &b| a.max(b.abs())))
    }

    /// As `super::vector_codes_scalar`: `cvtps2dq` rounds half to even, the clamp is the
    /// scalar one (the packs then cannot saturate).
    #[target_feature(enable = "avx2")]
    pub(super) fn vector_codes(v: &[f32], inv: f32, code: &mut [i8]) {
        let vinv = _mm256_set1_ps(inv);
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        let n = v.len() / 32 * 32;
        for (c, out) in v[..n].chunks_exact(32).zip(code[..n].chunks_exact_mut(32)) {
            let mut ints = [_mm256_setzero_si256(); 4];
            for (i, w) in ints.iter_mut().enumerate() {
                // SAFETY: c holds 32 values.
                let x = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * i)) };
                let r = _mm256_cvtps_epi32(_mm256_mul_ps(x, vinv));
                *w = _mm256_min_epi32(_mm256_max_epi32(r, lo), hi);
            }
            // In order again after the in-lane packs, as in `quantize_row`.
            let w01 = _mm256_packs_epi32(ints[0], ints[1]);
            let w23 = _mm256_packs_epi32(ints[2], ints[3]);
            let b = _mm256_packs_epi16(w01, w23);
            let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: out holds 32 bytes.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, b) };
        }
        super::vector_codes_scalar(&v[n..], inv, &mut code[n..]);
    }
}

/// AVX-512 VNNI on 256-bit registers (`vpdpbusd`: four u8 × i8 products summed into each i32
/// lane in one instruction), with the 32 registers of AVX-512 for a 6 × 32 tile.
#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, Job};

    tiled!("avx2,avx512f,avx512vl,avx512vnni", 6, 4, |sum, a, w| {
        _mm256_dpbusd_epi32(sum, a, w)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (no test depends on a random generator's crate).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[i * n + c]))
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn every_kernel_gives_the_scalar_numbers_bit_for_bit() {
        // Shapes with remainders everywhere: rows not a multiple of the tile, inputs not a
        // multiple of 4, columns not a multiple of 8; an all-zero row and a one-sided row.
        for (m, k, n) in [(1, 4, 8), (7, 30, 21), (13, 384, 72), (64, 101, 40)] {
            let w = values(k * n, 7 + k as u64);
            let mut x = values(m * k, 3 + m as u64);
            x[..k].fill(0.0);
            if m > 2 {
                for v in &mut x[k..2 * k] {
                    *v = v.abs() * 5.0;
                }
            }
            let mut xq = QuantizedRows::default();
            xq.quantize(&x, k);
            let base = values(m * n, 11);
            for max in [WEIGHT_MAX, WEIGHT_MAX_AVX2] {
                let q = I8Matrix::quantize_to(&w, k, n, max);
                let mut slow = base.clone();
                // SAFETY: slow holds m × n values.
                unsafe { q.matmul_acc_scalar(&xq, 0..m, 0..n, slow.as_mut_ptr(), n) };
                assert!(
                    slow[..n].iter().zip(&base).all(|(a, b)| a == b),
                    "a zero row adds 0"
                );
                let mut fast = base.clone();
                q.matmul_acc(&xq, &mut fast);
                assert_eq!(fast, slow, "{m} × {k} × {n}, the CPU's best kernel");
                #[cfg(target_arch = "x86_64")]
                for (name, has, kernel) in [
                    (
                        "avx2",
                        features::avx2() && max <= WEIGHT_MAX_AVX2,
                        avx2::run as unsafe fn(&Job<'_>),
                    ),
                    ("vnni", features::vnni(), vnni::run),
                ] {
                    if !has {
                        continue;
                    }
                    let mut got = base.clone();
                    let job = Job {
                        w: &q,
                        x: &xq,
                        rows: 0..m,
                        cols: 0..n,
                        out: got.as_mut_ptr(),
                        ldo: n,
                    };
                    // SAFETY: the CPU has the features; got holds m × n values.
                    unsafe { kernel(&job) };
                    assert_eq!(got, slow, "{m} × {k} × {n}, {name}");
                }
            }
        }
    }

    #[test]
    fn simd_quantization_gives_the_scalar_bytes() {
        for k in [1, 7, 32, 33, 100, 384] {
            let mut x: Vec<f32> = values(k, k as u64).iter().map(|v| v * 3.0).collect();
            // Values exactly half-way between two steps, and extremes.
            x[0] = 0.5;
            if k > 2 {
                x[1] = -2.5;
                x[2] = 1e-9;
            }
            let (lo, hi) = min_max(&x);
            assert_eq!((lo, hi), min_max_scalar(&x));
            for (inv, z) in [
                (2.0, 7.0),
                (255.0 / (hi - lo), (-lo * 255.0 / (hi - lo)).round()),
            ] {
                let (mut fast, mut slow) = (vec![0u8; k], vec![0u8; k]);
                quantize_row(&x, inv, z, &mut fast);
                quantize_row_scalar(&x, inv, z, &mut slow);
                assert_eq!(fast, slow, "k = {k}, inv = {inv}, z = {z}");
            }
        }
    }

    #[test]
    fn vector_codes_match_the_scalar_ones() {
        for d in [0, 1, 7, 8, 31, 32, 33, 100, 384, 385] {
            for seed in 0..4 {
                let mut v = values(d, 7 * d as u64 + seed);
                if d > 3 && seed == 1 {
                    // Ties: with a maximum of 127 every x.5 is halfway, rounded to even.
                    v.iter_mut().for_each(|x| *x = (*x * 120.0).round() + 0.5);
                    v[d / 2] = -127.0;
                }
                if d > 3 && seed == 2 {
                    v[d - 2] = f32::NAN;
                }
                let (mut fast, mut slow) = (vec![0i8; d], vec![0i8; d]);
                let a = quantize_vector(&v, &mut fast);
                let b = quantize_vector_scalar(&v, &mut slow);
                assert_eq!(a.to_bits(), b.to_bits(), "d = {d}, seed = {seed}");
                assert_eq!(fast, slow, "d = {d}, seed = {seed}");
            }
        }
    }

    #[test]
    fn vector_codes_and_their_dot_products() {
        for d in [1, 31, 32, 100, 384] {
            let q = values(d, d as u64);
            let mut qc = vec![0i8; d];
            let qs = quantize_vector(&q, &mut qc);
            assert!(
                qc.iter().any(|&c| c == 127 || c == -127),
                "the range is used"
            );
            for (x, &c) in q.iter().zip(&qc) {
                assert!((x - qs * f32::from(c)).abs() <= qs * 0.5 + 1e-7);
            }
            // Extremes included: -127 · -127 pairs would saturate a careless kernel.
            let n = 9;
            let mut codes: Vec<i8> = values(n * d, 99)
                .iter()
                .map(|v| (v * 127.0) as i8)
                .collect();
            codes[..d].iter_mut().zip(&qc).for_each(|(c, &q)| *c = q);
            let mut fast = vec![0i32; n];
            let mut slow = vec![0i32; n];
            dots_i8(&qc, &codes, &mut fast);
            dots_i8_scalar(&qc, &codes, &mut slow);
            assert_eq!(fast, slow, "d = {d}");
            let self_dot: i32 = qc.iter().map(|&c| i32::from(c) * i32::from(c)).sum();
            assert_eq!(fast[0], self_dot);
        }
        let mut zero = [5i8; 4];
        assert_eq!(quantize_vector(&[0.0; 4], &mut zero), 0.0);
        assert_eq!(zero, [0; 4]);
        assert_eq!(quantize_vector(&[f32::INFINITY; 40], &mut [0i8; 40]), 0.0);
    }

    #[test]
    fn a_column_range_writes_only_its_columns() {
        let (m, k, n) = (9, 64, 48);
        let q = I8Matrix::quantize(&values(k * n, 1), k, n);
        let mut xq = QuantizedRows::default();
        xq.quantize(&values(m * k, 2), k);
        let mut whole = vec![0f32; m * n];
        q.matmul_acc(&xq, &mut whole);
        // Columns 16..40 of rows 2..7, into a buffer of their own with a wider stride.
        let ldo = 30;
        let mut part = vec![f32::NAN; 7 * ldo];
        for r in 2..7 {
            part[r * ldo..r * ldo + 24].fill(0.0);
        }
        // SAFETY: rows 2..7 × 24 columns at stride 30 are inside `part`.
        unsafe { q.matmul_acc_raw(&xq, 2..7, 16..40, part.as_mut_ptr(), ldo) };
        for r in 0..7 {
            for i in 0..ldo {
                let v = part[r * ldo + i];
                if (2..7).contains(&r) && i < 24 {
                    assert_eq!(v, whole[r * n + 16 + i], "row {r} column {}", 16 + i);
                } else {
                    assert!(v.is_nan(), "row {r}, place {i} was written");
                }
            }
        }
    }

    #[test]
    fn the_product_is_close_to_the_f32_one() {
        let (m, k, n) = (16, 384, 64);
        let w: Vec<f32> = values(k * n, 5).iter().map(|v| v * 0.1).collect();
        let x = values(m * k, 6);
        let q = I8Matrix::quantize(&w, k, n);
        let mut xq = QuantizedRows::default();
        xq.quantize(&x, k);
        let mut got = vec![0f32; m * n];
        q.matmul_acc(&xq, &mut got);
        let want = reference(&x, &w, m, k, n);
        // Relative error of the whole output: seven- or eight-bit weights and eight-bit inputs
        // on uniform values give about 1%.
        let err: f32 = got.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum();
        let norm: f32 = want.iter().map(|b| b * b).sum();
        let rel = (err / norm).sqrt();
        assert!(rel < 0.02, "relative error {rel}");
        assert!(
            rel > 0.0,
            "quantization is lossy; an exact result means no quantization"
        );
        // Dequantized values are within half a step of the originals.
        for (i, c) in [(0, 0), (100, 17), (383, 63)] {
            let step =
                (0..k).map(|i| w[i * n + c].abs()).fold(0f32, f32::max) / weight_max() as f32;
            assert!((q.weight(i, c) - w[i * n + c]).abs() <= step * 0.5 + 1e-7);
        }
        for (r, i) in [(0, 0), (5, 200), (15, 383)] {
            // Half a step of rounding plus half a step of the rounded zero point.
            assert!((xq.value(r, i) - x[r * k + i]).abs() <= 2.0 / 255.0 + 1e-6);
        }
    }
}
