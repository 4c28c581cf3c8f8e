//! Ranking metrics of a group of questions, and how far they can be trusted: a bootstrap
//! interval over the questions.
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// How many times [`interval95`] resamples the questions.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// One question's metrics at each cut-off.
#[derive(Debug, Clone, PartialEq)]
struct Scores {
    recall: Vec<f64>,
    hit: Vec<f64>,
    ndcg: Vec<f64>,
    rr: f64,
}

impl Scores {
    fn of(ks: &[usize], ranked: &[String], evidence: &[String]) -> Self {
        let mut s = Scores {
            recall: Vec::with_capacity(ks.len()),
            hit: Vec::with_capacity(ks.len()),
            ndcg: Vec::with_capacity(ks.len()),
            rr: 0.0,
        };
        for &k in ks {
            let top = &ranked[..k.min(ranked.len())];
            let found = evidence.iter().filter(|e| top.contains(e)).count();
            s.recall.push(found as f64 / evidence.len().max(1) as f64);
            s.hit.push(if found > 0 { 1.0 } else { 0.0 });
            s.ndcg.push(ndcg(k, ranked, evidence));
        }
        if let Some(pos) = ranked.iter().position(|r| evidence.contains(r)) {
            s.rr = 1.0 / (pos + 1) as f64;
        }
        s
    }

    /// The metrics as `(name, value)`, in report order.
    fn named<'a>(&'a self, ks: &'a [usize]) -> impl Iterator<Item = (String, f64)> + 'a {
        let at = |name: &'static str, v: &'a [f64]| {
            ks.iter()
                .zip(v)
                .map(move |(k, x)| (format!("{name}@{k}"), *x))
        };
        at("recall", &self.recall)
            .chain(at("hit", &self.hit))
            .chain(at("ndcg", &self.ndcg))
            .chain(std::iter::once(("mrr".to_owned(), self.rr)))
    }

    fn add(&mut self, other: &Scores) {
        for (a, b) in [
            (&mut self.recall, &other.recall),
            (&mut self.hit, &other.hit),
            (&mut self.ndcg, &other.ndcg),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self.rr += other.rr;
    }

    fn zero(k: usize) -> Self {
        Scores {
            recall: vec![0.0; k],
            hit: vec![0.0; k],
            ndcg: vec![0.0; k],
            rr: 0.0,
        }
    }
}

/// nDCG@k with binary gains: `Σ 1/log2(rank + 1)` over the evidence in the top k, over the
/// same sum for a ranking with all the evidence first.
fn ndcg(k: usize, ranked: &[String], evidence: &[String]) -> f64 {
    let gain = |rank: usize| 1.0 / ((rank + 1) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, r)| evidence.contains(r))
        .map(|(i, _)| gain(i + 1))
        .sum();
    let ideal: f64 = (1..=k.min(evidence.len())).map(gain).sum();
    if ideal > 0.0 { dcg / ideal } else { 0.0 }
}

/// The metrics of a group of questions (a category, a sample, all of them), each question's
/// kept for [`interval95`].
#[derive(Debug, Clone)]
pub(crate) struct Totals {
    ks: Vec<usize>,
    questions: Vec<Scores>,
}

impl Totals {
    pub(crate) fn new(ks: &[usize]) -> Self {
        Totals {
            ks: ks.to_vec(),
            questions: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, ranked: &[String], evidence: &[String]) {
        self.questions.push(Scores::of(&self.ks, ranked, evidence));
    }

    /// Adds another group's questions (of the same cut-offs).
    pub(crate) fn extend(&mut self, other: Totals) {
        self.questions.extend(other.questions);
    }

    fn sum(&self) -> Scores {
        let mut sum = Scores::zero(self.ks.len());
        for q in &self.questions {
            sum.add(q);
        }
        sum
    }

    /// `{"recall@k", "hit@k", "ndcg@k" for each k, "mrr", "questions"}`: means over the
    /// questions (0 when there are none).
    pub(crate) fn report(&self) -> Value {
        let n = self.questions.len().max(1) as f64;
        let mut m = Map::new();
        for (name, v) in self.sum().named(&self.ks) {
            m.insert(name, json!(v / n));
        }
        m.insert("questions".into(), json!(self.questions.len()));
        Value::Object(m)
    }
}

/// A 95% percentile-bootstrap interval of each overall metric, `{"hit@10": [low, high], …}`:
/// the questions are drawn again with replacement [`BOOTSTRAP_RESAMPLES`] times, each group's
/// (each sample's) within it, so every resample keeps the groups' sizes. It says how much
/// the figures owe to which questions were asked of these conversations; how far another
/// conversation can land is what the groups' own figures (`by_sample`) show. Deterministic
/// (a fixed seed), so two runs of one ranking report the same interval.
pub(crate) fn interval95(groups: &[&Totals]) -> Value {
    let Some(ks) = groups.first().map(|g| g.ks.clone()) else {
        return json!({});
    };
    let n: usize = groups.iter().map(|g| g.questions.len()).sum();
    if n == 0 {
        return json!({});
    }
    let mut rng = SplitMix64(0x005E_EDDE_E92E_C411);
    let mut draws: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for _ in 0..BOOTSTRAP_RESAMPLES {
        let mut sum = Scores::zero(ks.len());
        for g in groups {
            let m = g.questions.len() as u64;
            for _ in 0..m {
                sum.add(&g.questions[rng.below(m) as usize]);
            }
        }
        for (name, v) in sum.named(&ks) {
            if !draws.contains_key(&name) {
                order.push(name.clone());
            }
            draws.entry(name).or_default().push(v / n as f64);
        }
    }
    let mut out = Map::new();
    for name in order {
        let mut v = draws.remove(&name).unwrap_or_default();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        out.insert(name, json!([at(0.025), at(0.975)]));
    }
    Value::Object(out)
}

/// SplitMix64 (Steele, Lea and Flood, 2014): small, fast, and plenty for resampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..m` (Lemire's multiply-shift; the bias is below 2⁻³² for our sizes).
    fn below(&mut self, m: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(m)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metrics_per_question() {
        let mut t = Totals::new(&[1, 3]);
        let ranked = ids(&["a", "b", "c", "d"]);
        t.add(&ranked, &ids(&["c", "z"]));
        t.add(&ranked, &ids(&["a"]));
        let r = t.report();
        assert_eq!(r["recall@1"], 0.5); // (0 + 1) / 2
        assert_eq!(r["recall@3"], 0.75); // (0.5 + 1) / 2
        assert_eq!(r["hit@1"], 0.5);
        assert_eq!(r["hit@3"], 1.0);
        assert_eq!(r["questions"], 2);
        assert!((r["mrr"].as_f64().unwrap() - (1.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        // nDCG@3: "c" at rank 3 of an ideal with one of two found at rank 1..2: (1/log2 4) /
        // (1 + 1/log2 3); "a" at rank 1 is ideal.
        let first = 0.5 / (1.0 + 1.0 / 3f64.log2());
        assert!((r["ndcg@3"].as_f64().unwrap() - (first + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(r["ndcg@1"], 0.5);
    }

    #[test]
    fn interval_brackets_the_mean_and_narrows_with_more_questions() {
        let ranked = ids(&["a", "b", "c"]);
        // hit@1 is 1 for three questions in ten, in two groups of five.
        let group = |hits: usize, size: usize| {
            let mut t = Totals::new(&[1]);
            for i in 0..size {
                let evidence = if i < hits { ids(&["a"]) } else { ids(&["z"]) };
                t.add(&ranked, &evidence);
            }
            t
        };
        let (a, b) = (group(2, 5), group(1, 5));
        let small = interval95(&[&a, &b]);
        let [lo, hi] = [0, 1].map(|i| small["hit@1"][i].as_f64().unwrap());
        assert!(lo < 0.3 && 0.3 < hi, "{lo} {hi}");
        assert!(lo >= 0.0 && hi <= 1.0);
        // Each group's share is fixed by its questions, so a resample of a group of all
        // hits has no spread.
        let all = group(5, 5);
        let none = interval95(&[&all]);
        assert_eq!(none["hit@1"], json!([1.0, 1.0]));
        // The same share over forty times the questions: a narrower interval.
        let (c, d) = (group(80, 200), group(40, 200));
        let large = interval95(&[&c, &d]);
        let [lo2, hi2] = [0, 1].map(|i| large["hit@1"][i].as_f64().unwrap());
        assert!(lo2 < 0.3 && 0.3 < hi2, "{lo2} {hi2}");
        assert!(
            hi2 - lo2 < (hi - lo) / 3.0,
            "{lo2}..{hi2} against {lo}..{hi}"
        );
        // Deterministic, and every metric gets one.
        assert_eq!(interval95(&[&a, &b]), small);
        for name in ["recall@1", "hit@1", "ndcg@1", "mrr"] {
            assert!(small[name].is_array(), "{name}");
        }
        assert_eq!(interval95(&[]), json!({}));
    }

    #[test]
    fn draws_are_uniform_enough() {
        let mut rng = SplitMix64(1);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }
}
