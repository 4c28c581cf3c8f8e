//! The element-wise functions and reductions of `recall_kernels::math` on the sizes the
//! decoder and the embedder give them: SiLU over a step's gate rows (8 × 1,536), the
//! embedder's GELU over a batch's intermediate activations (32 × 64 × 1,536), a softmax's exp
//! over attention scores (1,000), and the maximum and Σ exp of a token's logits (49,152). Each
//! figure is the best of five rounds, in ns an element, on one thread.
//!
//! ```sh
//! cargo bench -p recall-kernels --bench math
//! ```
use std::hint::black_box;
use std::time::Instant;

use recall_kernels::math;

/// A function applied to every element of a slice.
type InPlace = fn(&mut [f32]);

/// Inputs spread over [-8, 8], as activations and centred logits are.
fn inputs(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u64 * 7919) % 16_001) as f32 / 1000.0 - 8.0)
        .collect()
}

/// Best of five rounds, ns an element.
fn time(elements: usize, mut f: impl FnMut()) -> f64 {
    let rounds = (20_000_000 / elements).max(1);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..rounds {
            f();
        }
        let ns = started.elapsed().as_nanos() as f64 / (rounds * elements) as f64;
        best = best.min(ns);
    }
    best
}

fn main() {
    println!("| function | elements | ns an element |");
    println!("|---|---:|---:|");
    let in_place: [(&str, InPlace, usize); 4] = [
        ("silu_in_place", math::silu_in_place, 8 * 1536),
        ("gelu_erf_in_place", math::gelu_erf_in_place, 32 * 64 * 1536),
        ("gelu_tanh_in_place", math::gelu_tanh_in_place, 8 * 1536),
        ("exp_in_place", math::exp_in_place, 1000),
    ];
    for (name, f, n) in in_place {
        let source = inputs(n);
        let mut xs = source.clone();
        let ns = time(n, || {
            xs.copy_from_slice(&source);
            f(black_box(&mut xs));
        });
        println!("| {name} | {n} | {ns:.3} |");
    }
    let logits = inputs(49_152);
    let ns = time(logits.len(), || {
        black_box(math::max(black_box(&logits)));
    });
    println!("| max | {} | {ns:.3} |", logits.len());
    let ns = time(logits.len(), || {
        black_box(math::sum_exp(black_box(&logits), 8.0));
    });
    println!("| sum_exp | {} | {ns:.3} |", logits.len());
}
