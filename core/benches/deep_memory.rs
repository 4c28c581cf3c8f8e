//! Deep memory on the CPU, in one run: training time and pairs/s of a user's query adapter
//! (default options) as the numbers of memories and pairs grow, the held-out evaluation over
//! all of the user's memories, and what the adapter adds to each query (one `apply`).
//!
//! ```sh
//! cargo bench -p recall-core --features testing --bench deep_memory -- \
//!     [--sizes 1000:500,10000:5000,100000:20000] [--epochs 40]
//! ```
//! Each size is `memories:pairs`. Vectors are random unit 384-dim vectors; each question is its
//! memory's vector moved along one shared direction plus noise (the template shift an
//! adapter learns to undo), so the recall figures show that training converges, not how it
//! does on real questions (see `deep-recall eval --deep-memory` for that).
use std::time::Instant;

use recall_core::deep_memory::{self as dm, MemorySet, Questions, TrainOptions};
use recall_core::testing::bench::{Rng, arg_or as arg};

const DIMS: usize = 384;

fn main() {
    let epochs: usize = arg("--epochs", "40").parse().expect("--epochs N");
    let sizes: Vec<(usize, usize)> = arg("--sizes", "1000:500,10000:5000,100000:20000")
        .split(',')
        .map(|s| {
            let (m, p) = s.split_once(':').expect("--sizes memories:pairs,...");
            (m.parse().unwrap(), p.parse().unwrap())
        })
        .collect();
    println!(
        "| memories | pairs | epochs | train (s) | train pairs/s | evaluate (ms) | held-out recall@10 before → after | apply p50 (µs) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---:|");
    for (memories, pairs) in sizes {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ memories as u64);
        let vectors: Vec<(i64, Vec<f32>)> = (0..memories as i64)
            .map(|id| (id, rng.unit_vector(DIMS)))
            .collect();
        let shift: Vec<f32> = rng.unit_vector(DIMS).into_iter().map(|x| x * 8.0).collect();
        let set = MemorySet::new(vectors.clone()).unwrap();
        let (mut train, mut held) = (
            Questions {
                vectors: vec![],
                answers: vec![],
            },
            Questions {
                vectors: vec![],
                answers: vec![],
            },
        );
        for _ in 0..pairs {
            let id = (rng.next_u64() % memories as u64) as i64;
            let q: Vec<f32> = vectors[id as usize]
                .1
                .iter()
                .zip(&shift)
                .map(|(x, s)| x + s + rng.gauss() * 0.02)
                .collect();
            let into = if dm::held_out(id) {
                &mut held
            } else {
                &mut train
            };
            into.vectors.push(q);
            into.answers.push(id as usize);
        }
        let options = TrainOptions {
            epochs,
            ..TrainOptions::default()
        };
        let started = Instant::now();
        let (adapter, _, _) = dm::train(
            &train,
            &Questions {
                vectors: vec![],
                answers: vec![],
            },
            &set,
            &options,
            &mut |_, _, _| {},
        )
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let before = dm::evaluate(None, &held, &set).unwrap();
        let after = dm::evaluate(Some(&adapter), &held, &set).unwrap();
        let eval_ms = started.elapsed().as_secs_f64() * 1000.0 / 2.0;
        let mut times: Vec<f64> = held
            .vectors
            .iter()
            .take(2000)
            .map(|q| {
                let t = Instant::now();
                std::hint::black_box(adapter.apply(q).unwrap());
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let apply = times[times.len() / 2];
        println!(
            "| {memories} | {pairs} | {epochs} | {seconds:.1} | {:.0} | {eval_ms:.0} | {:.3} → {:.3} | {apply:.1} |",
            (train.vectors.len() * epochs) as f64 / seconds,
            before.recall_at_10,
            after.recall_at_10,
        );
    }
}
