//! Mutations, by domain.
use async_graphql::{Context, ID, Json, MaybeUndefined, MergedObject, Object};
use chrono::{DateTime, Utc};
use recall_core::chat::ChatRequest;
use recall_core::jobs::JobKind as CoreJobKind;
use recall_core::types::{ExportOptions, NewMessage, SessionPatch};
use recall_core::{MemoryUpdate, NewMemoryText, RetrieveOptions};

use super::error::{Code, GqlResult, IntoGql, error};
use super::types::{
    ChatInput, ChatResult, DeletionReport, Job, Memory, MemoryInput, MemoryUpdateInput, Message,
    MessageInput, Session, SystemJobKind, parse_id,
};
use super::{actor, admin, caller};
use crate::error::ApiError;
use crate::state::AppState;

/// All mutations.
#[derive(MergedObject, Default)]
pub struct Mutation(
    SessionMutation,
    MemoryMutation,
    DataMutation,
    ChatMutation,
    super::deep_memory::DeepMemoryMutation,
    super::memory_keys::MemoryKeysMutation,
);

/// Messages per `addMessages` call at most.
const MAX_MESSAGES_PER_CALL: usize = 1000;

/// Sessions.
#[derive(Default)]
pub struct SessionMutation;

#[Object]
impl SessionMutation {
    /// Creates a session (or changes its title and persona if it exists).
    async fn create_session(
        &self,
        ctx: &Context<'_>,
        id: ID,
        title: Option<String>,
        persona: Option<String>,
    ) -> GqlResult<Session> {
        let (state, p) = caller(ctx)?;
        let patch = SessionPatch {
            title: title.map(Some),
            persona: persona.map(Some),
        };
        Ok(state
            .engine
            .create_session(&p.user, &id, patch)
            .await
            .gql()?
            .into())
    }

    /// Changes a session's title.
    async fn rename_session(&self, ctx: &Context<'_>, id: ID, title: String) -> GqlResult<Session> {
        let (state, p) = caller(ctx)?;
        Ok(state
            .engine
            .rename_session(&p.user, &id, title)
            .await
            .gql()?
            .into())
    }

    /// Deletes a session with its messages and their memories (each memory's deletion is a
    /// `memoryEvents` event).
    async fn delete_session(&self, ctx: &Context<'_>, id: ID) -> GqlResult<bool> {
        let (state, p) = caller(ctx)?;
        state.engine.delete_session(&p.user, &id).await.gql()?;
        Ok(true)
    }
}

/// Messages and memories.
#[derive(Default)]
pub struct MemoryMutation;

#[Object]
impl MemoryMutation {
    /// Stores messages (each also becomes a searchable memory), all or none.
    // A thousand cost as much as a search (their embedding).
    #[graphql(
        complexity = "child_complexity + messages.len() * super::SEARCH_COST / MAX_MESSAGES_PER_CALL"
    )]
    async fn add_messages(
        &self,
        ctx: &Context<'_>,
        messages: Vec<MessageInput>,
    ) -> GqlResult<Vec<Message>> {
        let (state, p) = caller(ctx)?;
        if messages.is_empty() || messages.len() > MAX_MESSAGES_PER_CALL {
            return Err(error(
                Code::BadInput,
                format!("send 1 to {MAX_MESSAGES_PER_CALL} messages per call"),
            ));
        }
        let messages: Vec<NewMessage> = messages.into_iter().map(Into::into).collect();
        let stored = state.engine.add_messages(&p.user, messages).await.gql()?;
        Ok(stored.into_iter().map(|a| a.message.into()).collect())
    }

    /// Adds a memory (a fact by default).
    async fn add_memory(&self, ctx: &Context<'_>, input: MemoryInput) -> GqlResult<Memory> {
        let (state, p) = caller(ctx)?;
        Ok(state
            .engine
            .add_memory(
                &p.user,
                NewMemoryText {
                    kind: input.kind.into(),
                    content: input.content,
                    session: input.session,
                    tags: input.tags,
                    importance: input.importance,
                    metadata: input.metadata.map_or(serde_json::Value::Null, |j| j.0),
                    expires_at: input.expires_at,
                    ttl_seconds: input.ttl_seconds,
                    supersedes: input
                        .supersedes
                        .map(|id| parse_id("memory", &id))
                        .transpose()?,
                },
            )
            .await
            .gql()?
            .into())
    }

    /// Changes a memory.
    async fn update_memory(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: MemoryUpdateInput,
    ) -> GqlResult<Memory> {
        let (state, p) = caller(ctx)?;
        let id = parse_id("memory", &id)?;
        Ok(state
            .engine
            .update_memory(
                &p.user,
                id,
                MemoryUpdate {
                    content: input.content,
                    tags: input.tags,
                    metadata: input.metadata.map(|j| j.0),
                    importance: input.importance,
                    expires_at: match input.expires_at {
                        MaybeUndefined::Undefined => None,
                        MaybeUndefined::Null => Some(None),
                        MaybeUndefined::Value(t) => Some(Some(t)),
                    },
                },
            )
            .await
            .gql()?
            .into())
    }

    /// Deletes a memory.
    async fn delete_memory(&self, ctx: &Context<'_>, id: ID) -> GqlResult<bool> {
        let (state, p) = caller(ctx)?;
        let n = parse_id("memory", &id)?;
        if state.engine.delete_memories(&p.user, &[n]).await.gql()? == 0 {
            return Err(error(Code::NotFound, format!("memory not found: {}", id.0)));
        }
        Ok(true)
    }
}

/// Settings and data rights.
#[derive(Default)]
pub struct DataMutation;

#[Object]
impl DataMutation {
    /// Replaces the caller's settings (a JSON object); audited.
    async fn update_settings(
        &self,
        ctx: &Context<'_>,
        settings: Json<serde_json::Value>,
    ) -> GqlResult<Json<serde_json::Value>> {
        let (state, p) = caller(ctx)?;
        Ok(Json(
            state
                .engine
                .update_settings(&p.user, settings.0, &actor(p))
                .await
                .gql()?,
        ))
    }

    /// Everything stored about the caller, as JSON; audited.
    #[graphql(complexity = "super::EXPORT_COST")]
    async fn export_my_data(&self, ctx: &Context<'_>) -> GqlResult<Json<serde_json::Value>> {
        let (state, p) = caller(ctx)?;
        let export = state
            .engine
            .export(&p.user, &ExportOptions::default(), &actor(p))
            .await
            .gql()?;
        serde_json::to_value(export)
            .map(Json)
            .map_err(|e| error(Code::Internal, format!("export: {e}")))
    }

    /// Deletes everything stored about the caller (messages, memories, vectors, summaries,
    /// settings, cached queries); audited.
    async fn delete_my_data(&self, ctx: &Context<'_>) -> GqlResult<DeletionReport> {
        let (state, p) = caller(ctx)?;
        Ok(state
            .engine
            .delete_user(&p.user, &actor(p))
            .await
            .gql()?
            .into())
    }

    /// Schedules the deletion of everything stored about the caller at `at` (at most a year
    /// ahead; a past time means now); audited. Watch it with `jobProgress`, stop it with
    /// `cancelJob` until it starts. One scheduled deletion at a time.
    async fn schedule_delete_my_data(
        &self,
        ctx: &Context<'_>,
        at: DateTime<Utc>,
    ) -> GqlResult<Job> {
        let (state, p) = caller(ctx)?;
        Ok(state
            .engine
            .schedule_delete_user(&p.user, at, &actor(p))
            .await
            .gql()?
            .into())
    }

    /// Cancels one of the caller's queued jobs (a scheduled deletion, say); audited.
    async fn cancel_job(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Job> {
        let (state, p) = caller(ctx)?;
        let id = parse_id("job", &id)?;
        Ok(state
            .engine
            .cancel_job(&p.user, id, &actor(p))
            .await
            .gql()?
            .into())
    }

    /// Starts an operator's job now (admin only): a backup of every user into
    /// `backup.dir`, or database maintenance. Watch it with `jobProgress(id, system: true)`.
    /// One of each kind at a time.
    async fn run_system_job(&self, ctx: &Context<'_>, kind: SystemJobKind) -> GqlResult<Job> {
        let (state, p) = admin(ctx)?;
        let (kind, params) = match kind {
            SystemJobKind::Backup => {
                let Some(dir) = &state.settings.backup.dir else {
                    return Err(error(Code::BadInput, "no backup directory: set backup.dir"));
                };
                (
                    CoreJobKind::Backup,
                    serde_json::json!({
                        "dir": dir.display().to_string(),
                        "keep": state.settings.backup.keep,
                    }),
                )
            }
            SystemJobKind::Optimize => (CoreJobKind::Optimize, serde_json::json!({})),
            SystemJobKind::RotateKeys => (CoreJobKind::RotateKeys, serde_json::json!({})),
            SystemJobKind::Reembed => (
                CoreJobKind::Reembed,
                serde_json::json!({
                    "batch": state.settings.models.reembed_batch.max(1),
                    "pause_ms": state.settings.models.reembed_pause_ms,
                }),
            ),
        };
        Ok(state
            .engine
            .schedule_system_job(kind, chrono::Utc::now(), params, &actor(p))
            .await
            .gql()?
            .into())
    }

    /// Deletes everything stored about `user` (admin only); audited.
    async fn delete_user_data(&self, ctx: &Context<'_>, user: ID) -> GqlResult<DeletionReport> {
        let (state, p) = admin(ctx)?;
        Ok(state
            .engine
            .delete_user(&user, &actor(p))
            .await
            .gql()?
            .into())
    }
}

/// Chat.
#[derive(Default)]
pub struct ChatMutation;

#[Object]
impl ChatMutation {
    /// Answers a message with the user's memory, all at once (see the `chat` subscription for
    /// the streamed form).
    #[graphql(complexity = "super::CHAT_COST + child_complexity")]
    async fn chat(&self, ctx: &Context<'_>, input: ChatInput) -> GqlResult<ChatResult> {
        let (state, p) = caller(ctx)?;
        let request = chat_request(state, input)?;
        let result = state.chat(p, request).await.map_err(ApiError::gql)?;
        Ok(result.into())
    }
}

/// The core request for a `ChatInput`, with the server's defaults: fields mapped, the rules
/// are core's ([`ChatRequest::validate`]).
pub(crate) fn chat_request(state: &AppState, input: ChatInput) -> GqlResult<ChatRequest> {
    let mut r = ChatRequest::new(input.session, input.message);
    let g = &mut r.generation;
    g.max_tokens = input
        .max_tokens
        .map_or(state.settings.chat.max_tokens, |n| n as usize);
    if let Some(t) = input.temperature {
        g.temperature = t;
    }
    g.top_p = input.top_p.or(g.top_p);
    g.top_k = input.top_k.map(|k| k as usize);
    g.seed = input.seed.or(g.seed);
    g.stop = input.stop;
    r.context.system = input.system;
    r.context.retrieve = RetrieveOptions::for_mode(
        input.mode.into(),
        input
            .memory_top_k
            .map_or(r.context.retrieve.top_k, |k| k as usize),
    );
    r.validate().gql()?;
    Ok(r)
}
