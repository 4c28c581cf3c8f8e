//! Element-wise functions written so that the compiler vectorises them: no branches, no libm.
//! Each has one generic body, compiled twice on x86-64 (baseline SSE2 and AVX2+FMA) and picked
//! at run time. Shared by the embedder (GELU, softmax), the chat decoder (SiLU, Gemma's GELU)
//! and the attention kernel (softmax).
const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 in two parts, so that n·ln2 is exact in the high part (Cody and Waite).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2²³: adding and subtracting it rounds to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// e^x, relative error below 2e-7 on [-87, 88]; smaller inputs give ~0, larger saturate.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // n is an integer in [-126, 127]: t holds it in its low mantissa bits. Reading it from
    // there (instead of `n as i32`, whose saturating conversion the compiler does lane by
    // lane) keeps the whole function in vector instructions.
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r to degree 7 on |r| ≤ ln2/2: truncation error < 2e-8.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    p * scale
}

/// erf(x) by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    // tanh(x) = 1 - 2/(e^{2x} + 1), saturating for large |x|.
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

macro_rules! dispatch {
    ($name:ident, $body:ident) => {
        /// Applies the function to every element, in place.
        pub fn $name(xs: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            {
                if crate::features::avx2() {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn wide(xs: &mut [f32]) {
                        $body(xs)
                    }
                    // SAFETY: the CPU has AVX2 and FMA (`features::avx2`).
                    return unsafe { wide(xs) };
                }
            }
            $body(xs)
        }
    };
}

#[inline(always)]
fn exp_body(xs: &mut [f32]) {
    for x in xs {
        *x = exp(*x);
    }
}

#[inline(always)]
fn gelu_erf_body(xs: &mut [f32]) {
    for x in xs {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn gelu_tanh_body(xs: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/π)
    for x in xs {
        let v = *x;
        *x = 0.5 * v * (1.0 + tanh(C * (v + 0.044_715 * v * v * v)));
    }
}

#[inline(always)]
fn silu_body(xs: &mut [f32]) {
    for x in xs {
        *x /= 1.0 + exp(-*x);
    }
}

/// Lanes of the reductions: the partial results are kept in this many accumulators, so that
/// the loops vectorise (one register in AVX2) and do not wait on one another.
const LANES: usize = 8;

#[inline(always)]
fn max_body(xs: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in m.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    m.iter()
        .chain(chunks.remainder())
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// Elements summed in f32 before their sum joins the f64 total.
const SUM_BLOCK: usize = 1024;

#[inline(always)]
fn sum_exp_body(xs: &[f32], shift: f32) -> f64 {
    let mut total = 0f64;
    for block in xs.chunks(SUM_BLOCK) {
        let mut acc = [0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += exp(x - shift);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&x| exp(x - shift)).sum();
        total += f64::from(acc.iter().sum::<f32>() + tail);
    }
    total
}

/// The largest element that is not NaN (NaNs are skipped); −∞ for an empty slice or one of
/// NaNs only.
pub fn max(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::features::avx2() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide(xs: &[f32]) -> f32 {
                max_body(xs)
            }
            // SAFETY: the CPU has AVX2 and FMA (`features::avx2`).
            return unsafe { wide(xs) };
        }
    }
    max_body(xs)
}

/// `Σ e^(x − shift)` over the elements, each block of 1,024 summed in f32 and the blocks in
/// f64. With `shift` the maximum ([`max`]) no term overflows, and `shift + ln(sum)` is the
/// log-sum-exp of the slice.
pub fn sum_exp(xs: &[f32], shift: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::features::avx2() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide(xs: &[f32], shift: f32) -> f64 {
                sum_exp_body(xs, shift)
            }
            // SAFETY: the CPU has AVX2 and FMA (`features::avx2`).
            return unsafe { wide(xs, shift) };
        }
    }
    sum_exp_body(xs, shift)
}

dispatch!(exp_in_place, exp_body);
dispatch!(silu_in_place, silu_body);
dispatch!(gelu_erf_in_place, gelu_erf_body);
dispatch!(gelu_tanh_in_place, gelu_tanh_body);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        let mut xs: Vec<f32> = (-8700..8800).map(|i| i as f32 / 100.0).collect();
        let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        exp_in_place(&mut xs);
        for (got, want) in xs.iter().zip(&want) {
            let rel = ((got - want) / want).abs();
            assert!(rel < 5e-7, "exp: {got} vs {want} ({rel})");
        }
    }

    #[test]
    fn the_exponent_read_from_the_bits_is_the_rounded_one() {
        // `exp` takes n from the mantissa of x·log2(e) + 1.5·2²³; the conversion it replaces
        // gives the same integer, so every result is the same to the bit.
        for i in -1_000_000..1_000_000 {
            let x = i as f32 / 10_000.0;
            let c = x.clamp(-87.0, 88.0);
            let n = (c * LOG2E + ROUND) - ROUND;
            let t = c * LOG2E + ROUND;
            let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
            assert_eq!(ni, n as i32, "{x}");
        }
    }

    #[test]
    fn max_skips_nans_and_matches_a_plain_fold() {
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(max(&[f32::NAN, f32::NAN]), f32::NEG_INFINITY);
        for len in [1, 7, 8, 9, 63, 1000, 49_152] {
            let mut xs: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1013) as f32 / 10.0 - 50.0)
                .collect();
            let want = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), want, "{len}");
            xs[len / 2] = f32::NAN;
            xs[0] = f32::NAN;
            let want = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), want, "{len} with NaNs");
        }
    }

    #[test]
    fn sum_exp_matches_a_sum_in_f64() {
        for len in [0, 1, 9, 1023, 1025, 49_152] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 2003) as f32 / 100.0 - 15.0)
                .collect();
            let shift = max(&xs);
            let want: f64 = xs
                .iter()
                .map(|&x| (f64::from(x) - f64::from(shift)).exp())
                .sum();
            let got = sum_exp(&xs, shift);
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1e-30),
                "{len}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn silu_matches_the_definition() {
        let inputs: Vec<f32> = (-10000..10000).map(|i| i as f32 / 100.0).collect();
        let mut xs = inputs.clone();
        silu_in_place(&mut xs);
        for (x, got) in inputs.iter().zip(&xs) {
            let x64 = f64::from(*x);
            let want = x64 / (1.0 + (-x64).exp());
            assert!(
                (f64::from(*got) - want).abs() <= 1e-6 * (1e-3 + want.abs()),
                "silu({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn gelu_matches_the_exact_definition() {
        let inputs: Vec<f32> = (-1000..1000).map(|i| i as f32 / 100.0).collect();
        let mut xs = inputs.clone();
        gelu_erf_in_place(&mut xs);
        for (x, got) in inputs.iter().zip(&xs) {
            let x64 = f64::from(*x);
            let want = 0.5 * x64 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2));
            assert!(
                (f64::from(*got) - want).abs() < 3e-7 * (1.0 + want.abs()),
                "gelu({x}) = {got}, want {want}"
            );
        }
    }

    /// erf in f64 by its Taylor series (|x| ≤ 3) and continued fraction beyond: a
    /// reference independent of the code under test.
    fn erf64(x: f64) -> f64 {
        let a = x.abs();
        let y = if a <= 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) = e^{-a²}/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + 2/(a + …)))))
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        y.copysign(x)
    }
}
