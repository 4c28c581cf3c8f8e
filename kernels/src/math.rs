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
    let n = (x * LOG2E + ROUND) - ROUND;
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
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
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
