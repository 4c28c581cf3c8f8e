//! Queries, by domain.
use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, Json, MergedObject, Object};
use recall_core::RetrieveOptions;
use recall_core::types::{Filter, PageRequest};

use super::error::{Code, GqlResult, IntoGql, error};
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

/// Stretches of rows without a match read for one page of a metadata-filtered listing.
const MAX_EMPTY_STRETCHES: usize = 10;

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

/// A metadata condition is checked on a bounded stretch of rows per page: a stretch with no
/// match comes back empty with where to go on. A connection's cursor comes from its last edge,
/// so such a page would leave the client nowhere to go on from: the next stretches are read
/// here instead (`fetch` reads the page after a cursor), up to a bound, past which the filter
/// is refused as too rare to page through.
async fn past_empty_stretches<T, F, Fut>(
    mut got: recall_core::types::Page<T>,
    mut fetch: F,
) -> GqlResult<recall_core::types::Page<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = GqlResult<recall_core::types::Page<T>>>,
{
    let mut stretches = 1;
    while got.items.is_empty()
        && let Some(next) = got.next_cursor.take()
    {
        if stretches == MAX_EMPTY_STRETCHES {
            return Err(error(
                Code::BadInput,
                format!(
                    "the filter's metadata conditions matched none of the {} newest memories \
                     read: narrow it (a time range, tags, a session)",
                    stretches * recall_core::limits::MAX_METADATA_SCAN
                ),
            ));
        }
        got = fetch(next).await?;
        stretches += 1;
    }
    Ok(got)
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
    // With metadata conditions it reads rows past the page to find its own: a search's cost.
    #[graphql(
        complexity = "child_complexity + if filter.as_ref().is_some_and(|f| !f.metadata.is_empty()) { super::SEARCH_COST } else { 0 }"
    )]
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
        let request = page(first, after)?;
        let got = state
            .engine
            .memories(&p.user, &filter, &request)
            .await
            .gql()?;
        let got = past_empty_stretches(got, |next| {
            let request = PageRequest {
                after: Some(next),
                ..request.clone()
            };
            let (engine, user, filter) = (state.engine.clone(), p.user.clone(), filter.clone());
            async move { engine.memories(&user, &filter, &request).await.gql() }
        })
        .await?;
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

#[cfg(test)]
mod tests {
    use recall_core::types::Page;

    use super::*;

    fn stretch(items: Vec<i32>, next: Option<&str>) -> Page<i32> {
        Page {
            cursors: items.iter().map(|i| i.to_string()).collect(),
            items,
            next_cursor: next.map(str::to_owned),
        }
    }

    /// Empty stretches are read past to the first match, so the page has an edge to go on
    /// from; a filter that matches nothing in many stretches is refused, never an endless
    /// empty page.
    #[tokio::test]
    async fn empty_stretches_are_read_past_up_to_a_bound() {
        let asked = std::sync::Mutex::new(Vec::new());
        let got = past_empty_stretches(stretch(vec![], Some("a")), |next| {
            asked.lock().unwrap().push(next.clone());
            let page = match next.as_str() {
                "a" => stretch(vec![], Some("b")),
                _ => stretch(vec![7], Some("c")),
            };
            async move { Ok(page) }
        })
        .await
        .unwrap();
        assert_eq!(got.items, [7]);
        assert_eq!(got.next_cursor.as_deref(), Some("c"));
        assert_eq!(*asked.lock().unwrap(), ["a", "b"]);

        // A page with items, or the last page, is left as it is.
        let last = past_empty_stretches(stretch(vec![], None), |_| async {
            Err(error(Code::Internal, "nothing more to read"))
        })
        .await
        .unwrap();
        assert!(last.items.is_empty() && last.next_cursor.is_none());

        let err = past_empty_stretches(stretch(vec![], Some("x")), |_| async {
            Ok(stretch(vec![], Some("x")))
        })
        .await
        .unwrap_err();
        assert!(err.message.contains("narrow it"), "{}", err.message);
    }
}
