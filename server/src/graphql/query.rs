//! Queries, by domain.
use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, Json, MergedObject, Object};
use recall_core::RetrieveOptions;
use recall_core::types::{Filter, PageRequest};

use super::error::{GqlResult, IntoGql};
use super::types::{
    Health, Job, Memory, MemoryFilter, Message, SearchMode, SearchResult, Session, User, parse_id,
};
use super::{admin, caller};

/// All queries.
#[derive(MergedObject, Default)]
pub struct Query(
    UserQuery,
    MemoryQuery,
    SearchQuery,
    JobQuery,
    SystemQuery,
    super::deep_memory::DeepMemoryQuery,
    super::memory_keys::MemoryKeysQuery,
);

/// Page size when `first` is absent.
const DEFAULT_PAGE: i32 = 20;

fn page(first: Option<i32>, after: Option<String>) -> GqlResult<PageRequest> {
    // Core's limits decide what is in range; a negative count is out of it.
    Ok(PageRequest {
        first: usize::try_from(first.unwrap_or(DEFAULT_PAGE)).unwrap_or(0),
        after,
    })
}

fn connection<T, N>(
    page: recall_core::types::Page<T>,
    had_after: bool,
    node: impl Fn(T) -> N,
) -> Connection<String, N>
where
    N: async_graphql::OutputType,
{
    let mut c = Connection::new(had_after, page.next_cursor.is_some());
    c.edges.extend(
        page.items
            .into_iter()
            .zip(page.cursors)
            .map(|(item, cursor)| Edge::new(cursor, node(item))),
    );
    c
}

/// The caller and their settings.
#[derive(Default)]
pub struct UserQuery;

#[Object]
impl UserQuery {
    /// The calling user.
    async fn me(&self, ctx: &Context<'_>) -> GqlResult<User> {
        let (state, p) = caller(ctx)?;
        let engine = &state.engine;
        let user = engine.user(&p.user).await.gql()?;
        let memory_count = match &user {
            Some(_) => engine.count_memories(&p.user).await.gql()?,
            None => 0,
        };
        Ok(User {
            id: ID(p.user.clone()),
            admin: p.admin,
            created_at: user.map(|u| u.created_at),
            memory_count,
        })
    }

    /// The caller's settings (a JSON object).
    async fn settings(&self, ctx: &Context<'_>) -> GqlResult<Json<serde_json::Value>> {
        let (state, p) = caller(ctx)?;
        Ok(Json(state.engine.settings(&p.user).await.gql()?))
    }
}

/// Sessions, messages and memories.
#[derive(Default)]
pub struct MemoryQuery;

#[Object]
impl MemoryQuery {
    /// The caller's sessions, newest first.
    async fn sessions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<Connection<String, Session>> {
        let (state, p) = caller(ctx)?;
        let had_after = after.is_some();
        let got = state
            .engine
            .sessions(&p.user, &page(first, after)?)
            .await
            .gql()?;
        Ok(connection(got, had_after, Session::from))
    }

    /// One of the caller's sessions.
    async fn session(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Session>> {
        let (state, p) = caller(ctx)?;
        Ok(state
            .engine
            .session(&p.user, &id)
            .await
            .gql()?
            .map(Into::into))
    }

    /// Messages of one of the caller's sessions, oldest first.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        session: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<Connection<String, Message>> {
        let (state, p) = caller(ctx)?;
        let had_after = after.is_some();
        let got = state
            .engine
            .messages(&p.user, &session, &page(first, after)?)
            .await
            .gql()?;
        Ok(connection(got, had_after, Message::from))
    }

    /// The caller's memories, newest first.
    async fn memories(
        &self,
        ctx: &Context<'_>,
        filter: Option<MemoryFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<Connection<String, Memory>> {
        let (state, p) = caller(ctx)?;
        let had_after = after.is_some();
        let filter: Filter = filter.unwrap_or_default().into();
        let got = state
            .engine
            .memories(&p.user, &filter, &page(first, after)?)
            .await
            .gql()?;
        Ok(connection(got, had_after, Memory::from))
    }

    /// One of the caller's memories.
    async fn memory(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Memory>> {
        let (state, p) = caller(ctx)?;
        let id = parse_id("memory", &id)?;
        Ok(state
            .engine
            .memory(&p.user, id)
            .await
            .gql()?
            .map(Into::into))
    }

    /// A memory's supersede history, oldest first: the memories it replaced, itself, and
    /// those that replaced it. NOT_FOUND when the caller has no such memory.
    async fn memory_history(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Vec<Memory>> {
        let (state, p) = caller(ctx)?;
        let id = parse_id("memory", &id)?;
        Ok(state
            .engine
            .memory_history(&p.user, id)
            .await
            .gql()?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

/// Search.
#[derive(Default)]
pub struct SearchQuery;

#[Object]
impl SearchQuery {
    /// The caller's memories that matter for `query`, best first.
    #[graphql(complexity = "super::SEARCH_COST + child_complexity")]
    async fn search(
        &self,
        ctx: &Context<'_>,
        query: String,
        #[graphql(default = 10)] top_k: i32,
        #[graphql(default)] mode: SearchMode,
        filter: Option<MemoryFilter>,
    ) -> GqlResult<Vec<SearchResult>> {
        let (state, p) = caller(ctx)?;
        // Core's limits decide what is in range; a negative count is out of it.
        let options = RetrieveOptions {
            filter: filter.unwrap_or_default().into(),
            ..RetrieveOptions::for_mode(mode.into(), usize::try_from(top_k).unwrap_or(0))
        };
        let started = std::time::Instant::now();
        let hits = state
            .engine
            .retrieve(&p.user, &query, &options)
            .await
            .gql()?;
        state.metrics.retrieval(started.elapsed());
        Ok(hits.into_iter().map(Into::into).collect())
    }
}

/// Background jobs.
#[derive(Default)]
pub struct JobQuery;

#[Object]
impl JobQuery {
    /// One of the caller's background jobs.
    async fn job(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Job>> {
        let (state, p) = caller(ctx)?;
        let id = parse_id("job", &id)?;
        Ok(state.engine.job(&p.user, id).await.gql()?.map(Into::into))
    }

    /// The caller's background jobs, newest first.
    async fn jobs(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<Connection<String, Job>> {
        let (state, p) = caller(ctx)?;
        let had_after = after.is_some();
        let got = state
            .engine
            .jobs(&p.user, &page(first, after)?)
            .await
            .gql()?;
        Ok(connection(got, had_after, Job::from))
    }
}

/// Health and operator queries.
#[derive(Default)]
pub struct SystemQuery;

#[Object]
impl SystemQuery {
    /// Whether the server can serve (the store answers; which models are loaded).
    async fn health(&self, ctx: &Context<'_>) -> GqlResult<Health> {
        let (state, _) = caller(ctx)?;
        let ok = state.ready().await.is_ok();
        Ok(Health {
            status: if ok { "ok" } else { "degraded" }.into(),
            store: state.engine.backend().into(),
            embedding_model: state.engine.embedder().model_id().into(),
            chat_model: state.chat.as_ref().map(|c| c.model().name().to_owned()),
            queue_depth: state
                .chat
                .as_ref()
                .map_or(0, |c| c.model().queue_depth() as u64),
        })
    }

    /// The audit log of a user's data (admin only).
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        user: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<Json<serde_json::Value>> {
        let (state, _) = admin(ctx)?;
        let got = state
            .engine
            .audit_log(&user, &page(first, after)?)
            .await
            .gql()?;
        Ok(Json(serde_json::json!({
            "entries": got.items,
            "nextCursor": got.next_cursor,
        })))
    }
}
