//! Deep memory: a small per-user transform of query embeddings, trained on (question, memory)
//! pairs so that the user's own way of asking lands nearer the memories that answer it.
//!
//! The pieces: the pairs ([`TrainingPair`]; the local chat model writes questions that a
//! memory answers, and users or apps add their own), a split of them by memory
//! ([`held_out`]: a memory is either trained on or judged on, never both), the adapter
//! ([`Adapter`]: a low-rank residual `q + U·V·q`, normalised, which starts as the identity),
//! its training ([`train`]: contrastive, in-batch and mined hard negatives from the user's own
//! memories, with candle), and the evaluation ([`evaluate`]: recall@1/5/10 and MRR of the
//! held-out pairs among all of the user's memories, before and after). The engine
//! (`Engine::deep_memory_*`) ties them to the store, the jobs and search.
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The version of the question-writing prompt, recorded with each generated pair.
pub const PROMPT_VERSION: u32 = 1;
/// Questions the model may write per memory at most.
pub const MAX_QUESTIONS_PER_MEMORY: usize = 5;
/// Characters of a question at most.
pub const MAX_QUESTION_CHARS: usize = 500;
/// Pairs a user may hold at most.
pub const MAX_PAIRS_PER_USER: usize = 50_000;
/// Pairs added per call at most.
pub const MAX_PAIRS_PER_CALL: usize = 1_000;
/// Memories (with vectors) a user may have for training and evaluation at most.
pub const MAX_TRAIN_MEMORIES: usize = 200_000;
/// Share of memories (percent) whose pairs are held out for evaluation.
pub const HELD_OUT_PERCENT: u64 = 20;
/// Held-out pairs needed before an adapter can be judged (and enabled).
pub const MIN_HELD_OUT_PAIRS: usize = 5;
/// Training pairs needed to train.
pub const MIN_TRAIN_PAIRS: usize = 8;

/// Where a pair came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairSource {
    /// Written by the chat model from the memory.
    Generated,
    /// Given by the user or an app (a question that this memory answered, a click).
    User,
}

impl PairSource {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PairSource::Generated => "generated",
            PairSource::User => "user",
        }
    }

    /// The source of a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "generated" => Ok(PairSource::Generated),
            "user" => Ok(PairSource::User),
            other => Err(Error::Internal(format!("unknown pair source {other:?}"))),
        }
    }
}

/// A pair to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTrainingPair {
    /// The memory that answers the question (the user's own).
    pub memory_id: i64,
    /// The question.
    pub question: String,
    /// Where it came from.
    pub source: PairSource,
    /// The model that wrote it.
    pub model: Option<String>,
    /// The prompt it was written with ([`PROMPT_VERSION`]).
    pub prompt_version: Option<u32>,
}

/// A stored pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingPair {
    /// Store-assigned id.
    pub id: i64,
    /// The memory that answers the question.
    pub memory_id: i64,
    /// The question.
    pub question: String,
    /// Where it came from.
    pub source: PairSource,
    /// The model that wrote it.
    pub model: Option<String>,
    /// The prompt it was written with.
    pub prompt_version: Option<u32>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// Whether the pairs of a memory are held out for evaluation (about [`HELD_OUT_PERCENT`] of
/// memories, fixed per memory so that retraining never trains on what judged it before).
pub fn held_out(memory_id: i64) -> bool {
    mix(memory_id as u64 ^ 0x5eed_d33d) % 100 < HELD_OUT_PERCENT
}

/// Whether a training memory's pairs pick the best epoch (about a tenth of them) instead of
/// being trained on.
fn validation(memory_id: i64) -> bool {
    mix(memory_id as u64 ^ 0x0a11_da7e).is_multiple_of(10)
}

/// splitmix64: a well-mixed hash of an integer.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A user's adapter as stored: the weights, what they were trained on and how they did.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAdapter {
    /// The embedding model whose query vectors it transforms; with another model it is not
    /// used.
    pub embedding_model: String,
    /// Counts up with each training (set by the store).
    pub version: u32,
    /// The weights.
    pub adapter: Adapter,
    /// The training and its evaluation.
    pub report: TrainingReport,
    /// Whether searches use it.
    pub enabled: bool,
    /// The user's memories when it was trained (for retraining once enough new ones arrive).
    pub memories: u64,
    /// Pairs it was trained and judged on.
    pub pairs: u64,
    /// When its training began: it saw the memories and pairs stored before then.
    pub trained_at: DateTime<Utc>,
    /// When it last changed (trained, turned on or off).
    pub updated_at: DateTime<Utc>,
}

/// Where a user's deep memory stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeepMemoryStatus {
    /// Pairs stored.
    pub pairs: u64,
    /// Of which written by the chat model.
    pub generated_pairs: u64,
    /// Of which held out for evaluation.
    pub held_out_pairs: u64,
    /// Memories with at least one pair.
    pub memories_with_pairs: u64,
    /// The user's memories now that an adapter learns from (current ones, keys left out).
    pub memories: u64,
    /// Whether an adapter has been trained.
    pub trained: bool,
    /// Its version.
    pub version: Option<u32>,
    /// Whether it is turned on.
    pub enabled: bool,
    /// Whether searches use it now: turned on, and made for the embedding model searches use.
    pub active: bool,
    /// Why it is not used, when it is turned on but inactive.
    pub inactive_reason: Option<String>,
    /// The embedding model it was trained for.
    pub embedding_model: Option<String>,
    /// When it was trained.
    pub trained_at: Option<DateTime<Utc>>,
    /// Memories added since (retraining is due at the configured threshold).
    pub new_memories: u64,
    /// Its training and evaluation.
    pub report: Option<TrainingReport>,
}

/// How the chat model writes pairs ([`crate::engine::Engine::deep_memory_generate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    /// Questions per memory (at most [`MAX_QUESTIONS_PER_MEMORY`]).
    pub questions_per_memory: usize,
    /// Pairs written in this run at most.
    pub max_pairs: usize,
    /// Pause after each group of questions, to leave the model to live chat (a rate limit).
    pub pause_ms: u64,
    /// Memories whose questions are asked at once (a local model decodes them together).
    pub concurrency: usize,
    /// Tokens per question at most.
    pub max_tokens: usize,
    /// Memories shorter than this (characters) get no questions.
    pub min_memory_chars: usize,
    /// Only memories stored after this time (a retraining asks about the new ones only).
    pub since: Option<DateTime<Utc>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            questions_per_memory: 1,
            max_pairs: 5_000,
            pause_ms: 0,
            concurrency: 4,
            max_tokens: 32,
            min_memory_chars: 12,
            since: None,
        }
    }
}

impl GenerateOptions {
    /// Refuses options out of range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_QUESTIONS_PER_MEMORY).contains(&self.questions_per_memory) {
            return Err(Error::invalid(format!(
                "questions per memory must be 1 to {MAX_QUESTIONS_PER_MEMORY}"
            )));
        }
        if !(1..=MAX_PAIRS_PER_USER).contains(&self.max_pairs) {
            return Err(Error::invalid(format!(
                "max pairs must be 1 to {MAX_PAIRS_PER_USER}"
            )));
        }
        if !(8..=200).contains(&self.max_tokens) {
            return Err(Error::invalid("max tokens per question must be 8 to 200"));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(Error::invalid("concurrency must be 1 to 64"));
        }
        if self.pause_ms > 60_000 {
            return Err(Error::invalid("the pause is at most 60000 ms"));
        }
        Ok(())
    }
}

/// What a run of [`crate::engine::Engine::deep_memory_generate`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateReport {
    /// Memories the model was asked about.
    pub memories: u64,
    /// Memories skipped: they had generated pairs already (an earlier run), were too short,
    /// or older than `since`.
    pub skipped: u64,
    /// Pairs stored.
    pub pairs: u64,
    /// Replies with no usable question, or a duplicate.
    pub rejected: u64,
    /// The model that wrote them.
    pub model: String,
    /// Seconds taken.
    pub seconds: f64,
    /// Pairs per second.
    pub pairs_per_second: f64,
}

/// Recall of held-out pairs: where each question's memory ranks among all of the user's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RecallMetrics {
    /// Share of questions whose memory ranks first.
    #[serde(rename = "recall@1")]
    pub recall_at_1: f64,
    /// Share in the first five.
    #[serde(rename = "recall@5")]
    pub recall_at_5: f64,
    /// Share in the first ten.
    #[serde(rename = "recall@10")]
    pub recall_at_10: f64,
    /// Mean reciprocal rank.
    pub mrr: f64,
}

/// Held-out recall without and with an adapter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// With the plain query embedding.
    pub before: RecallMetrics,
    /// With the adapter.
    pub after: RecallMetrics,
    /// Held-out pairs judged.
    pub pairs: usize,
}

impl Evaluation {
    /// Whether the adapter helps, on enough held-out pairs to tell: neither recall@10 nor MRR
    /// is worse, and at least one is better. (A gain in one bought with a loss in the other
    /// is not taken: on a few dozen pairs it is as likely noise.)
    pub fn helps(&self) -> bool {
        let (b, a) = (&self.before, &self.after);
        self.pairs >= MIN_HELD_OUT_PAIRS
            && a.recall_at_10 >= b.recall_at_10
            && a.mrr >= b.mrr
            && (a.recall_at_10 > b.recall_at_10 || a.mrr > b.mrr)
    }
}

/// How an adapter was trained and how it did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingReport {
    /// Held-out recall before and after.
    pub evaluation: Evaluation,
    /// Pairs trained on.
    pub train_pairs: usize,
    /// Pairs that chose the best epoch.
    pub validation_pairs: usize,
    /// Memories searched (the user's memories with a vector of the model).
    pub memories: usize,
    /// Epochs run.
    pub epochs: usize,
    /// The epoch kept (the best on the validation pairs; the last without them).
    pub best_epoch: usize,
    /// Mean training loss of each epoch.
    pub loss: Vec<f32>,
    /// Rank of the adapter.
    pub rank: usize,
    /// Seconds spent training.
    pub seconds: f64,
}

/// The query transform: `normalize(q + U·(V·q))`, `U` of `dims × rank` (zero at first, so a
/// new adapter is the identity) and `V` of `rank × dims`.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    dims: usize,
    rank: usize,
    /// Row-major `dims × rank`.
    u: Vec<f32>,
    /// Row-major `rank × dims`.
    v: Vec<f32>,
}

impl Adapter {
    /// The identity, with `V` drawn from a seeded normal distribution.
    pub fn identity(dims: usize, rank: usize, seed: u64) -> Self {
        let scale = 1.0 / (dims as f32).sqrt();
        let mut state = seed;
        let v = (0..rank * dims)
            .map(|_| normal(&mut state) * scale)
            .collect();
        Self {
            dims,
            rank,
            u: vec![0.0; dims * rank],
            v,
        }
    }

    /// An adapter of stored weights (`U` then `V`, as [`Adapter::weights`] gives them).
    pub fn from_weights(dims: usize, rank: usize, weights: Vec<f32>) -> Result<Self> {
        if dims == 0 || rank == 0 || weights.len() != 2 * dims * rank {
            return Err(Error::Internal(format!(
                "adapter weights: {} values for {dims} dimensions of rank {rank}",
                weights.len()
            )));
        }
        let mut u = weights;
        let v = u.split_off(dims * rank);
        Ok(Self { dims, rank, u, v })
    }

    /// `U` then `V`, row-major.
    pub fn weights(&self) -> Vec<f32> {
        let mut w = self.u.clone();
        w.extend_from_slice(&self.v);
        w
    }

    /// Dimensions of the vectors it transforms.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Its rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The transformed query vector (unit length).
    pub fn apply(&self, q: &[f32]) -> Result<Vec<f32>> {
        if q.len() != self.dims {
            return Err(Error::invalid(format!(
                "the adapter transforms {}-dimensional vectors, not {}",
                self.dims,
                q.len()
            )));
        }
        let h: Vec<f32> = self
            .v
            .chunks_exact(self.dims)
            .map(|row| dot(row, q))
            .collect();
        let mut out: Vec<f32> = q
            .iter()
            .zip(self.u.chunks_exact(self.rank))
            .map(|(x, row)| x + dot(row, &h))
            .collect();
        normalize(&mut out);
        Ok(out)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalize(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// A standard normal draw (Box–Muller over splitmix64).
fn normal(state: &mut u64) -> f32 {
    let mut uniform = || {
        *state = state.wrapping_add(1);
        ((mix(*state) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let (a, b) = (uniform(), uniform());
    ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
}

/// How [`train`] trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainOptions {
    /// Rank of the adapter.
    pub rank: usize,
    /// Passes over the training pairs.
    pub epochs: usize,
    /// Pairs per step.
    pub batch: usize,
    /// Learning rate (AdamW).
    pub learning_rate: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Softmax temperature of the contrastive loss.
    pub temperature: f32,
    /// Hard negatives mined per question: the memories the plain query embedding ranks
    /// highest that are not its answer.
    pub hard_negatives: usize,
    /// Seed of the initial weights and the shuffling.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            rank: 32,
            epochs: 40,
            batch: 64,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            temperature: 0.05,
            hard_negatives: 32,
            seed: 0x00de_e9ee,
        }
    }
}

impl TrainOptions {
    /// Refuses options out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::invalid(format!("deep memory training: {what}")));
        if !(1..=256).contains(&self.rank) {
            return bad("rank must be 1 to 256");
        }
        if !(1..=1000).contains(&self.epochs) {
            return bad("epochs must be 1 to 1000");
        }
        if !(2..=4096).contains(&self.batch) {
            return bad("batch must be 2 to 4096");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad("learning rate must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.weight_decay) {
            return bad("weight decay must be 0 to 1");
        }
        // Below a thousandth the logits overflow (1/t), and the weights become NaN.
        if !(0.001..=10.0).contains(&self.temperature) {
            return bad("temperature must be 0.001 to 10");
        }
        if self.hard_negatives > 1024 {
            return bad("at most 1024 hard negatives per question");
        }
        Ok(())
    }
}

/// A user's memories as training and evaluation see them: unit vectors and their ids.
pub struct MemorySet {
    ids: Vec<i64>,
    index: std::collections::HashMap<i64, usize>,
    /// `n × dims`, unit rows.
    matrix: Tensor,
    dims: usize,
}

impl MemorySet {
    /// The set of `(id, vector)`; every vector of the same length.
    pub fn new(vectors: Vec<(i64, Vec<f32>)>) -> Result<Self> {
        let dims = vectors.first().map_or(0, |(_, v)| v.len());
        if dims == 0 {
            return Err(Error::invalid(
                "deep memory needs memories with vectors of the embedding model",
            ));
        }
        let mut ids = Vec::with_capacity(vectors.len());
        let mut flat = Vec::with_capacity(vectors.len() * dims);
        for (id, mut v) in vectors {
            if v.len() != dims {
                return Err(Error::Internal(format!(
                    "memory {id} has a {}-dimensional vector, not {dims}",
                    v.len()
                )));
            }
            normalize(&mut v);
            ids.push(id);
            flat.extend(v);
        }
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let matrix = Tensor::from_vec(flat, (ids.len(), dims), &Device::Cpu)?;
        Ok(Self {
            ids,
            index,
            matrix,
            dims,
        })
    }

    /// How many memories.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Dimensions of the vectors.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The position of a memory id.
    pub fn position(&self, id: i64) -> Option<usize> {
        self.index.get(&id).copied()
    }
}

/// Questions (their embeddings) and the position of the memory answering each in a
/// [`MemorySet`].
pub struct Questions {
    /// One embedding per question.
    pub vectors: Vec<Vec<f32>>,
    /// The answering memory's position.
    pub answers: Vec<usize>,
}

impl Questions {
    fn tensor(&self, dims: usize) -> Result<Tensor> {
        let flat: Vec<f32> = self.vectors.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(
            flat,
            (self.vectors.len(), dims),
            &Device::Cpu,
        )?)
    }
}

/// Rows of questions scored at once while evaluating.
const EVAL_BLOCK: usize = 256;

/// Recall of each question's memory among all memories, with the adapter (or without).
pub fn evaluate(
    adapter: Option<&Adapter>,
    questions: &Questions,
    memories: &MemorySet,
) -> Result<RecallMetrics> {
    let n = questions.vectors.len();
    if n == 0 {
        return Ok(RecallMetrics::default());
    }
    let mut ranks = Vec::with_capacity(n);
    for start in (0..n).step_by(EVAL_BLOCK) {
        let end = (start + EVAL_BLOCK).min(n);
        let mut flat = Vec::with_capacity((end - start) * memories.dims);
        for q in &questions.vectors[start..end] {
            let q = match adapter {
                Some(a) => a.apply(q)?,
                None => {
                    let mut q = q.clone();
                    normalize(&mut q);
                    q
                }
            };
            flat.extend(q);
        }
        let block = Tensor::from_vec(flat, (end - start, memories.dims), &Device::Cpu)?;
        let scores: Vec<Vec<f32>> = block.matmul(&memories.matrix.t()?)?.to_vec2()?;
        for (row, &answer) in scores.iter().zip(&questions.answers[start..end]) {
            let own = row[answer];
            // A score that is not a number ranks last (a NaN compares false to all).
            ranks.push(if own.is_nan() {
                row.len()
            } else {
                1 + row.iter().filter(|&&s| s > own || s.is_nan()).count()
            });
        }
    }
    let share = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / n as f64;
    Ok(RecallMetrics {
        recall_at_1: share(1),
        recall_at_5: share(5),
        recall_at_10: share(10),
        mrr: ranks.iter().map(|&r| 1.0 / r as f64).sum::<f64>() / n as f64,
    })
}

/// Splits questions (with the memory ids they belong to) into training and validation by
/// memory.
pub fn split_validation(memory_ids: &[i64]) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, id) in memory_ids.iter().enumerate() {
        if validation(*id) {
            val.push(i);
        } else {
            train.push(i);
        }
    }
    // Too few to spare: train on all, keep the last epoch.
    if val.len() < MIN_HELD_OUT_PAIRS || train.len() < MIN_TRAIN_PAIRS {
        train.append(&mut val);
        train.sort_unstable();
    }
    (train, val)
}

/// Trains an adapter on `train` (questions and their memories), keeping the epoch that does
/// best on `validation` (by MRR; the last epoch when there is no validation set).
/// `on_epoch(epoch, epochs, mean_loss)` after each epoch.
pub fn train(
    train: &Questions,
    validation: &Questions,
    memories: &MemorySet,
    options: &TrainOptions,
    on_epoch: &mut (dyn FnMut(usize, usize, f32) + Send),
) -> Result<(Adapter, Vec<f32>, usize)> {
    options.validate()?;
    let n = train.vectors.len();
    if n < MIN_TRAIN_PAIRS {
        return Err(Error::invalid(format!(
            "deep memory needs at least {MIN_TRAIN_PAIRS} training pairs, there are {n}"
        )));
    }
    let dims = memories.dims;
    let device = Device::Cpu;
    let start = Adapter::identity(dims, options.rank, options.seed);
    let u = Var::from_tensor(&Tensor::from_vec(
        start.u.clone(),
        (dims, options.rank),
        &device,
    )?)?;
    let v = Var::from_tensor(&Tensor::from_vec(
        start.v.clone(),
        (options.rank, dims),
        &device,
    )?)?;
    let mut opt = AdamW::new(
        vec![u.clone(), v.clone()],
        ParamsAdamW {
            lr: options.learning_rate,
            weight_decay: options.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let queries = train.tensor(dims)?;
    let negatives = mine_hard_negatives(&queries, train, memories, options.hard_negatives)?;
    let snapshot = |u: &Var, v: &Var| -> Result<Adapter> {
        Adapter::from_weights(dims, options.rank, {
            let mut w: Vec<f32> = u.as_tensor().flatten_all()?.to_vec1()?;
            w.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
            w
        })
    };
    let mut best = (f64::NEG_INFINITY, start.clone(), 0usize);
    if !validation.vectors.is_empty() {
        best.0 = evaluate(None, validation, memories)?.mrr;
    }
    let mut losses = Vec::with_capacity(options.epochs);
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = options.seed ^ 0x5487_f1e5;
    for epoch in 1..=options.epochs {
        // Fisher–Yates with the seeded generator.
        for i in (1..order.len()).rev() {
            state = state.wrapping_add(1);
            let j = (mix(state) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut total = 0f32;
        let mut steps = 0usize;
        for chunk in order.chunks(options.batch) {
            if chunk.len() < 2 {
                continue;
            }
            // The candidates: the batch's answers (each other's in-batch negatives) and the
            // hard negatives of its questions, each memory once.
            let mut columns: Vec<usize> = Vec::new();
            let mut column_of = std::collections::HashMap::new();
            let mut take = |m: usize, columns: &mut Vec<usize>| -> u32 {
                *column_of.entry(m).or_insert_with(|| {
                    columns.push(m);
                    columns.len() - 1
                }) as u32
            };
            let labels: Vec<u32> = chunk
                .iter()
                .map(|&i| take(train.answers[i], &mut columns))
                .collect();
            for &i in chunk {
                for &m in &negatives[i] {
                    take(m, &mut columns);
                }
            }
            let rows = Tensor::from_vec(
                chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                chunk.len(),
                &device,
            )?;
            let cols = Tensor::from_vec(
                columns.iter().map(|&m| m as u32).collect::<Vec<_>>(),
                columns.len(),
                &device,
            )?;
            let q = queries.index_select(&rows, 0)?;
            let c = memories.matrix.index_select(&cols, 0)?;
            let adapted = (&q + q.matmul(&v.as_tensor().t()?)?.matmul(&u.as_tensor().t()?)?)?;
            let norm = adapted.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
            let adapted = adapted.broadcast_div(&norm)?;
            let logits = (adapted.matmul(&c.t()?)? / options.temperature as f64)?;
            let labels = Tensor::from_vec(labels, chunk.len(), &device)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            opt.backward_step(&loss)?;
            total += loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            steps += 1;
        }
        let mean = total / steps.max(1) as f32;
        if !mean.is_finite() {
            // Diverged: its weights would rank nothing, yet evaluate as perfect (every
            // comparison with NaN is false).
            return Err(Error::invalid(format!(
                "deep memory training diverged in epoch {epoch} (the loss is {mean}): \
                 lower the learning rate"
            )));
        }
        losses.push(mean);
        on_epoch(epoch, options.epochs, mean);
        let current = snapshot(&u, &v)?;
        if validation.vectors.is_empty() {
            best = (0.0, current, epoch);
        } else {
            let mrr = evaluate(Some(&current), validation, memories)?.mrr;
            if mrr > best.0 {
                best = (mrr, current, epoch);
            }
        }
    }
    Ok((best.1, losses, best.2))
}

/// For each training question, the memories its plain embedding ranks highest that are not
/// its answer.
fn mine_hard_negatives(
    queries: &Tensor,
    train: &Questions,
    memories: &MemorySet,
    k: usize,
) -> Result<Vec<Vec<usize>>> {
    let n = train.vectors.len();
    let k = k.min(memories.len().saturating_sub(1));
    if k == 0 {
        return Ok(vec![Vec::new(); n]);
    }
    let norm = queries.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    let unit = queries.broadcast_div(&(norm + 1e-12)?)?;
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(EVAL_BLOCK) {
        let end = (start + EVAL_BLOCK).min(n);
        let scores: Vec<Vec<f32>> = unit
            .narrow(0, start, end - start)?
            .matmul(&memories.matrix.t()?)?
            .to_vec2()?;
        // One buffer of every memory's position, reused row after row; each row keeps its k.
        let mut idx: Vec<usize> = Vec::with_capacity(memories.len());
        for (row, &answer) in scores.iter().zip(&train.answers[start..end]) {
            idx.clear();
            idx.extend((0..row.len()).filter(|&m| m != answer));
            let k = k.min(idx.len());
            idx.select_nth_unstable_by(k.saturating_sub(1), |a, b| row[*b].total_cmp(&row[*a]));
            out.push(idx[..k].to_vec());
        }
    }
    Ok(out)
}

/// The question in a model's reply: its first line up to its first question mark, without
/// quotes, labels or list marks; `None` when there is no question (a reply that is not one,
/// too short, too long, or the note itself).
pub fn parse_question(reply: &str, memory: &str) -> Option<String> {
    let line = reply.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut q = line;
    for label in ["Question:", "question:", "Q:", "-", "*", "1."] {
        q = q.strip_prefix(label).unwrap_or(q).trim();
    }
    let q = q.trim_start_matches(['"', '\'', '`']);
    let q = q[..=q.find('?')?].trim();
    let letters = q.chars().filter(|c| c.is_alphabetic()).count();
    if letters < 8 || q.chars().count() > MAX_QUESTION_CHARS {
        return None;
    }
    if normalized(q) == normalized(memory) {
        return None;
    }
    Some(q.to_owned())
}

/// A question as compared for duplicates: lower case, letters and digits only.
pub fn normalized(q: &str) -> String {
    q.chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_adapter_is_the_identity_and_weights_round_trip() {
        let a = Adapter::identity(6, 2, 7);
        let q = vec![3.0, 0.0, 4.0, 0.0, 0.0, 0.0];
        let out = a.apply(&q).unwrap();
        assert!((out[0] - 0.6).abs() < 1e-6 && (out[2] - 0.8).abs() < 1e-6);
        let b = Adapter::from_weights(6, 2, a.weights()).unwrap();
        assert_eq!(a, b);
        assert!(Adapter::from_weights(6, 2, vec![0.0; 5]).is_err());
        assert!(a.apply(&[1.0]).is_err());
    }

    #[test]
    fn an_adapter_helps_only_when_nothing_gets_worse() {
        let m = |r10: f64, mrr: f64| RecallMetrics {
            recall_at_10: r10,
            mrr,
            ..RecallMetrics::default()
        };
        let e = |before, after, pairs| Evaluation {
            before,
            after,
            pairs,
        };
        assert!(e(m(0.5, 0.3), m(0.6, 0.3), 10).helps());
        assert!(e(m(0.5, 0.3), m(0.5, 0.4), 10).helps());
        assert!(!e(m(0.5, 0.3), m(0.6, 0.2), 10).helps(), "MRR fell");
        assert!(!e(m(0.5, 0.3), m(0.4, 0.5), 10).helps(), "recall fell");
        assert!(!e(m(0.5, 0.3), m(0.5, 0.3), 10).helps(), "no change");
        assert!(!e(m(0.5, 0.3), m(0.9, 0.9), 4).helps(), "too few pairs");
    }

    #[test]
    fn the_split_is_by_memory_and_near_its_share() {
        let held = (0..10_000).filter(|&id| held_out(id)).count();
        assert!((1_700..2_300).contains(&held), "{held}");
        assert_eq!(held_out(42), held_out(42));
    }

    #[test]
    fn questions_are_cleaned_and_bad_ones_dropped() {
        assert_eq!(
            parse_question("Question: \"Where do I live?\"\nmore", "I live in Porto").as_deref(),
            Some("Where do I live?")
        );
        assert_eq!(parse_question("  \n", "x"), None);
        assert_eq!(parse_question("Why?", "x"), None);
        assert_eq!(parse_question("I live in Porto.", "I live in Porto"), None);
        assert_eq!(
            parse_question("Ana: Thanks, see you on Friday!", "x"),
            None,
            "not a question"
        );
        assert_eq!(
            parse_question("What is your plan? And more words", "x").as_deref(),
            Some("What is your plan?")
        );
        assert_eq!(normalized("Where  do I LIVE?"), "where do i live");
    }

    /// Queries are their memory's vector pushed along one shared direction (a template every
    /// question shares): the plain ranking suffers, and the adapter learns to take the
    /// direction out, for memories it never saw.
    #[test]
    fn training_lifts_held_out_recall_on_a_shared_query_shift() {
        let dims = 32;
        let mut state = 11u64;
        let mut vectors = Vec::new();
        for id in 0..200i64 {
            let v: Vec<f32> = (0..dims).map(|_| normal(&mut state)).collect();
            vectors.push((id, v));
        }
        let shift: Vec<f32> = (0..dims).map(|_| normal(&mut state) * 3.0).collect();
        let memories = MemorySet::new(vectors.clone()).unwrap();
        let mut make = |ids: &[i64]| Questions {
            vectors: ids
                .iter()
                .map(|&id| {
                    let mut v = vectors[id as usize].1.clone();
                    normalize(&mut v);
                    v.iter()
                        .zip(&shift)
                        .map(|(x, s)| x + s / 4.0 + normal(&mut state) * 0.05)
                        .collect()
                })
                .collect(),
            answers: ids.iter().map(|&id| id as usize).collect(),
        };
        let (held, trained): (Vec<i64>, Vec<i64>) = (0..200).partition(|&id| held_out(id));
        let train_q = make(&trained);
        let test_q = make(&held);
        let before = evaluate(None, &test_q, &memories).unwrap();
        let (adapter, losses, _) = train(
            &train_q,
            &Questions {
                vectors: vec![],
                answers: vec![],
            },
            &memories,
            &TrainOptions {
                rank: 4,
                epochs: 60,
                learning_rate: 1e-2,
                ..TrainOptions::default()
            },
            &mut |_, _, _| {},
        )
        .unwrap();
        let after = evaluate(Some(&adapter), &test_q, &memories).unwrap();
        assert!(losses.last() < losses.first(), "{losses:?}");
        assert!(
            after.mrr > before.mrr + 0.1,
            "before {before:?} after {after:?}"
        );
    }

    /// Numbers that would make NaN weights are refused, and a NaN score ranks last: NaN
    /// compares false to everything, and ranked first it made a broken adapter look perfect.
    #[test]
    fn nan_never_looks_perfect() {
        let tiny = TrainOptions {
            temperature: 1e-40,
            ..TrainOptions::default()
        };
        assert!(tiny.validate().is_err());
        let memories = MemorySet::new(vec![(0, vec![1.0, 0.0]), (1, vec![0.0, 1.0])]).unwrap();
        let questions = Questions {
            vectors: vec![vec![f32::NAN, f32::NAN], vec![f32::NAN, 0.0]],
            answers: vec![0, 1],
        };
        let m = evaluate(None, &questions, &memories).unwrap();
        assert!(m.mrr < 0.75 && m.recall_at_1 == 0.0, "{m:?}");
    }
}
