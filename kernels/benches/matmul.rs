//! Quantized matrix × vector speed on SmolLM2-135M's and Gemma 3 270M's shapes: the project's
//! Q4_0, Q4_1, Q5_0 and Q8_0 kernels against candle's own quantized matmul on the same
//! matrices, 1 and 4 input rows (decode, batched decode) and 16 and 64 (prefill), as GB/s of
//! weights read. `DEEP_RECALL_NO_VNNI=1` measures the AVX2 kernels on a CPU with AVX-512 VNNI.
//!
//! ```sh
//! cargo bench -p recall-kernels --bench matmul
//! ```
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use recall_kernels::{Format, QLinear, QMatrix};

fn time(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..50 {
            f();
        }
        best = best.min(started.elapsed().as_secs_f64() / 50.0);
    }
    best
}

fn main() {
    let cpu = Device::Cpu;
    println!("| shape (out × in) | rows | kernel | µs | GB/s |");
    println!("|---|---:|---|---:|---:|");
    // SmolLM2: q/k/v, gate+up, down, output; Gemma 3 270M: gate+up, down.
    for (rows, cols) in [
        (960, 576),
        (3072, 576),
        (576, 1536),
        (49152, 576),
        (4096, 640),
        (640, 2048),
    ] {
        let dense = Tensor::randn(0f32, 0.05, (rows, cols), &cpu).unwrap();
        for m in [1usize, 4, 16, 64] {
            // The output matrix is read for one row at a time (the last prompt position).
            if rows > 10_000 && m > 4 {
                continue;
            }
            let x = Tensor::randn(0f32, 1.0, (m, cols), &cpu).unwrap();
            for dtype in [
                GgmlDType::Q4_1,
                GgmlDType::Q4_0,
                GgmlDType::Q5_0,
                GgmlDType::Q8_0,
            ] {
                let q = QTensor::quantize(&dense, dtype).unwrap();
                let bytes = q.storage_size_in_bytes() as f64;
                let report = |name: &str, secs: f64| {
                    println!(
                        "| {rows} × {cols} | {m} | {name} | {:.1} | {:.1} |",
                        secs * 1e6,
                        bytes / secs / 1e9
                    )
                };
                let format = match dtype {
                    GgmlDType::Q4_1 => Some(Format::Q4_1),
                    GgmlDType::Q8_0 => Some(Format::Q8_0),
                    GgmlDType::Q4_0 => Some(Format::Q4_0),
                    GgmlDType::Q5_0 => Some(Format::Q5_0),
                    _ => None,
                };
                if let Some(format) = format {
                    let ours = QLinear(std::sync::Arc::new(
                        QMatrix::from_bytes(format, &q.data().unwrap(), rows, cols).unwrap(),
                    ));
                    report(
                        &format!("recall-kernels {format:?}"),
                        time(|| drop(ours.forward(&x).unwrap())),
                    );
                }
                // candle's scalar Q4_1 and Q5_0 are slow on the large shapes; skip them there.
                if matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0) && rows * m > 4096 || m > 16 {
                    continue;
                }
                let theirs = QMatMul::from_qtensor(q).unwrap();
                report(
                    &format!("candle {dtype:?}"),
                    time(|| drop(theirs.forward(&x).unwrap())),
                );
            }
        }
    }
}
