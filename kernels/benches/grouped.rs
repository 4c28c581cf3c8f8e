//! The grouped layout against the row layout, kernel against kernel (issue 14): eight weight
//! rows interleaved four bytes at a time (`WeightBlock::group_dotn`) against the same rows as
//! plain blocks (`dot` for one activation row, `dotn` for four and eight). One thread,
//! SmolLM2-135M's shapes (weights in L2/L3: the kernels' arithmetic, not memory), Q4_0, Q4_1
//! and Q8_0, 1, 4 and 8 activation rows. `DEEP_RECALL_NO_VNNI=1` measures the AVX2 kernels
//! on a CPU with AVX-512 VNNI.
//!
//! ```sh
//! cargo bench -p recall-kernels --bench grouped
//! ```
use std::time::Instant;

use half::f16;
use recall_kernels::quant::{
    BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, Panel, QK, WeightBlock, quantize_q8_1,
};

/// A deterministic pseudo-random stream.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn float(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
    }
}

/// Best of five rounds of 200 calls, in µs a call.
fn time(mut f: impl FnMut() -> f32) -> f64 {
    let mut sink = 0.0;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..200 {
            sink += f();
        }
        best = best.min(started.elapsed().as_secs_f64() / 200.0 * 1e6);
    }
    std::hint::black_box(sink);
    best
}

/// One format on one shape: rows of `block()`s, timed both ways; a table row per panel size.
fn measure<B: WeightBlock>(
    name: &str,
    rows: usize,
    cols: usize,
    rng: &mut Lcg,
    block: impl Fn(&mut Lcg) -> B,
) {
    let per = cols / QK;
    let w: Vec<Vec<B>> = (0..rows)
        .map(|_| (0..per).map(|_| block(rng)).collect())
        .collect();
    let groups: Vec<Vec<B::Group>> = w
        .chunks_exact(8)
        .map(|eight| {
            (0..per)
                .map(|i| B::group(std::array::from_fn(|l| &eight[l][i])).expect("grouped"))
                .collect()
        })
        .collect();
    let xs: Vec<Vec<BlockQ8_1>> = (0..8)
        .map(|_| {
            let x: Vec<f32> = (0..cols).map(|_| rng.float()).collect();
            let mut q = vec![BlockQ8_1::default(); per];
            quantize_q8_1(&x, &mut q);
            q
        })
        .collect();
    let x8: [&[BlockQ8_1]; 8] = std::array::from_fn(|r| xs[r].as_slice());
    let (one, four, eight) = (
        Panel::<1>::new([x8[0]]),
        Panel::<4>::new([x8[0], x8[1], x8[2], x8[3]]),
        Panel::<8>::new(x8),
    );
    // The two layouts agree before they are timed.
    for (g, eight_rows) in groups.iter().zip(w.chunks_exact(8)) {
        let got = B::group_dotn(g, &eight);
        for (r, x) in x8.iter().enumerate() {
            for (l, row) in eight_rows.iter().enumerate() {
                let want = B::dot(row, x);
                let diff = (got[r][l] - want).abs() / want.abs().max(1.0);
                assert!(diff < 1e-4, "{name}: {} against {want}", got[r][l]);
            }
        }
    }
    let rows1 = time(|| w.iter().map(|r| B::dot(r, x8[0])).sum());
    let rows4 = time(|| w.iter().map(|r| B::dotn(r, &four)[3]).sum());
    let rows8 = time(|| w.iter().map(|r| B::dotn(r, &eight)[7]).sum());
    let grouped1 = time(|| groups.iter().map(|g| B::group_dotn(g, &one)[0][7]).sum());
    let grouped4 = time(|| groups.iter().map(|g| B::group_dotn(g, &four)[3][7]).sum());
    let grouped8 = time(|| groups.iter().map(|g| B::group_dotn(g, &eight)[7][7]).sum());
    for (n, plain, grouped) in [
        (1, rows1, grouped1),
        (4, rows4, grouped4),
        (8, rows8, grouped8),
    ] {
        println!(
            "| {name} | {rows} × {cols} | {n} | {plain:.1} | {grouped:.1} | {:.2}× |",
            plain / grouped
        );
    }
}

fn main() {
    println!(
        "| format | shape (out × in) | activation rows | rows (µs) | grouped (µs) | speed-up |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let mut rng = Lcg(7);
    let scale = |rng: &mut Lcg| f16::from_f32(rng.float().abs() * 0.05 + 1e-3);
    for (rows, cols) in [(960, 576), (3072, 576), (576, 1536)] {
        measure("Q4_1", rows, cols, &mut rng, |rng| BlockQ4_1 {
            d: scale(rng),
            m: f16::from_f32(rng.float() * 0.4),
            qs: std::array::from_fn(|_| rng.next() as u8),
        });
        measure("Q4_0", rows, cols, &mut rng, |rng| BlockQ4_0 {
            d: scale(rng),
            qs: std::array::from_fn(|_| rng.next() as u8),
        });
        measure("Q8_0", rows, cols, &mut rng, |rng| BlockQ8_0 {
            d: scale(rng),
            qs: std::array::from_fn(|_| ((rng.next() % 255) as i32 - 127) as i8),
        });
    }
}
