//! The host attention kernel (`recall_kernels::attend_window`) on SmolLM2-135M's shape (9
//! query heads, 3 key/value heads, width 64): decode steps of 1 and 8 sequences with 100 to
//! 1,000 cached positions each, and a 48-position prompt chunk, on the candle pool (all its
//! threads, as the decoder calls it). Each figure is the best of five rounds, in µs a call;
//! multiply by 30 layers for a token's (or a step's) attention.
//!
//! ```sh
//! cargo bench -p recall-kernels --bench attention
//! ```
use std::time::Instant;

use recall_kernels::{HostKv, Query, attend_window};

/// A deterministic pseudo-random stream.
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

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const DIM: usize = 64;

/// Best of five rounds, µs a call.
fn time(rounds: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..rounds {
            f();
        }
        best = best.min(started.elapsed().as_secs_f64() / rounds as f64 * 1e6);
    }
    best
}

fn main() {
    let mut rng = Lcg(7);
    let scale = 1.0 / (DIM as f32).sqrt();
    println!(
        "| sequences | new positions | cached positions | µs a call | cache read (MB/s) |\n\
         |---:|---:|---:|---:|---:|"
    );
    for (sequences, seq, len) in [
        (1, 1, 100),
        (1, 1, 300),
        (1, 1, 1000),
        (8, 1, 100),
        (8, 1, 300),
        (8, 1, 1000),
        (1, 48, 96),
        (1, 64, 512),
        (1, 512, 512),
    ] {
        let caches: Vec<HostKv> = (0..sequences)
            .map(|_| {
                let mut kv = HostKv::new(KV_HEADS, DIM);
                kv.write(
                    0,
                    len,
                    &rng.vec(len * KV_HEADS * DIM),
                    &rng.vec(len * KV_HEADS * DIM),
                );
                kv
            })
            .collect();
        let queries: Vec<Vec<f32>> = (0..sequences).map(|_| rng.vec(HEADS * seq * DIM)).collect();
        let batch: Vec<Query> = caches
            .iter()
            .zip(&queries)
            .map(|(kv, q)| Query { q, kv, len })
            .collect();
        let mut out = vec![0f32; sequences * HEADS * seq * DIM];
        let us = time(200, || {
            attend_window(&batch, HEADS, seq, DIM, scale, None, &mut out);
            std::hint::black_box(&out);
        });
        // Keys and values of every position once (the bytes a call must read at least).
        let bytes = (sequences * len * KV_HEADS * DIM * 2) as f64 * caches[0].bytes() as f64
            / (caches[0].capacity() * KV_HEADS * DIM * 2) as f64;
        println!(
            "| {sequences} | {seq} | {len} | {us:.1} | {:.0} |",
            bytes / us
        );
    }
}
