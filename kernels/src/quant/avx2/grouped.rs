//! The kernels of the grouped layouts ([`crate::quant::grouped`]): per block column, the
//! group's quants are loaded (and unpacked) once; for each activation row, four of its bytes
//! broadcast to every 32-bit lane meet the same four values of the eight weight rows, so one
//! register collects the eight rows' integer sums, converted and scaled once for the eight.
use std::arch::x86_64::*;

use crate::quant::Panel;
use crate::quant::grouped::{Q4Group, Q8Group};

/// Four activation bytes at `p`, in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn broadcast(p: *const i8) -> __m256i {
    // SAFETY: the caller points at four readable bytes.
    _mm256_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
}

/// Eight f16 values as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn halves8(h: &[half::f16; 8]) -> __m256 {
    // SAFETY: eight f16 are 16 bytes.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr() as *const __m128i) })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store(v: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: out holds eight f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// Σ over the four-byte products of unsigned `u[k]` and signed `s[k]`, per 32-bit lane, with
/// `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn sums_vnni<const N: usize>(u: [__m256i; N], s: [__m256i; N]) -> __m256i {
    let mut t = _mm256_setzero_si256();
    for k in 0..N {
        t = _mm256_dpbusd_epi32(t, u[k], s[k]);
    }
    t
}

/// The same with AVX2 for 4-bit `u` (at most 15): eight pair sums of at most 2·15·127 add up
/// to 30,480 at most, inside i16, before one widening.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sums_avx2_small<const N: usize>(u: [__m256i; N], s: [__m256i; N]) -> __m256i {
    let mut t = _mm256_setzero_si256();
    for k in 0..N {
        t = _mm256_add_epi16(t, _mm256_maddubs_epi16(u[k], s[k]));
    }
    _mm256_madd_epi16(t, _mm256_set1_epi16(1))
}

/// The same with AVX2 for 8-bit `u` (at most 128): each pair sum (at most 2·128·127) is
/// widened before it is added.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sums_avx2_wide<const N: usize>(u: [__m256i; N], s: [__m256i; N]) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let mut t = _mm256_setzero_si256();
    for k in 0..N {
        t = _mm256_add_epi32(t, _mm256_madd_epi16(_mm256_maddubs_epi16(u[k], s[k]), ones));
    }
    t
}

macro_rules! grouped_kernels {
    ($features:literal, $small:ident, $wide:ident) => {
        /// Q4 groups against `R` activation rows: `[r][lane]`. Per block and row:
        /// `d_w·d_x·Σq·q_x + m_w·s_x` for the eight rows in one register.
        ///
        /// # Safety
        /// The CPU has the features; every row of `x` has `g.len()` blocks.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q4<const R: usize>(g: &[Q4Group], x: &Panel<R>) -> [[f32; 8]; R] {
            let mut acc = [_mm256_setzero_ps(); R];
            let nibble = _mm256_set1_epi8(0x0F);
            for (i, b) in g.iter().enumerate() {
                // SAFETY: a group is 32-byte aligned and its quants are 4 × 32 bytes.
                let v: [__m256i; 4] = std::array::from_fn(|k| unsafe {
                    _mm256_load_si256(b.qs[k].as_ptr() as *const __m256i)
                });
                let lo = v.map(|v| _mm256_and_si256(v, nibble));
                let hi = v.map(|v| _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble));
                let dw = halves8(&b.d);
                let mw = halves8(&b.m);
                // SAFETY: x's rows and scales have g.len() blocks (the caller's promise).
                let (d, s) = unsafe { (x.d.get_unchecked(i), x.s.get_unchecked(i)) };
                for r in 0..R {
                    // SAFETY: as above; a Q8_1 block has 32 quants, 4k + 4 and 20 + 4k are
                    // within.
                    let sums = unsafe {
                        let q = x.q[r].get_unchecked(i).qs.as_ptr();
                        let xl: [__m256i; 4] = std::array::from_fn(|k| broadcast(q.add(4 * k)));
                        let xh: [__m256i; 4] =
                            std::array::from_fn(|k| broadcast(q.add(16 + 4 * k)));
                        _mm256_add_epi32($small(lo, xl), $small(hi, xh))
                    };
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(d[r]));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[r]);
                    acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(s[r]), acc[r]);
                }
            }
            acc.map(|a| store(a))
        }

        /// Q8 groups against `R` activation rows: `[r][lane]`, as |w| × (x with w's sign).
        ///
        /// # Safety
        /// As for `q4`.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q8<const R: usize>(g: &[Q8Group], x: &Panel<R>) -> [[f32; 8]; R] {
            let mut acc = [_mm256_setzero_ps(); R];
            for (i, b) in g.iter().enumerate() {
                // SAFETY: a group's quants are 8 × 32 bytes.
                let w: [__m256i; 8] = std::array::from_fn(|k| unsafe {
                    _mm256_loadu_si256(b.qs[k].as_ptr() as *const __m256i)
                });
                let u = w.map(|w| _mm256_sign_epi8(w, w));
                let dw = halves8(&b.d);
                // SAFETY: as in `q4`.
                let d = unsafe { x.d.get_unchecked(i) };
                for r in 0..R {
                    // SAFETY: as in `q4`; 4k + 4 ≤ 32.
                    let sums = unsafe {
                        let q = x.q[r].get_unchecked(i).qs.as_ptr();
                        let sx: [__m256i; 8] = std::array::from_fn(|k| {
                            _mm256_sign_epi8(broadcast(q.add(4 * k)), w[k])
                        });
                        $wide(u, sx)
                    };
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(d[r]));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[r]);
                }
            }
            acc.map(|a| store(a))
        }
    };
}

pub(crate) mod avx2 {
    use super::*;
    grouped_kernels!("avx2,fma,f16c", sums_avx2_small, sums_avx2_wide);
}

pub(crate) mod vnni {
    use super::*;
    grouped_kernels!(
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
        sums_vnni,
        sums_vnni
    );
}
