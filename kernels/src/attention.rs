//! Attention over KV caches kept in host memory, for decode steps and short prompt chunks on
//! the CPU: every sequence of a batch in one parallel pass (each with its own cache and
//! length), scores, softmax and the weighted sum of values per query row, without a score
//! matrix, mask, repeated key/value heads or any per-sequence tensor operation. Grouped-query
//! attention is native: query head `h` reads key/value head `h / (heads / kv_heads)`. Keys
//! and values are kept in F16 (as llama.cpp keeps them): half the memory, and half the bytes
//! a step reads, which bounds a batched step's attention.
use half::f16;
use half::slice::HalfFloatSliceExt;

/// One sequence's keys and values for one layer: (kv heads, capacity, head dim) each,
/// row-major, in F16 (rounded to nearest); the capacity doubles when the sequence outgrows
/// it.
#[derive(Debug, Clone, Default)]
pub struct HostKv {
    k: Vec<f16>,
    v: Vec<f16>,
    cap: usize,
    heads: usize,
    dim: usize,
}

/// Positions a cache holds at first.
const INITIAL: usize = 256;

impl HostKv {
    /// An empty cache of `heads` key/value heads of width `dim`.
    pub fn new(heads: usize, dim: usize) -> Self {
        Self {
            heads,
            dim,
            ..Self::default()
        }
    }

    /// Positions it has room for.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes its buffers hold.
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f16>()
    }

    fn grow(&mut self, need: usize) {
        if need <= self.cap {
            return;
        }
        let cap = need.max(INITIAL).next_power_of_two();
        let (h, d, old) = (self.heads, self.dim, self.cap);
        let regrow = |buf: &mut Vec<f16>| {
            let mut new = vec![f16::ZERO; h * cap * d];
            for head in 0..h {
                new[head * cap * d..][..old * d].copy_from_slice(&buf[head * old * d..][..old * d]);
            }
            *buf = new;
        };
        regrow(&mut self.k);
        regrow(&mut self.v);
        self.cap = cap;
    }

    /// Writes the keys and values of `seq` new positions from `pos` on: `k` and `v` are
    /// (seq, heads, dim) row-major, as projections produce them.
    pub fn write(&mut self, pos: usize, seq: usize, k: &[f32], v: &[f32]) {
        let (h, d) = (self.heads, self.dim);
        assert_eq!(k.len(), seq * h * d, "keys are not (seq, heads, dim)");
        assert_eq!(v.len(), seq * h * d, "values are not (seq, heads, dim)");
        self.grow(pos + seq);
        let cap = self.cap;
        for i in 0..seq {
            for head in 0..h {
                let at = (head * cap + pos + i) * d;
                let from = (i * h + head) * d;
                self.k[at..at + d].convert_from_f32_slice(&k[from..from + d]);
                self.v[at..at + d].convert_from_f32_slice(&v[from..from + d]);
            }
        }
    }

    /// Positions `0..len` of the keys and of the values, each (heads, len, dim) row-major (for
    /// the matrix-multiplication path of long prompts).
    pub fn read(&self, len: usize) -> (Vec<f32>, Vec<f32>) {
        assert!(
            len <= self.cap,
            "{len} positions of a cache of {}",
            self.cap
        );
        let (h, d, cap) = (self.heads, self.dim, self.cap);
        let take = |buf: &[f16]| -> Vec<f32> {
            let mut out = vec![0f32; h * len * d];
            for head in 0..h {
                buf[head * cap * d..][..len * d]
                    .convert_to_f32_slice(&mut out[head * len * d..][..len * d]);
            }
            out
        };
        (take(&self.k), take(&self.v))
    }
}

/// The new positions of one sequence.
pub struct Query<'a> {
    /// Queries, (heads, seq, dim) row-major.
    pub q: &'a [f32],
    /// Its cache, holding the new positions already.
    pub kv: &'a HostKv,
    /// Positions cached, the new ones included (the new ones are the last `seq`).
    pub len: usize,
}

/// The dot product of two equally long F32 slices, in eight independent lanes so that the
/// compiler vectorises it without reassociating.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Causal attention of `seq` new positions for every sequence of `batch` (`heads` query
/// heads of width `dim`, scores scaled by `scale`): `out` receives each sequence's
/// (heads, seq, dim) in turn.
pub fn attend(
    batch: &[Query<'_>],
    heads: usize,
    seq: usize,
    dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    attend_window(batch, heads, seq, dim, scale, None, out)
}

/// [`attend`] where each position sees at most the `window` latest positions, itself
/// included (sliding-window attention); `None` sees them all.
pub fn attend_window(
    batch: &[Query<'_>],
    heads: usize,
    seq: usize,
    dim: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    assert!(window != Some(0), "a window of no positions");
    assert_eq!(
        out.len(),
        batch.len() * heads * seq * dim,
        "out is not batch × heads × seq × dim"
    );
    for b in batch {
        assert_eq!(
            b.q.len(),
            heads * seq * dim,
            "queries are not (heads, seq, dim)"
        );
        assert!(
            b.len >= seq && b.len <= b.kv.cap,
            "{} positions cached",
            b.len
        );
        assert_eq!(b.kv.dim, dim, "head widths differ");
        assert!(
            b.kv.heads > 0 && heads.is_multiple_of(b.kv.heads),
            "heads do not group"
        );
    }
    let kvh = batch.first().map_or(1, |b| b.kv.heads);
    assert!(
        batch.iter().all(|b| b.kv.heads == kvh),
        "sequences with different key/value heads"
    );
    let rep = heads / kvh;
    // A work item is one new position of one sequence and the query heads it computes: the
    // `rep` heads that read one key/value head (each key and value read once for all of
    // them), or, where that leaves too few items to share among the pool's threads (one
    // sequence's decode step), a single head. A head's arithmetic is the same either way, so
    // a position gets the same result in any batch.
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    let per_item = if batch.len() * kvh * seq >= 4 * threads {
        rep
    } else {
        1
    };
    let groups = heads / per_item;
    let out_ptr = out.as_mut_ptr() as usize;
    let work = |item: usize, scratch: &mut Scratch| {
        let s = item / (groups * seq);
        let r = item % (groups * seq);
        let (group, i) = (r / seq, r % seq);
        let Query { q, kv, len } = &batch[s];
        let first_head = group * per_item;
        let kv_head = first_head / rep;
        // Causal: new position i sees the cache up to len - seq + i (and, in a window, the
        // `window` positions that end there).
        let visible = len - seq + i + 1;
        let first = window.map_or(0, |w| visible.saturating_sub(w));
        let keys = &kv.k[(kv_head * kv.cap + first) * dim..(kv_head * kv.cap + visible) * dim];
        let values = &kv.v[(kv_head * kv.cap + first) * dim..(kv_head * kv.cap + visible) * dim];
        let row = |k: usize| &q[((first_head + k) * seq + i) * dim..][..dim];
        // SAFETY: rows (s, h, i) for the item's heads are written by this item only, each
        // once, inside `out` (batch × heads × seq × dim).
        let out = |k: usize| unsafe {
            std::slice::from_raw_parts_mut(
                (out_ptr as *mut f32).add(((s * heads + first_head + k) * seq + i) * dim),
                dim,
            )
        };
        attend_rows(per_item, row, keys, values, dim, scale, scratch, out);
    };
    let items = batch.len() * groups * seq;
    let cost: usize = batch.iter().map(|b| b.len).sum::<usize>() * heads * seq * dim;
    // Below ~64k multiply-adds the pool's start-up costs more than a second core saves.
    if cost < 1 << 16 {
        let mut scratch = Scratch::default();
        (0..items).for_each(|i| work(i, &mut scratch));
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items, |range| {
            let mut scratch = Scratch::default();
            range.for_each(|i| work(i, &mut scratch));
        });
    }
}

/// A work item's buffers: scores, and the cache in F32 where the kernels do not read F16.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// Attention of `rows` query rows (`row(k)`, each `dim` wide) over the same keys and values
/// (positions in order, each `dim` wide), into `out(k)`: scores, softmax, weighted sum. Each
/// row's result depends on that row, the keys and the values only.
#[allow(clippy::too_many_arguments)]
fn attend_rows<'a>(
    rows: usize,
    row: impl Fn(usize) -> &'a [f32],
    keys: &[f16],
    values: &[f16],
    dim: usize,
    scale: f32,
    scratch: &mut Scratch,
    out: impl Fn(usize) -> &'a mut [f32],
) {
    let n = keys.len() / dim;
    let Scratch {
        scores,
        keys: keys32,
        values: values32,
    } = scratch;
    scores.clear();
    scores.resize(rows * n, 0.0);
    #[cfg(target_arch = "x86_64")]
    let wide = crate::features::avx2() && dim.is_multiple_of(8);
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    if !wide {
        keys32.resize(keys.len(), 0.0);
        keys.convert_to_f32_slice(keys32);
        values32.resize(values.len(), 0.0);
        values.convert_to_f32_slice(values32);
    }
    for h in 0..rows {
        let row = row(h);
        let s = &mut scores[h * n..][..n];
        if wide {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 and FMA; dim is a multiple of 8.
            unsafe {
                avx2::scores(row, keys, dim, s)
            };
        } else {
            for (x, key) in s.iter_mut().zip(keys32.chunks_exact(dim)) {
                *x = dot(row, key);
            }
        }
        let mut max = f32::NEG_INFINITY;
        for x in s.iter_mut() {
            *x *= scale;
            max = max.max(*x);
        }
        for x in s.iter_mut() {
            *x -= max;
        }
        crate::math::exp_in_place(s);
        let sum: f32 = s.iter().sum();
        let o = out(h);
        if wide {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            unsafe {
                avx2::weighted(s, values, dim, o)
            };
        } else {
            o.fill(0.0);
            for (p, value) in s.iter().zip(values32.chunks_exact(dim)) {
                for (o, x) in o.iter_mut().zip(value) {
                    *o += p * x;
                }
            }
        }
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

/// The AVX2 + FMA forms of the two passes over the cache (for widths that are multiples of 8),
/// reading the F16 cache with F16C.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    /// Eight F16 values at `p` as F32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f16) -> __m256 {
        // SAFETY: the caller points at eight readable values.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
    }

    /// Lane k: the sum of `v[k]`'s lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum8(v: [__m256; 8]) -> __m256 {
        let a = _mm256_hadd_ps(v[0], v[1]);
        let b = _mm256_hadd_ps(v[2], v[3]);
        let c = _mm256_hadd_ps(v[4], v[5]);
        let d = _mm256_hadd_ps(v[6], v[7]);
        let lo = _mm256_hadd_ps(a, b);
        let hi = _mm256_hadd_ps(c, d);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(lo, hi),
            _mm256_permute2f128_ps::<0x31>(lo, hi),
        )
    }

    /// `out[j] = row · key j` for the keys in `keys` (`dim` wide each, dim a multiple of 8):
    /// eight keys at a time, one register of sums each, then one at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores(row: &[f32], keys: &[f16], dim: usize, out: &mut [f32]) {
        let n = keys.len() / dim;
        debug_assert!(out.len() == n && row.len() == dim && dim.is_multiple_of(8));
        let q = row.as_ptr();
        let k = keys.as_ptr();
        let mut j = 0;
        while j + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..dim).step_by(8) {
                // SAFETY: c + 8 ≤ dim, and keys j..j + 8 are inside `keys`.
                unsafe {
                    let x = _mm256_loadu_ps(q.add(c));
                    for (l, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(x, load(k.add((j + l) * dim + c)), *a);
                    }
                }
            }
            // SAFETY: j + 8 ≤ n = out.len().
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j), sum8(acc)) };
            j += 8;
        }
        while j < n {
            let mut a = _mm256_setzero_ps();
            for c in (0..dim).step_by(8) {
                // SAFETY: as above, for key j.
                unsafe {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), load(k.add(j * dim + c)), a);
                }
            }
            let lo = _mm256_castps256_ps128(a);
            let hi = _mm256_extractf128_ps::<1>(a);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            out[j] = _mm_cvtss_f32(s);
            j += 1;
        }
    }

    /// `out = Σ_j p[j] · value j` (`dim` wide, a multiple of 8), 64 columns at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted(p: &[f32], values: &[f16], dim: usize, out: &mut [f32]) {
        debug_assert!(values.len() == p.len() * dim && out.len() == dim);
        let mut c = 0;
        while c < dim {
            let w = (dim - c).min(64);
            // SAFETY: columns c..c + w of every value and of `out` exist.
            unsafe {
                match w / 8 {
                    8 => columns::<8>(p, values, dim, c, out),
                    7 => columns::<7>(p, values, dim, c, out),
                    6 => columns::<6>(p, values, dim, c, out),
                    5 => columns::<5>(p, values, dim, c, out),
                    4 => columns::<4>(p, values, dim, c, out),
                    3 => columns::<3>(p, values, dim, c, out),
                    2 => columns::<2>(p, values, dim, c, out),
                    _ => columns::<1>(p, values, dim, c, out),
                }
            }
            c += w;
        }
    }

    /// Columns `c..c + 8R` of [`weighted`], held in R registers over all the values.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn columns<const R: usize>(
        p: &[f32],
        values: &[f16],
        dim: usize,
        c: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); R];
        let v = values.as_ptr();
        for (j, &pj) in p.iter().enumerate() {
            let b = _mm256_set1_ps(pj);
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: the caller's columns of value j.
                *a = _mm256_fmadd_ps(b, unsafe { load(v.add(j * dim + c + 8 * r)) }, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: the caller's columns of `out`.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * r), *a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn float(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.float()).collect()
        }
    }

    /// `xs` rounded to F16 and back.
    fn halves(xs: Vec<f32>) -> Vec<f32> {
        xs.into_iter().map(|x| f16::from_f32(x).to_f32()).collect()
    }

    /// Textbook attention in f64: all keys (seq, kv_heads, dim) at once, masked softmax
    /// (causal, and outside the window when there is one).
    /// `shape`: (heads, kv heads, new positions, cached length, dim).
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (heads, kvh, seq, len, dim): (usize, usize, usize, usize, usize),
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32> {
        let mut out = vec![0f32; heads * seq * dim];
        for h in 0..heads {
            let g = h / (heads / kvh);
            for i in 0..seq {
                let qrow = &q[(h * seq + i) * dim..][..dim];
                let visible = len - seq + i + 1;
                let seen = |j: usize| window.is_none_or(|w| j + w >= visible);
                let s: Vec<f64> = (0..visible)
                    .map(|j| {
                        if !seen(j) {
                            return f64::NEG_INFINITY;
                        }
                        let krow = &k[(j * kvh + g) * dim..][..dim];
                        qrow.iter()
                            .zip(krow)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for d in 0..dim {
                    let x: f64 = (0..visible)
                        .map(|j| e[j] * v[(j * kvh + g) * dim + d] as f64)
                        .sum();
                    out[(h * seq + i) * dim + d] = (x / total) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn batches_of_sequences_match_textbook_attention() {
        let mut rng = Lcg(1);
        // (heads, kv heads, new positions, cached lengths per sequence, dim): decode steps of
        // sequences of different lengths, prompt chunks, odd widths, one past a regrowth.
        for (heads, kvh, seq, lens, dim) in [
            (9, 3, 1, vec![1, 37, 300], 64),
            (4, 4, 5, vec![12], 20),
            (2, 1, 3, vec![3, 7], 7),
            (8, 2, 1, vec![257, 600], 128),
        ] {
            let scale = 1.0 / (dim as f32).sqrt();
            let mut caches = Vec::new();
            let mut all = Vec::new();
            for &len in &lens {
                // Written in two parts (the prompt, then the new positions) as the decoder does;
                // the values are F16 values already (the cache keeps F16), so that the textbook
                // reference reads what the kernel reads.
                let k = halves(rng.vec(len * kvh * dim));
                let v = halves(rng.vec(len * kvh * dim));
                let mut kv = HostKv::new(kvh, dim);
                let split = (len - seq) * kvh * dim;
                if len > seq {
                    kv.write(0, len - seq, &k[..split], &v[..split]);
                }
                kv.write(len - seq, seq, &k[split..], &v[split..]);
                let (rk, rv) = kv.read(len);
                assert_eq!(rk.len(), kvh * len * dim);
                assert_eq!(rk[..dim], k[..dim]); // head 0, position 0
                assert_eq!(
                    rv[(len - 1) * dim..][..dim],
                    v[(len - 1) * kvh * dim..][..dim]
                );
                caches.push(kv);
                all.push((k, v, rng.vec(heads * seq * dim)));
            }
            let batch: Vec<Query> = caches
                .iter()
                .zip(&all)
                .zip(&lens)
                .map(|((kv, (_, _, q)), &len)| Query { q, kv, len })
                .collect();
            // All positions, and sliding windows shorter and longer than the sequences.
            for window in [None, Some(1), Some(4), Some(40), Some(1000)] {
                let mut out = vec![f32::NAN; lens.len() * heads * seq * dim];
                match window {
                    None => attend(&batch, heads, seq, dim, scale, &mut out),
                    w => attend_window(&batch, heads, seq, dim, scale, w, &mut out),
                }
                for (b, ((k, v, q), &len)) in all.iter().zip(&lens).enumerate() {
                    let want = reference(q, k, v, (heads, kvh, seq, len, dim), scale, window);
                    let got = &out[b * heads * seq * dim..][..heads * seq * dim];
                    let diff = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        diff < 1e-5,
                        "{heads}/{kvh} heads, seq {seq}, len {len}, dim {dim}, \
                         window {window:?}: {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_sequence_gets_the_same_result_alone_and_in_a_batch() {
        // Alone, a decode step splits its work by query head; in a batch of eight, by
        // key/value head (each item computing three query heads): the bits must not differ.
        let mut rng = Lcg(5);
        let (heads, kvh, dim) = (9, 3, 64);
        let scale = 0.125;
        let lens = [40, 300, 7, 129, 64, 1, 250, 90];
        let caches: Vec<HostKv> = lens
            .iter()
            .map(|&len| {
                let mut kv = HostKv::new(kvh, dim);
                kv.write(0, len, &rng.vec(len * kvh * dim), &rng.vec(len * kvh * dim));
                kv
            })
            .collect();
        let qs: Vec<Vec<f32>> = lens.iter().map(|_| rng.vec(heads * dim)).collect();
        let batch: Vec<Query> = caches
            .iter()
            .zip(&qs)
            .zip(&lens)
            .map(|((kv, q), &len)| Query { q, kv, len })
            .collect();
        let mut all = vec![0f32; lens.len() * heads * dim];
        attend(&batch, heads, 1, dim, scale, &mut all);
        for (b, query) in batch.iter().enumerate() {
            let mut alone = vec![0f32; heads * dim];
            attend(
                std::slice::from_ref(query),
                heads,
                1,
                dim,
                scale,
                &mut alone,
            );
            let together = &all[b * heads * dim..][..heads * dim];
            assert!(
                alone
                    .iter()
                    .zip(together)
                    .all(|(a, t)| a.to_bits() == t.to_bits()),
                "sequence {b} (length {})",
                lens[b]
            );
        }
    }

    #[test]
    fn a_position_gets_the_same_result_in_a_chunk_and_in_a_decode_step() {
        // A prompt chunk's positions (one work item per key/value head) against each position
        // read alone as a decode step (one item per query head), bit for bit.
        let mut rng = Lcg(9);
        let (heads, kvh, dim, seq, len) = (9, 3, 64, 48, 110);
        let mut kv = HostKv::new(kvh, dim);
        kv.write(0, len, &rng.vec(len * kvh * dim), &rng.vec(len * kvh * dim));
        let q = rng.vec(heads * seq * dim);
        let mut chunk = vec![0f32; heads * seq * dim];
        let query = Query {
            q: &q,
            kv: &kv,
            len,
        };
        attend(
            std::slice::from_ref(&query),
            heads,
            seq,
            dim,
            0.125,
            &mut chunk,
        );
        for i in 0..seq {
            let row: Vec<f32> = (0..heads)
                .flat_map(|h| q[(h * seq + i) * dim..][..dim].iter().copied())
                .collect();
            let mut step = vec![0f32; heads * dim];
            let query = Query {
                q: &row,
                kv: &kv,
                len: len - seq + i + 1,
            };
            attend(
                std::slice::from_ref(&query),
                heads,
                1,
                dim,
                0.125,
                &mut step,
            );
            for h in 0..heads {
                let a = &chunk[(h * seq + i) * dim..][..dim];
                let b = &step[h * dim..][..dim];
                assert!(
                    a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "position {i}, head {h}"
                );
            }
        }
    }

    #[test]
    fn a_copy_is_independent_and_growth_keeps_the_contents() {
        let mut a = HostKv::new(2, 4);
        a.write(0, 1, &[1.0; 8], &[2.0; 8]);
        let mut b = a.clone();
        b.write(1, 1, &[3.0; 8], &[4.0; 8]);
        assert_eq!(a.capacity(), INITIAL);
        for pos in 2..INITIAL + 5 {
            a.write(pos, 1, &[pos as f32; 8], &[0.0; 8]);
        }
        assert_eq!(a.capacity(), 2 * INITIAL);
        let (k, _) = a.read(INITIAL + 5);
        assert_eq!(k[..4], [1.0; 4]);
        assert_eq!(k[4..8], [0.0; 4]); // position 1 was never written in `a`
        assert_eq!(k[(INITIAL + 4) * 4], (INITIAL + 4) as f32);
        let (kb, vb) = b.read(2);
        assert_eq!((kb[4], vb[4]), (3.0, 4.0));
    }
}
