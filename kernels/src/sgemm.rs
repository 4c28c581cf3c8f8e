//! F32 products of a few input rows with a row-major `k × n` matrix, for the embedder's query
//! path: a search embeds one ~15-token question, and a general matrix kernel spends as long
//! preparing (packing) the weights as multiplying them at that size.
//!
//! The kernel reads the matrix in place: columns a panel of 16 at a time (one 64-byte line of
//! each matrix row), and inside a panel 256 matrix rows at a time (16 KB) for every tile of
//! up to six input rows (twelve AVX2 accumulators each, carried between the parts). The first
//! tile reads a part from the matrix, copies it to a contiguous buffer that the other tiles
//! read from the first-level cache, and meanwhile asks the memory for the next part's lines,
//! so each weight comes from memory once and memory and arithmetic overlap. Each output is a
//! plain left-to-right sum of `x[r][i] · w[i][c]` in F32 with fused multiply-adds, so the
//! numbers differ from another kernel's only in rounding.
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
/// Columns in a panel: one 64-byte cache line of F32 weights.
const PANEL: usize = 16;
#[cfg(target_arch = "x86_64")]
/// Rows in a tile (twelve accumulators, two weight registers and a broadcast of sixteen).
const TILE: usize = 6;
#[cfg(target_arch = "x86_64")]
/// Rows whose sums are carried from one part of the weights to the next (six tiles).
const GROUP: usize = 6 * TILE;
#[cfg(target_arch = "x86_64")]
/// Weight rows in a part: 256 lines of a panel, 16 KB, half the first-level cache.
const KBLOCK: usize = 256;

/// `out[r·ldo + c − cols.start] += Σ_i x[r·k + i] · w[i·n + c]` for `r` in `rows` and `c` in
/// `cols` (`out` points at the output of row 0, column `cols.start`), one sum.
///
/// # Safety
/// As [`matmul_acc_blocks`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_acc_raw(
    x: &[f32],
    k: usize,
    w: &[f32],
    n: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe { matmul_acc_blocks(x, k, w, n, rows, cols, out, ldo, usize::MAX) }
}

/// As [`matmul_acc_raw`], with the inputs in blocks of `kc`: each block's sum (left to right,
/// from zero) is added to the output in turn — as a kernel that splits long sums for its
/// caches does, so that the two agree to the bit.
///
/// # Safety
/// `out` must be valid for writes at every `r·ldo + c − cols.start` for `r` in `rows` and `c`
/// in `cols`, and no other thread may access those places meanwhile.
///
/// # Panics
/// When `x` is shorter than `rows.end × k`, `w` is not `k × n`, `cols` ends past `n`, or `kc`
/// is zero.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_acc_blocks(
    x: &[f32],
    k: usize,
    w: &[f32],
    n: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    out: *mut f32,
    ldo: usize,
    kc: usize,
) {
    assert!(kc > 0, "blocks of no inputs");
    assert!(
        x.len() >= rows.end * k,
        "{} inputs for {rows:?} × {k}",
        x.len()
    );
    assert_eq!(w.len(), k * n, "weights of {k} × {n}");
    assert!(
        cols.start <= cols.end && cols.end <= n && rows.start <= rows.end,
        "columns {cols:?} of {n}, rows {rows:?}"
    );
    if rows.is_empty() || cols.is_empty() || k == 0 {
        return;
    }
    let job = Job {
        x,
        k,
        w,
        n,
        rows,
        cols,
        out,
        ldo,
        kc,
    };
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has the features; the caller vouches for `out`.
        return unsafe { avx2::run(&job) };
    }
    // SAFETY: the caller vouches for `out`.
    unsafe { job.scalar(job.cols.clone()) }
}

/// Whether the SIMD kernel runs on this CPU (otherwise plain Rust does).
pub fn kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        return "AVX2+FMA";
    }
    "scalar"
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

/// One product's operands, checked.
struct Job<'a> {
    x: &'a [f32],
    k: usize,
    w: &'a [f32],
    n: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    out: *mut f32,
    ldo: usize,
    /// Inputs whose products are summed apart.
    kc: usize,
}

impl Job<'_> {
    /// The columns `cols` (inside the job's) in plain Rust, summed in the same order.
    ///
    /// # Safety
    /// As [`matmul_acc_raw`].
    unsafe fn scalar(&self, cols: Range<usize>) {
        for r in self.rows.clone() {
            let xr = &self.x[r * self.k..][..self.k];
            for c in cols.clone() {
                for (b, block) in xr.chunks(self.kc).enumerate() {
                    let mut s = 0f32;
                    for (i, &v) in block.iter().enumerate() {
                        s = v.mul_add(self.w[(b * self.kc + i) * self.n + c], s);
                    }
                    // SAFETY: the caller vouches for this place.
                    unsafe { *self.out.add(r * self.ldo + c - self.cols.start) += s };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{GROUP, Job, KBLOCK, PANEL, TILE};

    /// Rows of tile `t` when `rows` are split into as few tiles of at most `TILE` as can hold
    /// them, as evenly as possible (14 rows: 5, 5, 4 rather than 6, 6, 2 — a tile of one or two
    /// rows waits on its few accumulators' latency).
    fn tile_rows(rows: usize, t: usize) -> usize {
        let tiles = rows.div_ceil(TILE);
        rows / tiles + usize::from(t < rows % tiles)
    }

    /// The accumulators of one tile (up to `TILE` rows × two blocks of eight columns).
    type Acc = [[__m256; 2]; TILE];

    /// One part of a panel: the weights of rows `i0..i1`, columns `c0..c0 + 8·blocks`, and
    /// where the part read after it lies.
    #[derive(Clone, Copy)]
    struct Part {
        c0: usize,
        i0: usize,
        i1: usize,
        /// The next part's first column and rows (its lines are asked for meanwhile).
        next: Option<(usize, usize, usize)>,
    }

    /// Where a tile reads the part's weights.
    const MATRIX: u8 = 0;
    /// From the matrix, copying them to the part buffer for the tiles after it.
    const COPY: u8 = 1;
    /// From the part buffer (contiguous: the matrix's rows of a panel lie a row of the
    /// matrix apart, and strides such as 1,536 or 6,144 bytes fall in a few of the first-level
    /// cache's sets, which then cannot hold a part).
    const BUFFER: u8 = 2;

    /// # Safety
    /// The CPU has AVX2 and FMA; the caller of the product vouches for `job.out`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run(job: &Job<'_>) {
        let simd_end = job.cols.start + (job.cols.len() / 8) * 8;
        // The inputs of each tile interleaved (input i of its rows side by side), so that a
        // tile broadcasts them from one pointer: with a pointer per row, five or six rows'
        // pointers do not fit in the registers beside the accumulators.
        XT.with_borrow_mut(|xt| {
            xt.clear();
            xt.resize(job.rows.len() * job.k, 0.0);
            let mut g0 = job.rows.start;
            while g0 < job.rows.end {
                let g1 = (g0 + GROUP).min(job.rows.end);
                let mut r0 = g0;
                for t in 0..(g1 - g0).div_ceil(TILE) {
                    let mr = tile_rows(g1 - g0, t);
                    let block = &mut xt[(r0 - job.rows.start) * job.k..][..mr * job.k];
                    for j in 0..mr {
                        let row = &job.x[(r0 + j) * job.k..][..job.k];
                        for (i, &v) in row.iter().enumerate() {
                            block[i * mr + j] = v;
                        }
                    }
                    r0 += mr;
                }
                g0 = g1;
            }
            // SAFETY: forwarded from the caller; xt holds every tile's inputs.
            unsafe { run_with(job, simd_end, xt) }
        })
    }

    thread_local! {
        /// The interleaved inputs of the thread's current product.
        static XT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// # Safety
    /// As [`run`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_with(job: &Job<'_>, simd_end: usize, xt: &[f32]) {
        let mut buf = [[_mm256_setzero_ps(); 2]; KBLOCK];
        let mut c0 = job.cols.start;
        while c0 < simd_end {
            let blocks = ((simd_end - c0) / 8).min(PANEL / 8);
            let mut g0 = job.rows.start;
            while g0 < job.rows.end {
                let g1 = (g0 + GROUP).min(job.rows.end);
                let tiles = (g1 - g0).div_ceil(TILE);
                let mut acc: [Acc; GROUP / TILE] = [[[_mm256_setzero_ps(); 2]; TILE]; GROUP / TILE];
                // The panel `KBLOCK` weight rows at a time, every tile of the group over each
                // part: the first tile reads the part from the matrix (asking for the next
                // part's lines meanwhile) and copies it to a buffer that the others read.
                let mut i0 = 0;
                while i0 < job.k {
                    // The sum of each `kc` inputs goes to the output on its own.
                    let block_end = (i0 / job.kc + 1).saturating_mul(job.kc).min(job.k);
                    let i1 = (i0 + KBLOCK).min(block_end);
                    let next = if i1 < job.k {
                        let e = (i1 / job.kc + 1).saturating_mul(job.kc).min(job.k);
                        Some((c0, i1, (i1 + KBLOCK).min(e)))
                    } else if c0 + PANEL < simd_end {
                        Some((c0 + PANEL, 0, KBLOCK.min(job.kc).min(job.k)))
                    } else {
                        None
                    };
                    let part = Part { c0, i0, i1, next };
                    let mut r0 = g0;
                    for (t, tile_acc) in acc.iter_mut().take(tiles).enumerate() {
                        let mr = tile_rows(g1 - g0, t);
                        let src = match t {
                            0 if tiles == 1 => MATRIX,
                            0 => COPY,
                            _ => BUFFER,
                        };
                        // SAFETY: the tile lies inside the job's rows and columns, its
                        // weights rows i0..i1 inside the k × n matrix.
                        unsafe {
                            let x = &xt[(r0 - job.rows.start) * job.k..][..mr * job.k];
                            dispatch(job, x, mr, blocks, part, src, tile_acc, &mut buf)
                        };
                        r0 += mr;
                    }
                    i0 = i1;
                    if i1 == block_end {
                        // SAFETY: the group's rows and the panel's columns are the job's.
                        unsafe { flush(job, (g0, g1), c0, blocks, &mut acc) };
                    }
                }
                g0 = g1;
            }
            c0 += blocks * 8;
        }
        if simd_end < job.cols.end {
            // SAFETY: forwarded from the caller.
            unsafe { job.scalar(simd_end..job.cols.end) };
        }
    }

    /// Adds the sums of the group of rows `g0..g1` in the panel at `c0` to the output, and
    /// starts them again at zero.
    ///
    /// # Safety
    /// The CPU has AVX2; the rows and columns are inside the job's.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn flush(
        job: &Job<'_>,
        (g0, g1): (usize, usize),
        c0: usize,
        blocks: usize,
        acc: &mut [Acc; GROUP / TILE],
    ) {
        let mut r0 = g0;
        for (t, tile_acc) in acc.iter_mut().enumerate() {
            if r0 >= g1 {
                break;
            }
            let mr = tile_rows(g1 - g0, t);
            for (j, row) in tile_acc.iter_mut().take(mr).enumerate() {
                for (b, sum) in row.iter_mut().take(blocks).enumerate() {
                    // SAFETY: the caller vouches for the job's outputs; this tile is inside
                    // them.
                    unsafe {
                        let o = job
                            .out
                            .add((r0 + j) * job.ldo + c0 + 8 * b - job.cols.start);
                        _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), *sum));
                    }
                    *sum = _mm256_setzero_ps();
                }
            }
            r0 += mr;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dispatch(
        job: &Job<'_>,
        x: &[f32],
        mr: usize,
        blocks: usize,
        part: Part,
        src: u8,
        acc: &mut Acc,
        buf: &mut [[__m256; 2]; KBLOCK],
    ) {
        macro_rules! by_src {
            ($r:literal, $b:literal) => {
                match src {
                    MATRIX => tile::<$r, $b, MATRIX>(job, x, part, acc, buf),
                    COPY => tile::<$r, $b, COPY>(job, x, part, acc, buf),
                    _ => tile::<$r, $b, BUFFER>(job, x, part, acc, buf),
                }
            };
        }
        macro_rules! by_blocks {
            ($r:literal) => {
                if blocks == 2 {
                    by_src!($r, 2)
                } else {
                    by_src!($r, 1)
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
                5 => by_blocks!(5),
                _ => by_blocks!(6),
            }
        }
    }

    /// Adds to the accumulators of the `R × 8B` outputs at rows `r0..`, columns `part.c0..`
    /// the products over the part's inputs.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const B: usize, const SRC: u8>(
        job: &Job<'_>,
        x: &[f32],
        part: Part,
        out: &mut Acc,
        buf: &mut [[__m256; 2]; KBLOCK],
    ) {
        let mut acc = [[_mm256_setzero_ps(); B]; R];
        for (a, o) in acc.iter_mut().zip(out.iter()) {
            a.copy_from_slice(&o[..B]);
        }
        let (n, c0, i0, i1) = (job.n, part.c0, part.i0, part.i1);
        assert_eq!(x.len(), R * job.k, "a tile's inputs");
        let xp = x.as_ptr();
        let wp = job.w.as_ptr();
        // The next part's lines, asked for into the second-level cache a few at each step of
        // this part, so that memory works while the tiles compute (each row of a panel is
        // another page of the matrix, which the hardware prefetchers do not follow). In
        // `cargo bench -p recall-kernels --bench sgemm` at 14 rows, from memory: 1.2–1.7×
        // against asking 24 rows ahead in the first tile only, and the same again into the
        // first-level cache or without the part buffer would lose 5–15%.
        let (nc, ni0, nlen, per) = match part.next {
            // The tile that reads the part from the matrix asks for the next one.
            Some((nc, a, b)) if SRC != BUFFER => (nc, a, b - a, (b - a).div_ceil(i1 - i0)),
            _ => (0, 0, 0, 0),
        };
        for i in i0..i1 {
            for q in 0..per {
                let j = (i - i0) * per + q;
                if j < nlen {
                    let p = wp.wrapping_add((ni0 + j) * n + nc) as *const i8;
                    _mm_prefetch::<_MM_HINT_T1>(p);
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(8 * 4 * B - 1));
                }
            }
            let mut wv = [_mm256_setzero_ps(); B];
            for (b, v) in wv.iter_mut().enumerate() {
                *v = if SRC == BUFFER {
                    buf[i - i0][b]
                } else {
                    // SAFETY: row i, columns c0 + 8b.. c0 + 8b + 8 lie inside the k × n
                    // weights (the caller's tile ends inside the job's columns).
                    unsafe { _mm256_loadu_ps(wp.add(i * n + c0 + 8 * b)) }
                };
                if SRC == COPY {
                    buf[i - i0][b] = *v;
                }
            }
            for (j, row) in acc.iter_mut().enumerate() {
                // SAFETY: i < k and j < R: inside the tile's R × k inputs.
                let a = _mm256_set1_ps(unsafe { *xp.add(i * R + j) });
                for (s, &v) in row.iter_mut().zip(&wv) {
                    *s = _mm256_fmadd_ps(a, v, *s);
                }
            }
        }
        for (a, o) in acc.iter().zip(out.iter_mut()) {
            o[..B].copy_from_slice(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn products_agree_with_a_double_precision_sum() {
        // Rows and columns with remainders everywhere (tiles of 6 rows, groups of 36, panels
        // of 16 and blocks of 8 columns, parts of 256 inputs), a sub-range of rows and
        // columns, a wider output stride.
        for (m, k, n) in [
            (1, 1, 1),
            (7, 30, 21),
            (14, 384, 72),
            (13, 101, 40),
            (20, 64, 9),
            (41, 600, 24),
        ] {
            let w = values(k * n, 7 + k as u64);
            let x = values(m * k, 3 + m as u64);
            for (rows, cols) in [(0..m, 0..n), (m / 3..m, n / 5..n - n / 4)] {
                let ldo = n + 3;
                let base = values(m * ldo, 11);
                let mut out = base.clone();
                // SAFETY: out holds m rows of ldo ≥ n values; this thread alone writes.
                unsafe {
                    matmul_acc_raw(
                        &x,
                        k,
                        &w,
                        n,
                        rows.clone(),
                        cols.clone(),
                        out.as_mut_ptr().add(cols.start),
                        ldo,
                    )
                };
                for r in 0..m {
                    for c in 0..ldo {
                        let at = r * ldo + c;
                        if !(rows.contains(&r) && c >= cols.start && c < cols.end) {
                            assert_eq!(out[at], base[at], "({r}, {c}) untouched");
                            continue;
                        }
                        let want = f64::from(base[at])
                            + (0..k)
                                .map(|i| f64::from(x[r * k + i]) * f64::from(w[i * n + c]))
                                .sum::<f64>();
                        let err = (f64::from(out[at]) - want).abs();
                        assert!(
                            err <= 1e-5 * (k as f64).sqrt(),
                            "({r}, {c}) of {m}×{k}×{n}: {err}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_simd_kernel_sums_like_the_scalar_one() {
        // Both sum left to right with fused multiply-adds: the same numbers, bit for bit.
        // Several parts of the inputs and two groups of rows: the sums carry over; blocks of
        // inputs summed apart, on and off the parts' edges.
        let (k, n) = (700, 48);
        let w = values(k * n, 5);
        for m in [40, 14, 7] {
            let x = values(m * k, 6 + m as u64);
            for kc in [usize::MAX, 512, 256, 300, 1] {
                let mut simd = vec![0.5f32; m * n];
                let mut scalar = simd.clone();
                let mut want = simd.clone();
                for r in 0..m {
                    for c in 0..n {
                        for block in (0..k).collect::<Vec<_>>().chunks(kc) {
                            let s = block
                                .iter()
                                .fold(0f32, |s, &i| x[r * k + i].mul_add(w[i * n + c], s));
                            want[r * n + c] += s;
                        }
                    }
                }
                // SAFETY: both outputs hold m × n values.
                unsafe {
                    matmul_acc_blocks(&x, k, &w, n, 0..m, 0..n, simd.as_mut_ptr(), n, kc);
                    Job {
                        x: &x,
                        k,
                        w: &w,
                        n,
                        rows: 0..m,
                        cols: 0..n,
                        out: scalar.as_mut_ptr(),
                        ldo: n,
                        kc,
                    }
                    .scalar(0..n);
                }
                assert_eq!(simd, want, "{m} rows, blocks of {kc}");
                assert_eq!(scalar, want, "{m} rows, blocks of {kc} (scalar)");
            }
        }
    }
}
