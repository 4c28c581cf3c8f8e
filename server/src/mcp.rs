//! The MCP front door: the Model Context Protocol (the official `rmcp` SDK) over standard I/O
//! for one user (`deep-recall mcp --user U`), and over streamable HTTP at `/mcp` under
//! `serve`, where each request's credentials name the user, as on every other door. The tools
//! call the same engine and chat pipeline as GraphQL and REST; core holds the rules.
//!
//! Tools: `add_memory`, `search_memories`, `list_sessions`, `delete_memory`, `chat`. A tool
//! that fails answers an error result (`isError`) whose text starts with the stable code
//! (`BAD_INPUT: ...`, `NOT_FOUND: ...`), so the model can read it and correct itself;
//! arguments that do not fit a tool's schema are refused before it runs, as an error result
//! naming the field.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use recall_core::RetrieveOptions;
use recall_core::chat::{ChatRequest, ChatResult};
use recall_core::engine::NewMemoryText;
use recall_core::retrieval::SearchMode;
use recall_core::types::{
    Filter, Memory, MemoryKind, MetadataCondition, MetadataOp, PageRequest, Retrieved, Role,
    Session,
};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, Implementation, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::error::{ApiError, Code};
use crate::state::AppState;

/// Most memories one search returns.
pub const MAX_TOP_K: u32 = 50;
/// Most sessions one page lists.
pub const MAX_PAGE: u32 = 100;

/// The MCP server over the shared state: one per stdio process, one per HTTP request.
#[derive(Clone)]
pub struct McpServer {
    state: Arc<AppState>,
    /// The one user of a stdio process; `None` over HTTP, where the request's credentials
    /// decide.
    user: Option<Principal>,
    tool_router: ToolRouter<Self>,
}

/// A failed tool call: the result the model sees, with the stable code first.
#[derive(Debug)]
pub struct ToolError(pub ApiError);

impl From<ApiError> for ToolError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<recall_core::Error> for ToolError {
    fn from(e: recall_core::Error) -> Self {
        Self(ApiError::from(e))
    }
}

impl IntoCallToolResult for ToolError {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        // The wait a refusal carries (GraphQL's `retryAfter`), for a model to read.
        let wait = match self.0.retry_after {
            Some(d) if !self.0.message.contains("retry in") => {
                format!(" (retry in {}s)", d.as_secs_f64().ceil() as u64)
            }
            _ => String::new(),
        };
        Ok(CallToolResult::error(vec![ContentBlock::text(format!(
            "{}: {}{wait}",
            self.0.code.as_str(),
            self.0.message
        ))])
        .into())
    }
}

fn bad_input(message: impl Into<String>) -> ToolError {
    ToolError(ApiError::new(Code::BadInput, message))
}

/// What a memory is, as `add_memory` takes it.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KindArg {
    /// A fact about the user (the default).
    #[default]
    Fact,
    /// Part of a persona or standing instruction.
    Persona,
    /// A message.
    Message,
    /// A summary.
    Summary,
}

impl From<KindArg> for MemoryKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Fact => MemoryKind::Fact,
            KindArg::Persona => MemoryKind::Persona,
            KindArg::Message => MemoryKind::Message,
            KindArg::Summary => MemoryKind::Summary,
        }
    }
}

/// Who said a message, as `search_memories` filters by it.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleArg {
    /// The user.
    User,
    /// The assistant.
    Assistant,
    /// A system instruction.
    System,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::User => Role::User,
            RoleArg::Assistant => Role::Assistant,
            RoleArg::System => Role::System,
        }
    }
}

/// Which retrievers a search uses.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModeArg {
    /// Meaning and words, fused and re-ranked (the default).
    #[default]
    Hybrid,
    /// Meaning only.
    Vector,
    /// Words only.
    Text,
}

impl From<ModeArg> for SearchMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Hybrid => SearchMode::Hybrid,
            ModeArg::Vector => SearchMode::Vector,
            ModeArg::Text => SearchMode::Text,
        }
    }
}

/// Arguments of `add_memory`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AddMemoryArgs {
    /// The text to remember.
    pub content: String,
    /// What it is: fact (the default), persona, message or summary.
    #[serde(default)]
    pub kind: Option<KindArg>,
    /// The conversation it belongs to, if any.
    #[serde(default)]
    pub session: Option<String>,
    /// Labels to filter by later.
    #[serde(default)]
    pub tags: Vec<String>,
    /// How much it matters, from 0 to 1 (estimated from the text when absent).
    #[serde(default)]
    pub importance: Option<f32>,
    /// The id of a memory this one replaces (an old fact that changed: "moved to Berlin"
    /// replaces "lives in Paris"); the old one is kept as history and no longer found.
    #[serde(default)]
    pub supersedes: Option<String>,
    /// Forget it this many seconds from now.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Forget it at this time (RFC 3339); give this or `ttl_seconds`, not both.
    #[serde(default)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A JSON object of labels with values, for metadata conditions in searches.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// A condition on a memory's metadata.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ConditionArg {
    /// A dotted path into the metadata (`project`, `source.app`).
    pub key: String,
    /// eq, ne, in, gt, gte, lt, lte, contains or exists.
    pub op: String,
    /// What to compare with: any JSON (an array for `in`, a boolean for `exists`).
    #[serde(default)]
    pub value: serde_json::Value,
}

fn memory_id(id: &str) -> Result<i64, ToolError> {
    id.trim()
        .parse()
        .map_err(|_| bad_input(format!("memory id {id:?} is not a number")))
}

/// Arguments of `search_memories`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SearchArgs {
    /// What to look for, in plain words.
    pub query: String,
    /// How many memories to return (1 to 50; 5 by default).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// hybrid (the default), vector or text.
    #[serde(default)]
    pub mode: Option<ModeArg>,
    /// Only memories of this conversation.
    #[serde(default)]
    pub session: Option<String>,
    /// Only memories whose metadata meets every one of these conditions.
    #[serde(default)]
    pub metadata: Vec<ConditionArg>,
    /// Only memories with every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only these kinds (fact, persona, message, summary); all when empty.
    #[serde(default)]
    pub kinds: Vec<KindArg>,
    /// Only messages said by these roles (user, assistant, system); all when empty.
    #[serde(default)]
    pub roles: Vec<RoleArg>,
    /// Only memories written at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only memories written before this time (RFC 3339).
    #[serde(default)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// What was true at this time (RFC 3339) instead of what is current.
    #[serde(default)]
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
    /// Memories that were replaced by newer ones too (the history).
    #[serde(default)]
    pub include_superseded: bool,
}

/// Arguments of `list_sessions`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListSessionsArgs {
    /// Page size (1 to 100; 20 by default).
    #[serde(default)]
    pub first: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
}

/// Arguments of `delete_memory`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeleteMemoryArgs {
    /// The memory's id, as `search_memories` or `add_memory` returned it.
    pub id: String,
}

/// Arguments of `chat`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChatArgs {
    /// The conversation (created on first use).
    pub session: String,
    /// The user's message.
    pub message: String,
    /// Most tokens to generate (the server's default when absent).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0 picks the likeliest token).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// How many memories to put into the prompt (1 to 50).
    #[serde(default)]
    pub memory_top_k: Option<u32>,
}

/// A memory as the tools return it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct MemoryOut {
    /// Its id (for `delete_memory`).
    pub id: String,
    /// fact, persona, message or summary.
    pub kind: String,
    /// The text.
    pub content: String,
    /// The conversation it came from.
    pub session: Option<String>,
    /// Who said it, for messages.
    pub role: Option<String>,
    /// Labels.
    pub tags: Vec<String>,
    /// What it was stored with (a JSON object), beside the engine's signals.
    pub metadata: serde_json::Value,
    /// When it was written (RFC 3339).
    pub created_at: String,
    /// The memory it replaced, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
    /// The memory that replaced it, if any (it is history then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// When it will be forgotten (RFC 3339), if ever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl From<Memory> for MemoryOut {
    fn from(m: Memory) -> Self {
        Self {
            id: m.id.to_string(),
            kind: m.kind.to_string(),
            content: m.content,
            session: m.session,
            role: m.role.map(|r| r.to_string()),
            tags: m.tags,
            metadata: m.metadata,
            created_at: m.created_at.to_rfc3339(),
            supersedes: m.supersedes.map(|i| i.to_string()),
            superseded_by: m.superseded_by.map(|i| i.to_string()),
            expires_at: m.expires_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// A search result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HitOut {
    /// The memory.
    #[serde(flatten)]
    pub memory: MemoryOut,
    /// Its score (higher is better).
    pub score: f32,
}

impl From<Retrieved> for HitOut {
    fn from(r: Retrieved) -> Self {
        Self {
            score: r.score,
            memory: r.memory.into(),
        }
    }
}

/// What `search_memories` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchOut {
    /// The memories, best first.
    pub hits: Vec<HitOut>,
}

/// A conversation.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionOut {
    /// Its id.
    pub id: String,
    /// Its title.
    pub title: Option<String>,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Last changed (RFC 3339).
    pub updated_at: String,
}

impl From<Session> for SessionOut {
    fn from(s: Session) -> Self {
        Self {
            id: s.id,
            title: s.title,
            created_at: s.created_at.to_rfc3339(),
            updated_at: s.updated_at.to_rfc3339(),
        }
    }
}

/// What `list_sessions` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionsOut {
    /// Newest first.
    pub sessions: Vec<SessionOut>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// What `delete_memory` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeletedOut {
    /// The memory that is gone.
    pub id: String,
    /// Always true (a memory that does not exist is a NOT_FOUND error).
    pub deleted: bool,
}

/// A memory that went into a chat answer's prompt.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ContextOut {
    /// Its id.
    pub id: String,
    /// fact, persona, message or summary.
    pub kind: String,
    /// The text.
    pub content: String,
    /// The conversation it came from.
    pub session: Option<String>,
    /// Its retrieval score.
    pub score: f32,
    /// When it was written (RFC 3339).
    pub created_at: String,
}

/// Token counts.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UsageOut {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

/// What `chat` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ChatOut {
    /// The answer.
    pub text: String,
    /// The memories the answer was given, best first.
    pub context: Vec<ContextOut>,
    /// Token counts.
    pub usage: UsageOut,
    /// stop, length or cancelled.
    pub finish_reason: String,
    /// The model that answered.
    pub model: String,
}

impl From<ChatResult> for ChatOut {
    fn from(r: ChatResult) -> Self {
        Self {
            text: r.text,
            context: r
                .context
                .into_iter()
                .map(|c| ContextOut {
                    id: c.memory_id.to_string(),
                    kind: c.kind.to_string(),
                    content: c.content,
                    session: c.session,
                    score: c.score,
                    created_at: c.created_at.to_rfc3339(),
                })
                .collect(),
            usage: UsageOut {
                prompt_tokens: r.usage.prompt_tokens,
                completion_tokens: r.usage.completion_tokens,
                total_tokens: r.usage.total_tokens,
            },
            finish_reason: serde_json::to_value(r.finish_reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            model: r.model,
        }
    }
}

impl McpServer {
    /// The server for one fixed user (standard I/O).
    pub fn for_user(state: Arc<AppState>, user: Principal) -> Self {
        Self {
            state,
            user: Some(user),
            tool_router: Self::tool_router(),
        }
    }

    /// The server for HTTP, where each request carries its caller (put there by the router's
    /// authentication).
    pub fn for_http(state: Arc<AppState>) -> Self {
        Self {
            state,
            user: None,
            tool_router: Self::tool_router(),
        }
    }

    /// Who is calling: the process's user, or the request's authenticated caller.
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Principal, ToolError> {
        if let Some(p) = &self.user {
            return Ok(p.clone());
        }
        ctx.extensions
            .get::<Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .ok_or_else(|| {
                ToolError(ApiError::new(
                    Code::Unauthenticated,
                    "authentication required",
                ))
            })
    }

    /// Runs one tool call under `limits.request_timeout_secs` (past it: `TIMEOUT`, as every
    /// door answers), and counts it in the metrics by outcome.
    async fn call<T>(
        &self,
        tool: &str,
        work: impl std::future::Future<Output = Result<T, ToolError>>,
    ) -> Result<T, ToolError> {
        let started = Instant::now();
        let limit = std::time::Duration::from_secs(self.state.settings.limits.request_timeout_secs);
        let r = tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(ToolError(ApiError::new(
                Code::Timeout,
                crate::error::TIMED_OUT,
            )))
        });
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) => e.0.code.as_str(),
        };
        self.state
            .metrics
            .request("mcp", tool, outcome, started.elapsed());
        r
    }
}

#[tool_router]
impl McpServer {
    /// Stores a memory (a fact by default) so that later searches and chats find it.
    #[tool(
        description = "Remember something about the user: a fact (the default), a persona line, \
                       a message or a summary. Returns the stored memory with its id."
    )]
    async fn add_memory(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<AddMemoryArgs>,
    ) -> Result<Json<MemoryOut>, ToolError> {
        self.call("add_memory", async {
            let p = self.caller(&ctx)?;
            let memory = self
                .state
                .engine
                .add_memory(
                    &p.user,
                    NewMemoryText {
                        kind: args.kind.unwrap_or_default().into(),
                        content: args.content,
                        session: args.session,
                        tags: args.tags,
                        importance: args.importance,
                        metadata: args.metadata.unwrap_or_default(),
                        expires_at: args.expires_at,
                        ttl_seconds: args.ttl_seconds,
                        supersedes: args.supersedes.as_deref().map(memory_id).transpose()?,
                    },
                )
                .await?;
            Ok(Json(MemoryOut::from(memory)))
        })
        .await
    }

    /// Hybrid retrieval over the caller's memories.
    #[tool(
        description = "Search the user's long-term memory (past conversations and stored facts) \
                       for what matters to a query. Returns memories best first with scores."
    )]
    async fn search_memories(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<SearchArgs>,
    ) -> Result<Json<SearchOut>, ToolError> {
        self.call("search_memories", async {
            let p = self.caller(&ctx)?;
            let top_k = args.top_k.unwrap_or(5);
            if top_k == 0 || top_k > MAX_TOP_K {
                return Err(bad_input(format!("top_k must be 1 to {MAX_TOP_K}")));
            }
            let metadata = args
                .metadata
                .into_iter()
                .map(|c| {
                    Ok(MetadataCondition::new(
                        c.key,
                        c.op.parse::<MetadataOp>()?,
                        c.value,
                    ))
                })
                .collect::<recall_core::Result<Vec<_>>>()?;
            let options = RetrieveOptions {
                filter: Filter {
                    session: args.session,
                    kinds: args.kinds.into_iter().map(Into::into).collect(),
                    roles: args.roles.into_iter().map(Into::into).collect(),
                    tags: args.tags,
                    since: args.since,
                    until: args.until,
                    as_of: args.as_of,
                    include_superseded: args.include_superseded,
                    metadata,
                },
                ..RetrieveOptions::for_mode(args.mode.unwrap_or_default().into(), top_k as usize)
            };
            let started = Instant::now();
            let hits = self
                .state
                .engine
                .retrieve(&p.user, &args.query, &options)
                .await?;
            self.state.metrics.retrieval(started.elapsed());
            Ok(Json(SearchOut {
                hits: hits.into_iter().map(HitOut::from).collect(),
            }))
        })
        .await
    }

    /// The caller's conversations, most recent first, a page at a time.
    #[tool(
        description = "List the user's conversations (sessions), newest first, \
                       a page at a time."
    )]
    async fn list_sessions(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<ListSessionsArgs>,
    ) -> Result<Json<SessionsOut>, ToolError> {
        self.call("list_sessions", async {
            let p = self.caller(&ctx)?;
            let first = args.first.unwrap_or(20);
            if first == 0 || first > MAX_PAGE {
                return Err(bad_input(format!("first must be 1 to {MAX_PAGE}")));
            }
            let page = self
                .state
                .engine
                .sessions(
                    &p.user,
                    &PageRequest {
                        first: first as usize,
                        after: args.after,
                    },
                )
                .await?;
            Ok(Json(SessionsOut {
                sessions: page.items.into_iter().map(SessionOut::from).collect(),
                next_cursor: page.next_cursor,
            }))
        })
        .await
    }

    /// Deletes one of the caller's memories.
    #[tool(description = "Forget one memory of the user, by the id a search returned.")]
    async fn delete_memory(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<DeleteMemoryArgs>,
    ) -> Result<Json<DeletedOut>, ToolError> {
        self.call("delete_memory", async {
            let p = self.caller(&ctx)?;
            let id = memory_id(&args.id)?;
            if self.state.engine.delete_memories(&p.user, &[id]).await? == 0 {
                return Err(ToolError(ApiError::new(
                    Code::NotFound,
                    format!("memory not found: {id}"),
                )));
            }
            Ok(Json(DeletedOut {
                id: id.to_string(),
                deleted: true,
            }))
        })
        .await
    }

    /// One chat turn with memory: the message and the answer are stored in the session.
    #[tool(
        description = "Send a message in a conversation and get the model's answer, written \
                       with the user's memories; both are remembered."
    )]
    async fn chat(
        &self,
        ctx: RequestContext<RoleServer>,
        Parameters(args): Parameters<ChatArgs>,
    ) -> Result<Json<ChatOut>, ToolError> {
        self.call("chat", async {
            let p = self.caller(&ctx)?;
            let mut request = ChatRequest::new(args.session, args.message);
            let g = &mut request.generation;
            g.max_tokens = args
                .max_tokens
                .map_or(self.state.settings.chat.max_tokens, |n| n as usize);
            if let Some(t) = args.temperature {
                g.temperature = t;
            }
            if let Some(k) = args.memory_top_k {
                if k == 0 || k > MAX_TOP_K {
                    return Err(bad_input(format!("memory_top_k must be 1 to {MAX_TOP_K}")));
                }
                request.context.retrieve.top_k = k as usize;
            }
            request.validate()?;
            let result = self.state.chat(&p, request).await?;
            Ok(Json(ChatOut::from(result)))
        })
        .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "deep-recall",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Deep Recall is the user's long-term memory. Search it before answering \
                 questions about the user or earlier conversations; add what the user asks \
                 you to remember.",
            )
    }
}

/// The `/mcp` route: streamable HTTP, stateless (any replica answers any request, no session
/// to keep), answering JSON, behind the authentication and rate limits every door shares.
pub fn routes<S: Clone + Send + Sync + 'static>(state: Arc<AppState>) -> Router<S> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(state.settings.limits.max_body_bytes)
        .with_allowed_hosts(state.settings.mcp.allowed_hosts.clone());
    let factory = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(McpServer::for_http(factory.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", service)
        .layer(middleware::from_fn_with_state(state, authenticate))
}

/// Puts the request's caller into its extensions, where the tools find it; refuses requests
/// without valid credentials (401) or over the rate limits (429).
async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let checked = state
        .authenticate(req.headers(), ip)
        .and_then(|p| state.rate_check(&p.user, ip).map(|()| p));
    match checked {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => {
            state
                .metrics
                .request("mcp", "http", e.code.as_str(), started.elapsed());
            let unauthenticated = e.code == Code::Unauthenticated;
            let mut resp = e.into_response();
            if unauthenticated {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}
