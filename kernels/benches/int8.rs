//! Int8 dense-layer products on all-MiniLM-L6-v2's shapes (`in × out`), one thread, as
//! billions of multiply-adds a second; `DEEP_RECALL_NO_VNNI=1` measures the AVX2 kernel on a
//! CPU that has AVX-512 VNNI.
//!
//! ```sh
//! cargo bench -p recall-kernels --bench int8
//! ```
use std::time::Instant;

use recall_kernels::{I8Matrix, QuantizedRows};

fn main() {
    println!("kernel: {}", recall_kernels::int8::kernel());
    println!("| in × out | rows | µs | GMAC/s | of which quantizing the inputs (µs) |");
    println!("|---|---:|---:|---:|---:|");
    for (k, n) in [(384, 1152), (384, 384), (384, 1536), (1536, 384)] {
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919) % 201) as f32 / 1000.0 - 0.1)
            .collect();
        let q = I8Matrix::quantize(&w, k, n);
        for m in [16usize, 512] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104_729) % 97) as f32 / 50.0 - 1.0)
                .collect();
            let mut xq = QuantizedRows::default();
            let mut out = vec![0f32; m * n];
            let mut run = || {
                xq.quantize(&x, k);
                q.matmul_acc(&xq, &mut out);
            };
            for _ in 0..3 {
                run();
            }
            let reps = (2_000_000_000 / (m * k * n)).max(3);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps {
                    run();
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            let t = Instant::now();
            for _ in 0..reps {
                xq.quantize(&x, k);
            }
            let quantize = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "| {k} × {n} | {m} | {:.1} | {:.1} | {:.1} |",
                best * 1e6,
                (m * k * n) as f64 / best / 1e9,
                quantize * 1e6
            );
        }
    }
}
