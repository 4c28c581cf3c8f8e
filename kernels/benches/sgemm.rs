//! F32 dense-layer products on all-MiniLM-L6-v2's shapes (`in × out`, weights row-major
//! `in × out`), one thread: the project's few-rows kernel against the `gemm` crate's, as µs
//! and billions of multiply-adds a second. The weights are larger than the caches together
//! (one copy per shape and repetition round robin, ~48 MB), as in a forward pass where each
//! layer's weights were evicted by the others.
//!
//! ```sh
//! cargo bench -p recall-kernels --bench sgemm [-- --rows 8,14,24]
//! ```
use std::time::Instant;

/// Copies of each matrix, used in turn so that the weights come from memory.
const COPIES: usize = 16;

fn main() {
    // `--rows 8,14,24`: only these row counts (default: 1 to 512).
    let args: Vec<String> = std::env::args().collect();
    let rows: Vec<usize> = match args.iter().position(|a| a == "--rows") {
        Some(i) => args
            .get(i + 1)
            .expect("--rows takes a list")
            .split(',')
            .map(|v| v.parse().expect("--rows takes numbers"))
            .collect(),
        None => vec![1, 8, 14, 24, 48, 96, 512],
    };
    // `--copies 1`: one copy of each matrix, so that its weights come from the caches.
    let copies = match args.iter().position(|a| a == "--copies") {
        Some(i) => args[i + 1].parse().expect("--copies takes a number"),
        None => COPIES,
    };
    println!("kernel: {}", recall_kernels::sgemm::kernel());
    println!(
        "| in × out | rows | ours (µs) | gemm (µs) | ours GMAC/s | gemm GMAC/s | gemm / ours |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (k, n) in [(384, 1152), (384, 384), (384, 1536), (1536, 384)] {
        let ws: Vec<Vec<f32>> = (0..copies)
            .map(|c| {
                (0..k * n)
                    .map(|i| ((i * 7919 + c) % 201) as f32 / 1000.0 - 0.1)
                    .collect()
            })
            .collect();
        for &m in &rows {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104_729) % 97) as f32 / 50.0 - 1.0)
                .collect();
            let mut out = vec![0f32; m * n];
            let mut time = |ours: bool| {
                let mut run = |w: &[f32]| {
                    if ours {
                        // SAFETY: out holds m × n values; this thread alone writes.
                        unsafe {
                            recall_kernels::sgemm::matmul_acc_raw(
                                &x,
                                k,
                                w,
                                n,
                                0..m,
                                0..n,
                                out.as_mut_ptr(),
                                n,
                            )
                        }
                    } else {
                        // SAFETY: as above; x is m × k and w is k × n, row-major.
                        unsafe {
                            gemm::gemm(
                                m,
                                n,
                                k,
                                out.as_mut_ptr(),
                                1,
                                n as isize,
                                true,
                                x.as_ptr(),
                                1,
                                k as isize,
                                w.as_ptr(),
                                1,
                                n as isize,
                                1.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            )
                        }
                    }
                };
                for w in &ws {
                    run(w);
                }
                let reps = ((400_000_000 / (m * k * n)).max(2) * copies).next_multiple_of(copies);
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t = Instant::now();
                    for rep in 0..reps {
                        run(&ws[rep % copies]);
                    }
                    best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                }
                best
            };
            let (ours, theirs) = (time(true), time(false));
            let gmacs = |s: f64| (m * k * n) as f64 / s / 1e9;
            println!(
                "| {k} × {n} | {m} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
                ours * 1e6,
                theirs * 1e6,
                gmacs(ours),
                gmacs(theirs),
                theirs / ours
            );
        }
    }
}
