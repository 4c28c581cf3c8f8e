//! The AVX2 + FMA + F16C kernels of the block formats (x86-64; chosen at run time).
use std::arch::x86_64::*;

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

/// The two f16 values at `p`, as f32 lanes 0 and 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves(p: *const u8) -> __m128 {
    // SAFETY: the caller points at 4 readable bytes.
    _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
        (p as *const i32).read_unaligned()
    }))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(p: *const i8) -> __m256i {
    // SAFETY: the caller points at 32 readable bytes.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Σ u·s over 32 unsigned × signed byte pairs, as 8 f32 partial sums (the pairs must not
/// overflow i16 when two are added: |u·s| ≤ 16383).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn products(u: __m256i, s: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// 32 unsigned 4-bit values packed like Q4_1 (low nibbles, then high ones).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: qs is 16 bytes.
    let raw = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// (d, m) in lanes 0 and 1 for a block whose first f16 is d and whose minimum is
/// `offset · d`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_offset(p: *const u8, offset: f32) -> __m128 {
    // SAFETY: every block is longer than 4 bytes; the second f16 read is unused.
    let h = unsafe { halves(p) };
    _mm_mul_ps(
        _mm_shuffle_ps::<0>(h, h),
        _mm_setr_ps(1.0, offset, 0.0, 0.0),
    )
}

/// `dot` and `dot4` for a block format of unsigned quants (`value = d·q + m`), given in
/// the calling module as `scale_min(&block) -> __m128` ((d, m) in lanes 0 and 1) and
/// `quants(&block) -> __m256i` (the 32 values as bytes, at most 31).
macro_rules! unsigned_kernels {
    ($block:ty) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn dot(w: &[$block], x: &[BlockQ8_1]) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let mut mins = _mm_setzero_ps();
            for (a, b) in w.iter().zip(x) {
                // SAFETY: the blocks are whole; Q8_1 starts with two f16 values.
                unsafe {
                    // (d_w·d_x, m_w·s_x) in lanes 0 and 1.
                    let ds = _mm_mul_ps(scale_min(a), halves(b as *const _ as *const u8));
                    mins = _mm_add_ps(mins, ds);
                    // u8 (at most 31) × i8 pairs fit i16.
                    let p = products(quants(a), load32(b.qs.as_ptr()));
                    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), p, acc);
                }
            }
            // Lane 1 of `mins` holds Σ m_w·s_x (lane 0 collected the d products, unused).
            hsum(acc) + _mm_cvtss_f32(_mm_movehdup_ps(mins))
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn dot4(w: &[$block], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut mins = [_mm_setzero_ps(); 4];
            for (i, a) in w.iter().enumerate() {
                // SAFETY: as in `dot`; every row of `x` has w.len() blocks.
                unsafe {
                    let sw = scale_min(a);
                    let qw = quants(a);
                    for r in 0..4 {
                        let b = x[r].get_unchecked(i);
                        let ds = _mm_mul_ps(sw, halves(b as *const _ as *const u8));
                        mins[r] = _mm_add_ps(mins[r], ds);
                        let p = products(qw, load32(b.qs.as_ptr()));
                        acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), p, acc[r]);
                    }
                }
            }
            std::array::from_fn(|r| hsum(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[r])))
        }
    };
}

pub(super) mod q4_1 {
    use super::*;
    use crate::quant::{BlockQ4_1, BlockQ8_1};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale_min(a: &BlockQ4_1) -> __m128 {
        // SAFETY: the block starts with d and m.
        unsafe { halves(a as *const _ as *const u8) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quants(a: &BlockQ4_1) -> __m256i {
        nibbles(&a.qs)
    }

    unsigned_kernels!(BlockQ4_1);
}

pub(super) mod q4_0 {
    use super::*;
    use crate::quant::{BlockQ4_0, BlockQ8_1};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale_min(a: &BlockQ4_0) -> __m128 {
        // SAFETY: the block starts with d.
        unsafe { scale_offset(a as *const _ as *const u8, -8.0) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quants(a: &BlockQ4_0) -> __m256i {
        nibbles(&a.qs)
    }

    unsigned_kernels!(BlockQ4_0);
}

pub(super) mod q5_0 {
    use super::*;
    use crate::quant::{BlockQ5_0, BlockQ8_1};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale_min(a: &BlockQ5_0) -> __m128 {
        // SAFETY: the block starts with d.
        unsafe { scale_offset(a as *const _ as *const u8, -16.0) }
    }

    /// The low nibbles with the fifth bits of `qh` as 0x10 (bit j to byte j).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quants(a: &BlockQ5_0) -> __m256i {
        let qh = i32::from_le_bytes(a.qh);
        // Byte j of the result gets byte j / 8 of qh, then only bit j % 8 of it is kept.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh),
            _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_or_si256(
            nibbles(&a.qs),
            _mm256_and_si256(set, _mm256_set1_epi8(0x10)),
        )
    }

    unsigned_kernels!(BlockQ5_0);
}

pub(super) mod q8_0 {
    use super::*;
    use crate::quant::{BlockQ8_0, BlockQ8_1};

    /// The scale of a Q8_0 block (its first f16) as an f32 lane 0.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale(a: &BlockQ8_0) -> __m128 {
        // SAFETY: a block is 34 bytes; the second f16 read is the first two quant bytes
        // (unused).
        unsafe { halves(a as *const _ as *const u8) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot(w: &[BlockQ8_0], x: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (a, b) in w.iter().zip(x) {
            // SAFETY: the blocks hold 32 quant bytes each.
            unsafe {
                let d = _mm_mul_ps(scale(a), halves(b as *const _ as *const u8));
                let qa = load32(a.qs.as_ptr());
                let qb = load32(b.qs.as_ptr());
                // |a| × (b with a's sign): an unsigned × signed product with a·b's value.
                let p = products(_mm256_sign_epi8(qa, qa), _mm256_sign_epi8(qb, qa));
                acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), p, acc);
            }
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot4(w: &[BlockQ8_0], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (i, a) in w.iter().enumerate() {
            // SAFETY: as in `dot`; every row of `x` has w.len() blocks.
            unsafe {
                let sw = scale(a);
                let qa = load32(a.qs.as_ptr());
                let ua = _mm256_sign_epi8(qa, qa);
                for r in 0..4 {
                    let b = x[r].get_unchecked(i);
                    let d = _mm_mul_ps(sw, halves(b as *const _ as *const u8));
                    let p = products(ua, _mm256_sign_epi8(load32(b.qs.as_ptr()), qa));
                    acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), p, acc[r]);
                }
            }
        }
        std::array::from_fn(|r| hsum(acc[r]))
    }
}
