//! Extra keys (see `recall_core::memory_keys`): turning them on and off for the caller, the
//! job that writes them, and where they stand.
use async_graphql::{Context, InputObject, Object, SimpleObject};
use recall_core::memory_keys::{KeyOptions, KeyStatus};

use super::error::{Code, GqlResult, IntoGql, error};
use super::types::Job;
use super::{actor, caller};

/// Whether the caller's keys are on, and how many they have.
#[derive(SimpleObject, Debug, Clone)]
pub struct MemoryKeysStatus {
    /// The key job writes keys for the caller's memories, and searches use them.
    pub enabled: bool,
    /// Keys stored (memories of kind `KEY`).
    pub keys: u64,
}

impl From<KeyStatus> for MemoryKeysStatus {
    fn from(s: KeyStatus) -> Self {
        Self {
            enabled: s.enabled,
            keys: s.keys,
        }
    }
}

/// How a key job runs; absent fields take the server's defaults.
#[derive(InputObject, Debug, Clone, Default)]
pub struct MemoryKeysWriteInput {
    /// Keys written in this run at most: 1 to the server's `memory_keys.max_keys_per_run`
    /// (its default; more is BAD_INPUT).
    pub max_keys: Option<u32>,
    /// Pause after each group of memories, in milliseconds (a rate limit).
    pub pause_ms: Option<u32>,
    /// Facts: a key for each message and fact from what the model reads in it alone.
    pub facts: Option<bool>,
    /// Session keys: a key for each turn from the topic the model gives its stretch of the
    /// session.
    pub sessions: Option<bool>,
    /// Context keys: a key for each turn holding the turn before it, then its own text
    /// (written without the chat model). Turning all three kinds off is refused
    /// (`BAD_INPUT`).
    pub context: Option<bool>,
}

/// Key queries.
#[derive(Default)]
pub struct MemoryKeysQuery;

#[Object]
impl MemoryKeysQuery {
    /// Whether the caller's keys are on, and how many they have.
    async fn memory_keys_status(&self, ctx: &Context<'_>) -> GqlResult<MemoryKeysStatus> {
        let (state, p) = caller(ctx)?;
        Ok(state.engine.memory_keys_status(&p.user).await.gql()?.into())
    }
}

/// Key mutations.
#[derive(Default)]
pub struct MemoryKeysMutation;

#[Object]
impl MemoryKeysMutation {
    /// Turns the caller's keys on (then queue `memoryKeysWrite`) or off (their keys are
    /// deleted; they are written again when turned back on).
    async fn memory_keys_enable(
        &self,
        ctx: &Context<'_>,
        enabled: bool,
    ) -> GqlResult<MemoryKeysStatus> {
        let (state, p) = caller(ctx)?;
        Ok(state
            .engine
            .set_memory_keys(&p.user, enabled)
            .await
            .gql()?
            .into())
    }

    /// Queues a job that writes the keys the caller's memories lack: context keys for the
    /// turns of sessions, and with the chat model facts (and session topics). Keys must be
    /// on. Watch it with `jobProgress`.
    async fn memory_keys_write(
        &self,
        ctx: &Context<'_>,
        input: Option<MemoryKeysWriteInput>,
    ) -> GqlResult<Job> {
        let (state, p) = caller(ctx)?;
        let input = input.unwrap_or_default();
        let chat = state.chat.is_some();
        if !chat && (input.facts == Some(true) || input.sessions == Some(true)) {
            return Err(error(
                Code::Unavailable,
                "no chat model is loaded to write facts or session keys",
            ));
        }
        let base = state.settings.memory_keys.options(chat);
        let max_keys = match input.max_keys.map(|v| v as usize) {
            None => base.max_keys,
            Some(v) if (1..=base.max_keys).contains(&v) => v,
            Some(v) => {
                return Err(error(
                    Code::BadInput,
                    format!(
                        "maxKeys {v}: 1 to {} on this server (memory_keys.max_keys_per_run)",
                        base.max_keys
                    ),
                ));
            }
        };
        let options = KeyOptions {
            max_keys,
            pause_ms: input.pause_ms.map_or(base.pause_ms, u64::from),
            facts: input.facts.unwrap_or(base.facts),
            sessions: input.sessions.unwrap_or(base.sessions),
            context: input.context.unwrap_or(base.context),
            ..base
        };
        Ok(state
            .engine
            .queue_memory_keys_job(&p.user, &options, &actor(p))
            .await
            .gql()?
            .into())
    }
}
