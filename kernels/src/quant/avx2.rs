//! The AVX2 + FMA + F16C kernels of the block formats (x86-64; chosen at run time), each
//! compiled twice: `avx2`, and `vnni`, where AVX-512 VNNI's `vpdpbusd` (on 256-bit
//! registers) sums the byte products in one instruction instead of two.
use std::arch::x86_64::*;

pub(super) mod grouped;

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

/// [`products`] in one VNNI instruction (no i16 intermediate).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn products_vnni(u: __m256i, s: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s))
}

/// The four lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes(v: __m128) -> [f32; 4] {
    let mut out = [0f32; 4];
    // SAFETY: out holds four f32.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
    out
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

/// [`crate::quant::quantize_q8_1`], block by block: the maximum of |x| ignoring NaN (as
/// `f32::max` does), then `x · (1/d)` rounded half away from zero (`+ ±0.5`, truncated), NaN
/// to 0.
///
/// # Safety
/// `x` holds `out.len()` blocks of 32 values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_1(x: &[f32], out: &mut [crate::quant::BlockQ8_1]) {
    let sign = _mm256_set1_ps(-0.0);
    let half = _mm256_set1_ps(0.5);
    for (i, block) in out.iter_mut().enumerate() {
        // SAFETY: block i's 32 values are inside x.
        let v: [__m256; 4] =
            std::array::from_fn(|k| unsafe { _mm256_loadu_ps(x.as_ptr().add(i * 32 + 8 * k)) });
        // max(|v|, acc) keeps acc where v is NaN, like f32::max.
        let mut m = _mm256_setzero_ps();
        for v in v {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let amax = _mm_cvtss_f32(m);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let q = v.map(|v| {
            let x = _mm256_mul_ps(v, id);
            let y = _mm256_add_ps(x, _mm256_or_ps(_mm256_and_ps(x, sign), half));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(y, y));
            _mm256_andnot_si256(nan, _mm256_cvttps_epi32(y))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256::<1>(sum),
        );
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
        let sum = _mm_cvtsi128_si32(sum);
        // i32 → i16 → i8 packs per 128-bit lane; the permutation restores the order.
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: qs is 32 bytes.
        unsafe { _mm256_storeu_si256(block.qs.as_mut_ptr() as *mut __m256i, packed) };
        block.d = half::f16::from_f32(d);
        block.s = half::f16::from_f32(d * sum as f32);
    }
}

/// `dot` and `dotn` for a block format of unsigned quants (`value = d·q + m`), given in
/// the calling module as `scale_min(&block) -> __m128` ((d, m) in lanes 0 and 1) and
/// `quants(&block) -> __m256i` (the 32 values as bytes, at most 31), as modules `avx2` and
/// `vnni`.
macro_rules! unsigned_kernels {
    ($block:ty) => {
        pub(crate) mod avx2 {
            use super::*;
            unsigned_kernels!($block, "avx2,fma,f16c", products);
        }
        pub(crate) mod vnni {
            use super::*;
            unsigned_kernels!(
                $block,
                "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
                products_vnni
            );
        }
    };
    ($block:ty, $features:literal, $products:ident) => {
        #[target_feature(enable = $features)]
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
                    let p = $products(quants(a), load32(b.qs.as_ptr()));
                    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), p, acc);
                }
            }
            // Lane 1 of `mins` holds Σ m_w·s_x (lane 0 collected the d products, unused).
            hsum(acc) + _mm_cvtss_f32(_mm_movehdup_ps(mins))
        }

        /// The weight block is unpacked once for the panel's rows; each row's block scale
        /// is read as an f32 and multiplied in (`(Σ q·q_x · d_x) · d_w`), and the minimum
        /// terms are one 4-lane FMA per block and four rows (`m_w · s_x`).
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn dotn<const R: usize>(w: &[$block], x: &Panel<R>) -> [f32; R] {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut mins = [_mm_setzero_ps(); 2];
            for (i, a) in w.iter().enumerate() {
                // SAFETY: as in `dot`; every row of `x` and its scales have w.len() blocks,
                // and R is 4 or 8.
                unsafe {
                    let sw = scale_min(a);
                    let dw = _mm256_broadcastss_ps(sw);
                    let mw = _mm_shuffle_ps::<0b01_01_01_01>(sw, sw);
                    let s = x.s.get_unchecked(i).as_ptr();
                    for h in 0..R / 4 {
                        mins[h] = _mm_fmadd_ps(mw, _mm_loadu_ps(s.add(4 * h)), mins[h]);
                    }
                    let qw = quants(a);
                    let d = x.d.get_unchecked(i);
                    for r in 0..R {
                        let b = x.q[r].get_unchecked(i);
                        let p = $products(qw, load32(b.qs.as_ptr()));
                        let px = _mm256_mul_ps(p, _mm256_set1_ps(d[r]));
                        acc[r] = _mm256_fmadd_ps(px, dw, acc[r]);
                    }
                }
            }
            let mins = [lanes(mins[0]), lanes(mins[1])];
            std::array::from_fn(|r| hsum(acc[r]) + mins[r / 4][r % 4])
        }
    };
}

pub(super) mod q4_1 {
    use super::*;
    use crate::quant::{BlockQ4_1, BlockQ8_1, Panel};

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
    use crate::quant::{BlockQ4_0, BlockQ8_1, Panel};

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
    use crate::quant::{BlockQ5_0, BlockQ8_1, Panel};

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
    use crate::quant::{BlockQ8_0, BlockQ8_1, Panel};

    /// The scale of a Q8_0 block (its first f16) as an f32 lane 0.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale(a: &BlockQ8_0) -> __m128 {
        // SAFETY: a block is 34 bytes; the second f16 read is the first two quant bytes
        // (unused).
        unsafe { halves(a as *const _ as *const u8) }
    }

    macro_rules! q8_0_kernels {
        ($features:literal, $products:ident) => {
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn dot(w: &[BlockQ8_0], x: &[BlockQ8_1]) -> f32 {
                let mut acc = _mm256_setzero_ps();
                for (a, b) in w.iter().zip(x) {
                    // SAFETY: the blocks hold 32 quant bytes each.
                    unsafe {
                        let d = _mm_mul_ps(scale(a), halves(b as *const _ as *const u8));
                        let qa = load32(a.qs.as_ptr());
                        let qb = load32(b.qs.as_ptr());
                        // |a| × (b with a's sign): an unsigned × signed product with a·b's
                        // value.
                        let p = $products(_mm256_sign_epi8(qa, qa), _mm256_sign_epi8(qb, qa));
                        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), p, acc);
                    }
                }
                hsum(acc)
            }

            #[target_feature(enable = $features)]
            pub(crate) unsafe fn dotn<const R: usize>(w: &[BlockQ8_0], x: &Panel<R>) -> [f32; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                for (i, a) in w.iter().enumerate() {
                    // SAFETY: as in `dot`; every row of `x` and its scales have w.len()
                    // blocks.
                    unsafe {
                        let dw = _mm256_broadcastss_ps(scale(a));
                        let qa = load32(a.qs.as_ptr());
                        let ua = _mm256_sign_epi8(qa, qa);
                        let d = x.d.get_unchecked(i);
                        for r in 0..R {
                            let b = x.q[r].get_unchecked(i);
                            let p = $products(ua, _mm256_sign_epi8(load32(b.qs.as_ptr()), qa));
                            let px = _mm256_mul_ps(p, _mm256_set1_ps(d[r]));
                            acc[r] = _mm256_fmadd_ps(px, dw, acc[r]);
                        }
                    }
                }
                std::array::from_fn(|r| hsum(acc[r]))
            }
        };
    }

    pub(crate) mod avx2 {
        use super::*;
        q8_0_kernels!("avx2,fma,f16c", products);
    }

    pub(crate) mod vnni {
        use super::*;
        q8_0_kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512vnni", products_vnni);
    }
}
