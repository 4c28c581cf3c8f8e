//! The HTTP server: shared state, the router (GraphQL over HTTP and WebSocket, OpenAI-compatible
//! REST, health, readiness, metrics), authentication and rate limits at the door, request
//! logs, and graceful shutdown.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use async_graphql::{Data, Response as GqlResponse, ServerError};
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use recall_core::Engine;
use recall_core::chat::{ChatPipeline, ChatRequest, ChatResult, ChatStream};
use tokio::sync::Notify;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use crate::auth::{AuthError, Authenticator, Credentials, Principal};
use crate::graphql::error::{Code, code_of};
use crate::graphql::{AppSchema, build_schema};
use crate::limits::{RateLimiter, StreamLimiter, StreamSlot};
use crate::metrics::{Gauges, Metrics};
use crate::settings::Settings;

/// An error at the door or in a shared operation, before it is shaped for GraphQL or REST.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The stable code.
    pub code: Code,
    /// What to tell the client.
    pub message: String,
    /// For `RATE_LIMITED`: when to come back.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with no retry hint.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// As a GraphQL error (with `extensions.code`, and `retryAfter` in seconds when known).
    pub fn gql(self) -> async_graphql::Error {
        use async_graphql::ErrorExtensions;
        let retry = self.retry_after.map(|d| d.as_secs_f64().ceil() as u64);
        async_graphql::Error::new(self.message).extend_with(move |_, e| {
            e.set("code", self.code.as_str());
            if let Some(s) = retry {
                e.set("retryAfter", s);
            }
        })
    }

    /// As a GraphQL server error (`extensions.code`, and `retryAfter` in seconds when known),
    /// for places that answer before any resolver runs.
    pub fn server_error(&self) -> ServerError {
        let mut err = ServerError::new(self.message.clone(), None);
        let mut ext = async_graphql::ErrorExtensionValues::default();
        ext.set("code", self.code.as_str());
        if let Some(d) = self.retry_after {
            ext.set("retryAfter", d.as_secs_f64().ceil() as u64);
        }
        err.extensions = Some(ext);
        err
    }

    /// A GraphQL-over-HTTP response with the matching status.
    fn gql_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::json!({ "data": null, "errors": [self.server_error()] });
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(d) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_value(d));
        }
        resp
    }
}

impl From<recall_core::Error> for ApiError {
    fn from(err: recall_core::Error) -> Self {
        let code = code_of(err.kind());
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
            return Self::new(code, "internal error");
        }
        Self::new(code, err.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        Self::new(Code::Unauthenticated, err.to_string())
    }
}

pub(crate) fn retry_after_value(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs_f64().ceil().max(1.0) as u64)
}

/// Everything a request can reach.
pub struct AppState {
    /// The settings the server started with.
    pub settings: Settings,
    /// Store, embedder and retrieval.
    pub engine: Engine,
    /// The chat pipeline; `None` when no chat model is loaded (chat is then `UNAVAILABLE`).
    pub chat: Option<ChatPipeline>,
    /// Credential checks.
    pub auth: Authenticator,
    /// Per-user request rate.
    pub user_rate: RateLimiter,
    /// Per-IP request rate.
    pub ip_rate: RateLimiter,
    /// Open streams per user.
    pub streams: StreamLimiter,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Set when shutdown begins: new work is refused.
    pub shutting_down: AtomicBool,
    /// Woken when shutdown begins.
    pub shutdown: Notify,
    next_request: AtomicU64,
}

impl AppState {
    /// State for `settings` over `engine` (and `chat`, when a model is loaded).
    pub fn new(
        settings: Settings,
        engine: Engine,
        chat: Option<ChatPipeline>,
    ) -> recall_core::Result<Self> {
        let auth = Authenticator::new(&settings.auth)?;
        let l = &settings.limits;
        Ok(Self {
            user_rate: RateLimiter::new(l.requests_per_minute, l.burst),
            ip_rate: RateLimiter::new(l.ip_requests_per_minute, l.ip_burst),
            streams: StreamLimiter::new(l.max_streams_per_user),
            auth,
            engine,
            chat,
            metrics: Metrics::default(),
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
            next_request: AtomicU64::new(1),
            settings,
        })
    }

    /// Takes a request token for the user and for the IP.
    pub fn rate_check(&self, user: &str, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let limited = |wait: Duration, what: &str| {
            self.metrics.rate_limited();
            ApiError {
                code: Code::RateLimited,
                message: format!(
                    "too many requests {what}; retry in {:.1}s",
                    wait.as_secs_f64()
                ),
                retry_after: Some(wait),
            }
        };
        if let Some(ip) = ip {
            self.ip_rate
                .check(&ip.to_string())
                .map_err(|w| limited(w, "from this address"))?;
        }
        self.user_rate
            .check(user)
            .map_err(|w| limited(w, "for this user"))
    }

    fn pipeline(&self) -> Result<&ChatPipeline, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                Code::Unavailable,
                "the server is shutting down",
            ));
        }
        self.chat.as_ref().ok_or_else(|| {
            ApiError::new(
                Code::Unavailable,
                "no chat model is loaded (run `deep-recall models fetch`)",
            )
        })
    }

    fn slot(&self, user: &str) -> Result<StreamSlot, ApiError> {
        self.streams.acquire(user).ok_or_else(|| ApiError {
            code: Code::RateLimited,
            message: format!(
                "at most {} chat streams per user at once",
                self.settings.limits.max_streams_per_user
            ),
            retry_after: Some(Duration::from_secs(1)),
        })
    }

    /// Starts a streamed chat turn for the caller; the slot counts against their stream limit
    /// until dropped.
    pub async fn chat_stream(
        &self,
        p: &Principal,
        request: ChatRequest,
    ) -> Result<(ChatStream, StreamSlot), ApiError> {
        let pipeline = self.pipeline()?;
        let slot = self.slot(&p.user)?;
        let stream = pipeline.stream(&p.user, request).await?;
        self.metrics
            .retrieval(Duration::from_secs_f64(stream.retrieval_ms / 1000.0));
        Ok((stream, slot))
    }

    /// A whole chat turn for the caller.
    pub async fn chat(&self, p: &Principal, request: ChatRequest) -> Result<ChatResult, ApiError> {
        let pipeline = self.pipeline()?;
        let _slot = self.slot(&p.user)?;
        let result = pipeline.chat(&p.user, request).await?;
        self.metrics.retrieval(Duration::from_secs_f64(
            result.latency.retrieval_ms / 1000.0,
        ));
        self.metrics.tokens(result.usage.completion_tokens);
        Ok(result)
    }

    /// Ready when the store answers (and not shutting down).
    pub async fn ready(&self) -> Result<(), ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::new(Code::Unavailable, "shutting down"));
        }
        self.engine
            .store()
            .get_user("deep-recall-readiness-probe")
            .await?;
        Ok(())
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            queue_depth: self.chat.as_ref().map_or(0, |c| c.model().queue_depth()),
            active_streams: self.streams.total(),
            memory_subscribers: self.engine.events().subscribers(),
        }
    }

    /// Who sent this request (headers only).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Ok(self.auth.authenticate(&Credentials {
            authorization: get("authorization"),
            api_key: get("x-api-key"),
            user_id: get("x-user-id"),
        })?)
    }

    /// Begins shutdown: readiness fails, new chats are refused, streams are told to finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.shutdown.notify_waiters();
    }
}

/// The router's state: the shared state and the schema built over it.
#[derive(Clone)]
pub struct Server {
    /// Shared state.
    pub state: Arc<AppState>,
    /// The GraphQL schema.
    pub schema: AppSchema,
}

/// A request's id (from `X-Request-Id`, or made up), in request extensions and logs.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The router with every route and layer.
pub fn router(state: Arc<AppState>) -> Router {
    let schema = build_schema(state.clone());
    let server = Server {
        state: state.clone(),
        schema,
    };
    let cors = cors(&state.settings.cors_origins);
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .nest("/v1", crate::rest::routes())
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(server.clone(), access_log))
        .layer(RequestBodyLimitLayer::new(
            state.settings.limits.max_body_bytes,
        ))
        .layer(cors)
        .with_state(server)
}

fn cors(origins: &[String]) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-api-key"),
            header::HeaderName::from_static("x-user-id"),
            header::HeaderName::from_static("x-request-id"),
        ]);
    if origins.iter().any(|o| o == "*") {
        return base.allow_origin(AllowOrigin::any());
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    base.allow_origin(AllowOrigin::list(list))
}

async fn access_log(State(server): State<Server>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128 && !v.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "req-{:x}",
                server.state.next_request.fetch_add(1, Ordering::Relaxed)
            )
        });
    req.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = Instant::now();
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // No bodies and no message content here: method, path, status and time only.
    tracing::info!(
        request_id = %id,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

async fn graphql_post(
    State(server): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> Response {
    let state = &server.state;
    let started = Instant::now();
    let request = request.into_inner();
    let operation = request
        .operation_name
        .clone()
        .unwrap_or_else(|| "anonymous".into());
    let principal = match state.authenticate(&headers) {
        Ok(p) => p,
        Err(e) => {
            state
                .metrics
                .request("graphql", &operation, e.code.as_str(), started.elapsed());
            return e.gql_response();
        }
    };
    if let Err(e) = state.rate_check(&principal.user, Some(peer.ip())) {
        state
            .metrics
            .request("graphql", &operation, e.code.as_str(), started.elapsed());
        return e.gql_response();
    }
    let timeout = Duration::from_secs(state.settings.limits.request_timeout_secs);
    let response: GqlResponse =
        match tokio::time::timeout(timeout, server.schema.execute(request.data(principal))).await {
            Ok(r) => r,
            Err(_) => {
                let e = ApiError::new(Code::Unavailable, "the request timed out");
                state
                    .metrics
                    .request("graphql", &operation, e.code.as_str(), started.elapsed());
                return e.gql_response();
            }
        };
    let outcome = response
        .errors
        .first()
        .and_then(|e| e.extensions.as_ref())
        .and_then(|x| x.get("code"))
        .map(|v| v.to_string().trim_matches('"').to_owned())
        .unwrap_or_else(|| {
            if response.errors.is_empty() {
                "ok".into()
            } else {
                "BAD_INPUT".into()
            }
        });
    state
        .metrics
        .request("graphql", &operation, &outcome, started.elapsed());
    GraphQLResponse::from(response).into_response()
}

/// WebSocket upgrade (graphql-transport-ws and the older graphql-ws), or GraphiQL when enabled.
async fn graphql_get(State(server): State<Server>, req: Request) -> Response {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        if server.state.settings.graphiql {
            return Html(
                GraphiQLSource::build()
                    .endpoint("/graphql")
                    .subscription_endpoint("/graphql")
                    .finish(),
            )
            .into_response();
        }
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "POST GraphQL requests here, or open a WebSocket",
        )
            .into_response();
    }
    let (mut parts, _) = req.into_parts();
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let headers = parts.headers.clone();
    let schema = server.schema.clone();
    let state = server.state.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let init_state = state.clone();
            let ws = GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    // Credentials from the connection_init payload (browsers cannot set
                    // headers on WebSockets), else from the upgrade request's headers.
                    let principal = match init_credentials(&payload) {
                        Some(c) => init_state.auth.authenticate(&c.as_credentials()),
                        None => init_state
                            .authenticate(&headers)
                            .map_err(|e| crate::auth::AuthError::Invalid(e.message)),
                    }
                    .map_err(|e| ApiError::from(e).gql())?;
                    let mut data = Data::default();
                    data.insert(principal);
                    data.insert(crate::graphql::OverWebSocket { ip });
                    Ok(data)
                })
                .keepalive_timeout(Duration::from_secs(60))
                .serve();
            let shutdown = state.clone();
            tokio::select! {
                () = ws => {}
                () = async move {
                    shutdown.shutdown.notified().await;
                    // Let streams that are under way finish, for a while.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while shutdown.streams.total() > 0 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                } => {}
            }
        })
}

/// Credentials named in a `connection_init` payload.
struct InitCredentials {
    authorization: Option<String>,
    api_key: Option<String>,
    user_id: Option<String>,
}

impl InitCredentials {
    fn as_credentials(&self) -> Credentials<'_> {
        Credentials {
            authorization: self.authorization.as_deref(),
            api_key: self.api_key.as_deref(),
            user_id: self.user_id.as_deref(),
        }
    }
}

fn init_credentials(payload: &serde_json::Value) -> Option<InitCredentials> {
    let obj = payload.as_object()?;
    let find = |names: &[&str]| {
        obj.iter()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
    };
    let token = find(&["token"]).map(|t| format!("Bearer {t}"));
    let c = InitCredentials {
        authorization: find(&["authorization"]).or(token),
        api_key: find(&["x-api-key", "apiKey"]),
        user_id: find(&["x-user-id", "userId"]),
    };
    (c.authorization.is_some() || c.api_key.is_some() || c.user_id.is_some()).then_some(c)
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(server): State<Server>) -> Response {
    let state = &server.state;
    let models = serde_json::json!({
        "embedding": state.engine.embedder().model_id(),
        "chat": state.chat.as_ref().map(|c| c.model().name().to_owned()),
    });
    match state.ready().await {
        Ok(()) => axum::Json(serde_json::json!({
            "status": "ready",
            "store": state.engine.store().backend(),
            "models": models,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "unavailable", "reason": e.message })),
        )
            .into_response(),
    }
}

async fn metrics(State(server): State<Server>) -> Response {
    let state = &server.state;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(state.gauges()),
    )
        .into_response()
}

/// Serves until `shutdown` resolves, then stops taking connections, lets streams under way
/// finish (for a while) and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let on_shutdown = state.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing streams under way");
        on_shutdown.begin_shutdown();
    })
    .await
}
