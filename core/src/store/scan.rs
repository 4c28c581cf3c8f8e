//! The in-process vector scan: one user's vectors of one model held in memory, searched with
//! every filter of the query. The embedded store searches every user this way; Postgres the
//! users above [`crate::store::StoreConfig::in_process_search_min`] memories. Exact below
//! 8,192 vectors; from there int8 codes first (a quarter of the bytes to read), the best
//! candidates re-scored in F32; from 16,384 in parallel slices.
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::cursor::SearchCursor;
use super::sql::{IndexQuery, Meta};
use crate::error::{Error, Result};
use crate::types::Metric;
use recall_kernels::int8;

/// Users with at least this many vectors of one model are scanned by several threads.
const PARALLEL_SCAN_MIN: usize = 16_384;
/// Threads of one parallel scan at most.
const MAX_SCAN_THREADS: usize = 4;
/// Users with at least this many vectors of one model are searched through int8 codes first
/// (a quarter of the bytes to read), the best candidates then re-scored in F32.
const APPROX_SCAN_MIN: usize = 8_192;
/// Vectors whose approximate dot products are computed at once.
const APPROX_BLOCK: usize = 512;

/// Candidates re-scored in F32 for a query of `limit` rows: approximate distances are off by
/// about 1e-3, far less than the gaps that separate the top `limit` from the rest, so twice
/// as many (and at least 32 more) hold the exact top `limit` (recall 1.0 in the tests and the
/// store benchmark).
fn rescored(limit: usize) -> usize {
    (2 * limit).max(limit + 32)
}

/// Dot product written so that the compiler vectorises it (8 independent accumulators).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += (x - y) * (x - y);
    }
    sum.sqrt()
}

/// A candidate in the top-k heap: ordered by (distance, id), largest on top.
#[derive(PartialEq)]
struct Candidate(f64, i64);

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Adds `c` to a heap of the `limit` smallest candidates.
fn keep(heap: &mut BinaryHeap<Candidate>, c: Candidate, limit: usize) {
    if heap.len() < limit {
        heap.push(c);
    } else if heap.peek().is_some_and(|top| c < *top) {
        heap.pop();
        heap.push(c);
    }
}

/// The distance for a dot product `dot` of the query and a vector (exact, or from their
/// int8 codes), given their norms.
fn distance_from_dot(metric: Metric, dot: f32, q_norm: f32, v_norm: f32) -> f64 {
    match metric {
        Metric::Cosine => {
            let denom = q_norm * v_norm;
            if denom == 0.0 {
                1.0
            } else {
                1.0 - (dot / denom) as f64
            }
        }
        Metric::L2 => (q_norm * q_norm + v_norm * v_norm - 2.0 * dot)
            .max(0.0)
            .sqrt() as f64,
        Metric::Dot => -(dot as f64),
    }
}

/// The exact distance of the query and a vector.
fn distance(metric: Metric, q: &[f32], q_norm: f32, v: &[f32], v_norm: f32) -> f64 {
    match metric {
        // Computed directly: the expansion through the dot product loses digits.
        Metric::L2 => l2(q, v) as f64,
        Metric::Cosine | Metric::Dot => distance_from_dot(metric, dot(q, v), q_norm, v_norm),
    }
}

/// One model's vectors of one user, stored contiguously.
#[derive(Debug, Default)]
pub(crate) struct ModelVectors {
    pub dims: usize,
    pub meta: Vec<Meta>,
    pub data: Vec<f32>,
    pub norms: Vec<f32>,
    /// The vectors as int8 codes (`recall_kernels::int8::quantize_vector`), `dims` a vector,
    /// and their scales: for the approximate first pass over large users.
    pub codes: Vec<i8>,
    pub code_scales: Vec<f32>,
    pub position: HashMap<i64, usize>,
}

impl ModelVectors {
    /// Room for `n` more vectors of `dims` (a user read whole: no regrowth and copies).
    pub fn reserve(&mut self, n: usize, dims: usize) {
        self.meta.reserve(n);
        self.norms.reserve(n);
        self.code_scales.reserve(n);
        self.position.reserve(n);
        self.data.reserve(n * dims);
        self.codes.reserve(n * dims);
    }

    pub fn push(&mut self, meta: Meta, vector: &[f32]) {
        if self.position.contains_key(&meta.id) {
            self.remove(meta.id);
        }
        self.position.insert(meta.id, self.meta.len());
        self.meta.push(meta);
        self.norms.push(dot(vector, vector).sqrt());
        self.data.extend_from_slice(vector);
        let at = self.codes.len();
        self.codes.resize(at + vector.len(), 0);
        self.code_scales
            .push(int8::quantize_vector(vector, &mut self.codes[at..]));
    }

    pub fn remove(&mut self, id: i64) {
        let Some(pos) = self.position.remove(&id) else {
            return;
        };
        let last = self.meta.len() - 1;
        if pos != last {
            let d = self.dims;
            self.data.copy_within(last * d..(last + 1) * d, pos * d);
            self.codes.copy_within(last * d..(last + 1) * d, pos * d);
            self.meta.swap(pos, last);
            self.norms.swap(pos, last);
            self.code_scales.swap(pos, last);
            self.position.insert(self.meta[pos].id, pos);
        }
        self.meta.pop();
        self.norms.pop();
        self.code_scales.pop();
        self.data.truncate(last * self.dims);
        self.codes.truncate(last * self.dims);
    }

    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// The vectors of these memories (those held).
    pub fn vectors_of(&self, ids: &[i64]) -> Vec<(i64, Vec<f32>)> {
        ids.iter()
            .filter_map(|id| {
                let pos = *self.position.get(id)?;
                Some((
                    *id,
                    self.data[pos * self.dims..(pos + 1) * self.dims].to_vec(),
                ))
            })
            .collect()
    }

    /// The nearest of these vectors to the query, with every condition of the query:
    /// `(memory id, distance)`, ordered by distance then id.
    pub fn search(&self, metric: Metric, q: &IndexQuery<'_>) -> Result<Vec<(i64, f64)>> {
        if self.dims != q.vector.len() {
            return Err(Error::invalid(format!(
                "query has {} dimensions but model {} has {}",
                q.vector.len(),
                q.model,
                self.dims
            )));
        }
        let q_norm = dot(q.vector, q.vector).sqrt();
        let n = self.len();
        // Deep pages (a cursor) take the exact scan: the approximate pass cannot place the
        // cursor's boundary exactly.
        let approx = n >= APPROX_SCAN_MIN && q.after.is_none();
        let pool = if approx { rescored(q.limit) } else { q.limit };
        let mut q_code = vec![0i8; if approx { self.dims } else { 0 }];
        let q_scale = int8::quantize_vector(if approx { q.vector } else { &[] }, &mut q_code);
        // Exact distances, with every condition of the query.
        let exact = |range: std::ops::Range<usize>| {
            let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(pool + 1);
            for i in range {
                let meta = &self.meta[i];
                if !meta.matches(q.filter) {
                    continue;
                }
                let v = &self.data[i * self.dims..(i + 1) * self.dims];
                let d = distance(metric, q.vector, q_norm, v, self.norms[i]);
                if q.max_distance.is_some_and(|max| d > max) {
                    continue;
                }
                if q.after.is_some_and(|c: SearchCursor| !c.admits(d, meta.id)) {
                    continue;
                }
                keep(&mut heap, Candidate(d, meta.id), pool);
            }
            heap
        };
        // Approximate distances from the int8 codes: the `pool` best positions (stored in
        // the candidates' id slot), re-scored below.
        let rough = |range: std::ops::Range<usize>| {
            let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(pool + 1);
            let mut dots = vec![0i32; APPROX_BLOCK];
            let mut start = range.start;
            while start < range.end {
                let end = (start + APPROX_BLOCK).min(range.end);
                let dots = &mut dots[..end - start];
                int8::dots_i8(
                    &q_code,
                    &self.codes[start * self.dims..end * self.dims],
                    dots,
                );
                for (i, &raw) in (start..end).zip(dots.iter()) {
                    if !self.meta[i].matches(q.filter) {
                        continue;
                    }
                    let d = distance_from_dot(
                        metric,
                        raw as f32 * q_scale * self.code_scales[i],
                        q_norm,
                        self.norms[i],
                    );
                    keep(&mut heap, Candidate(d, i as i64), pool);
                }
                start = end;
            }
            heap
        };
        let scan = |range: std::ops::Range<usize>| {
            if approx { rough(range) } else { exact(range) }
        };
        let threads = if n >= PARALLEL_SCAN_MIN {
            std::thread::available_parallelism()
                .map_or(1, |p| p.get())
                .min(MAX_SCAN_THREADS)
        } else {
            1
        };
        // Large users are scanned in parallel slices (the scan is bound by memory bandwidth,
        // which one core does not saturate); the per-slice top-k heaps are then merged.
        let heap = if threads > 1 {
            let per = n.div_ceil(threads);
            let heaps: Vec<BinaryHeap<Candidate>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let range = (t * per).min(n)..((t + 1) * per).min(n);
                        s.spawn(move || scan(range))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("scan thread"))
                    .collect()
            });
            let mut merged: Vec<Candidate> = heaps.into_iter().flatten().collect();
            merged.sort();
            merged.truncate(pool);
            merged.into_iter().collect::<BinaryHeap<_>>()
        } else {
            scan(0..n)
        };
        let heap = if approx {
            // Re-score the pool exactly, with the conditions the first pass left out.
            let mut best = BinaryHeap::with_capacity(q.limit + 1);
            for Candidate(_, pos) in heap {
                let i = pos as usize;
                let v = &self.data[i * self.dims..(i + 1) * self.dims];
                let d = distance(metric, q.vector, q_norm, v, self.norms[i]);
                if q.max_distance.is_some_and(|max| d > max) {
                    continue;
                }
                keep(&mut best, Candidate(d, self.meta[i].id), q.limit);
            }
            best
        } else {
            heap
        };
        Ok(heap
            .into_sorted_vec()
            .into_iter()
            .map(|Candidate(d, id)| (id, d))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MemoryKind;
    use chrono::Utc;

    #[test]
    fn dot_and_l2_match_naive() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..19).map(|i| (i as f32).sin()).collect();
        let naive_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let naive_l2: f32 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt();
        assert!((dot(&a, &b) - naive_dot).abs() < 1e-4);
        assert!((l2(&a, &b) - naive_l2).abs() < 1e-4);
    }

    #[test]
    fn model_vectors_remove_keeps_positions_consistent() {
        let mut mv = ModelVectors {
            dims: 2,
            ..Default::default()
        };
        let meta = |id| Meta {
            id,
            session_id: None,
            kind: MemoryKind::Fact,
            role: None,
            expires_at: None,
            superseded_at: None,
            tags: Box::new([]),
            created_at: Utc::now(),
        };
        mv.push(meta(1), &[1.0, 0.0]);
        mv.push(meta(2), &[0.0, 1.0]);
        mv.push(meta(3), &[1.0, 1.0]);
        mv.remove(1);
        assert_eq!(mv.len(), 2);
        let pos3 = mv.position[&3];
        assert_eq!(&mv.data[pos3 * 2..pos3 * 2 + 2], &[1.0, 1.0]);
        let pos2 = mv.position[&2];
        assert_eq!(&mv.data[pos2 * 2..pos2 * 2 + 2], &[0.0, 1.0]);
        mv.remove(42);
        assert_eq!(mv.len(), 2);
    }
}
