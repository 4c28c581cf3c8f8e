//! Deep memory: the caller's query adapter (see `recall_core::deep_memory`): jobs that write
//! pairs and train, turning it on and off, their own pairs, and where it stands.
use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use recall_core::deep_memory as dm;
use recall_core::jobs::{DeepMemoryTrainParams, JobKind as CoreJobKind};

use super::error::{Code, GqlResult, IntoGql, error};
use super::types::{Job, parse_id};
use super::{actor, caller};

/// Held-out recall figures.
#[derive(SimpleObject, Debug, Clone)]
pub struct RecallFigures {
    /// Share of held-out questions whose memory ranks first.
    pub recall_at_1: f64,
    /// In the first five.
    pub recall_at_5: f64,
    /// In the first ten.
    pub recall_at_10: f64,
    /// Mean reciprocal rank.
    pub mrr: f64,
}

impl From<dm::RecallMetrics> for RecallFigures {
    fn from(m: dm::RecallMetrics) -> Self {
        Self {
            recall_at_1: m.recall_at_1,
            recall_at_5: m.recall_at_5,
            recall_at_10: m.recall_at_10,
            mrr: m.mrr,
        }
    }
}

/// The adapter judged on the held-out pairs (memories it was not trained on).
#[derive(SimpleObject, Debug, Clone)]
pub struct DeepMemoryEvaluation {
    /// With the plain query embedding.
    pub before: RecallFigures,
    /// With the adapter.
    pub after: RecallFigures,
    /// Held-out pairs judged.
    pub pairs: u64,
    /// Whether it helps (it can be turned on only then).
    pub helps: bool,
}

impl From<dm::Evaluation> for DeepMemoryEvaluation {
    fn from(e: dm::Evaluation) -> Self {
        Self {
            helps: e.helps(),
            before: e.before.into(),
            after: e.after.into(),
            pairs: e.pairs as u64,
        }
    }
}

/// Where the caller's deep memory stands.
#[derive(SimpleObject, Debug, Clone)]
pub struct DeepMemoryStatus {
    /// Pairs stored.
    pub pairs: u64,
    /// Of which written by the chat model.
    pub generated_pairs: u64,
    /// Of which held out for evaluation.
    pub held_out_pairs: u64,
    /// Memories with at least one pair.
    pub memories_with_pairs: u64,
    /// The caller's memories.
    pub memories: u64,
    /// Whether an adapter was trained.
    pub trained: bool,
    /// Its version (one up per training).
    pub version: Option<u32>,
    /// Whether it is turned on.
    pub enabled: bool,
    /// Whether searches use it now (on, and trained for the embedding model in use).
    pub active: bool,
    /// Why it is on but not used.
    pub inactive_reason: Option<String>,
    /// The embedding model it was trained for.
    pub embedding_model: Option<String>,
    /// When it was trained.
    pub trained_at: Option<DateTime<Utc>>,
    /// Memories added since.
    pub new_memories: u64,
    /// Its evaluation on the held-out pairs.
    pub evaluation: Option<DeepMemoryEvaluation>,
    /// Its training (pairs, epochs, loss per epoch, seconds) as JSON.
    pub training: Option<Json<serde_json::Value>>,
}

impl From<dm::DeepMemoryStatus> for DeepMemoryStatus {
    fn from(s: dm::DeepMemoryStatus) -> Self {
        Self {
            pairs: s.pairs,
            generated_pairs: s.generated_pairs,
            held_out_pairs: s.held_out_pairs,
            memories_with_pairs: s.memories_with_pairs,
            memories: s.memories,
            trained: s.trained,
            version: s.version,
            enabled: s.enabled,
            active: s.active,
            inactive_reason: s.inactive_reason,
            embedding_model: s.embedding_model,
            trained_at: s.trained_at,
            new_memories: s.new_memories,
            evaluation: s.report.as_ref().map(|r| r.evaluation.clone().into()),
            training: s
                .report
                .and_then(|r| serde_json::to_value(r).ok())
                .map(Json),
        }
    }
}

/// How the chat model writes pairs.
#[derive(InputObject, Debug, Clone, Default)]
pub struct DeepMemoryGenerateInput {
    /// Questions per memory, 1 to 5 (default: the server's `deep_memory.questions_per_memory`).
    pub questions_per_memory: Option<u32>,
    /// Pairs written in this run at most (default and most: the server's
    /// `deep_memory.max_pairs_per_run`).
    pub max_pairs: Option<u32>,
}

/// How to train.
#[derive(InputObject, Debug, Clone, Default)]
pub struct DeepMemoryTrainInput {
    /// Rank of the adapter (1 to 256; default 32).
    pub rank: Option<u32>,
    /// Passes over the pairs (1 to 1000; default 40).
    pub epochs: Option<u32>,
    /// Learning rate (default 0.001).
    pub learning_rate: Option<f64>,
    /// Hard negatives per question (default 32).
    pub hard_negatives: Option<u32>,
}

/// A question that one of the caller's memories answers.
#[derive(InputObject, Debug, Clone)]
pub struct DeepMemoryPairInput {
    /// The question.
    pub question: String,
    /// The memory that answers it.
    pub memory_id: ID,
}

/// Deep memory queries.
#[derive(Default)]
pub struct DeepMemoryQuery;

#[Object]
impl DeepMemoryQuery {
    /// Where the caller's deep memory stands: pairs, the adapter, its evaluation.
    async fn deep_memory_status(&self, ctx: &Context<'_>) -> GqlResult<DeepMemoryStatus> {
        let (state, p) = caller(ctx)?;
        Ok(state.engine.deep_memory_status(&p.user).await.gql()?.into())
    }
}

/// Deep memory mutations.
#[derive(Default)]
pub struct DeepMemoryMutation;

fn or(v: Option<u32>, default: usize) -> usize {
    v.map_or(default, |v| v as usize)
}

#[Object]
impl DeepMemoryMutation {
    /// Queues a job in which the chat model writes questions that the caller's memories
    /// answer (memories that have some already are skipped). Watch it with `jobProgress`.
    async fn deep_memory_generate(
        &self,
        ctx: &Context<'_>,
        input: Option<DeepMemoryGenerateInput>,
    ) -> GqlResult<Job> {
        let (state, p) = caller(ctx)?;
        if state.chat.is_none() {
            return Err(error(
                Code::Unavailable,
                "no chat model is loaded to write questions",
            ));
        }
        let input = input.unwrap_or_default();
        let base = state.settings.deep_memory.generate();
        let options = dm::GenerateOptions {
            questions_per_memory: or(input.questions_per_memory, base.questions_per_memory),
            max_pairs: or(input.max_pairs, base.max_pairs).min(base.max_pairs),
            ..base
        };
        let params =
            serde_json::to_value(options).map_err(|e| error(Code::Internal, e.to_string()))?;
        Ok(state
            .engine
            .queue_deep_memory_job(&p.user, CoreJobKind::DeepMemoryGenerate, params, &actor(p))
            .await
            .gql()?
            .into())
    }

    /// Queues the training of the caller's adapter on their pairs; the job's result holds
    /// its evaluation. A new adapter stays off until `deepMemoryEnable` (a retrained one
    /// stays on if it still helps). Watch it with `jobProgress`.
    async fn deep_memory_train(
        &self,
        ctx: &Context<'_>,
        input: Option<DeepMemoryTrainInput>,
    ) -> GqlResult<Job> {
        let (state, p) = caller(ctx)?;
        let input = input.unwrap_or_default();
        let base = dm::TrainOptions::default();
        let options = dm::TrainOptions {
            rank: or(input.rank, base.rank),
            epochs: or(input.epochs, base.epochs),
            learning_rate: input.learning_rate.unwrap_or(base.learning_rate),
            hard_negatives: or(input.hard_negatives, base.hard_negatives),
            ..base
        };
        let params = serde_json::to_value(DeepMemoryTrainParams {
            options,
            ..DeepMemoryTrainParams::default()
        })
        .map_err(|e| error(Code::Internal, e.to_string()))?;
        Ok(state
            .engine
            .queue_deep_memory_job(&p.user, CoreJobKind::DeepMemoryTrain, params, &actor(p))
            .await
            .gql()?
            .into())
    }

    /// Turns the caller's adapter on. `BAD_INPUT`, with the figures, when none is trained,
    /// it was trained for another embedding model, or it does not help.
    async fn deep_memory_enable(&self, ctx: &Context<'_>) -> GqlResult<DeepMemoryStatus> {
        let (state, p) = caller(ctx)?;
        Ok(state.engine.deep_memory_enable(&p.user).await.gql()?.into())
    }

    /// Turns the caller's adapter off, at once.
    async fn deep_memory_disable(&self, ctx: &Context<'_>) -> GqlResult<DeepMemoryStatus> {
        let (state, p) = caller(ctx)?;
        Ok(state
            .engine
            .deep_memory_disable(&p.user)
            .await
            .gql()?
            .into())
    }

    /// Adds questions that the caller's memories answer (a search result they used, say);
    /// at most 1000 per call. How many were stored. `NOT_FOUND` for a memory that is not
    /// theirs.
    async fn deep_memory_add_pairs(
        &self,
        ctx: &Context<'_>,
        pairs: Vec<DeepMemoryPairInput>,
    ) -> GqlResult<u64> {
        let (state, p) = caller(ctx)?;
        let pairs = pairs
            .into_iter()
            .map(|pair| Ok((pair.question, parse_id("memory", &pair.memory_id)?)))
            .collect::<GqlResult<Vec<_>>>()?;
        state
            .engine
            .deep_memory_add_pairs(&p.user, pairs)
            .await
            .gql()
    }
}
