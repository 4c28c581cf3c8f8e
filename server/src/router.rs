//! The HTTP router: GraphQL over HTTP and WebSocket, the OpenAI-compatible REST API under
//! `/v1`, MCP at `/mcp`, the web UI at `/`, health, readiness and metrics; authentication and rate limits at the door, request
//! logs, and graceful shutdown.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use async_graphql::{Data, Response as GqlResponse};
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::Router;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State, WebSocketUpgrade,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::Instrument;

use crate::auth::Credentials;
use crate::error::{ApiError, Code, TIMED_OUT, retry_after_value};
use crate::graphql::{AppSchema, build_schema};
use crate::rest;
use crate::state::AppState;

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
    let mut app = Router::new();
    if state.settings.mcp.enabled {
        app = app.merge(crate::mcp::routes(state.clone()));
    }
    let app = app
        .route("/graphql", get(graphql_get).post(graphql_post))
        .nest("/v1", rest::routes().with_state(state.clone()))
        .route("/openapi.json", get(openapi))
        .route("/health", get(health))
        .route("/ready", get(ready));
    // On the main address unless the settings give it one of its own.
    let app = if state.settings.metrics.bind.is_none() {
        app.route("/metrics", get(metrics))
    } else {
        app
    };
    crate::web::mount(app, &state.settings.web)
        .layer(middleware::from_fn_with_state(server.clone(), access_log))
        .layer(middleware::from_fn_with_state(
            server.clone(),
            client_address,
        ))
        .layer(RequestBodyLimitLayer::new(
            state.settings.limits.max_body_bytes,
        ))
        // The limit above is the one: axum's own 2 MiB cap on extracted bodies would
        // otherwise stay below a larger `max_body_bytes`.
        .layer(DefaultBodyLimit::disable())
        .layer(cors)
        .with_state(server)
}

fn cors(origins: &[String]) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        // Credentials travel in headers, never cookies, so any header a client sends may be
        // allowed (the session header, the OpenAI SDK's `x-stainless-*`); the origins are
        // what is checked.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            header::RETRY_AFTER,
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

/// Behind trusted proxies, replaces the connection's address in the request with the
/// client's (see [`crate::proxy`]), so that per-IP limits and logs see the client.
async fn client_address(State(server): State<Server>, mut req: Request, next: Next) -> Response {
    let proxies = &server.state.proxies;
    if !proxies.is_empty()
        && let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied()
    {
        let client = proxies.client(peer.ip(), req.headers());
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
    }
    next.run(req).await
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
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let started = Instant::now();
    // The span of the request (exported as a trace root, or under the caller's
    // `traceparent`, when telemetry is on); no bodies and no content in it either.
    let span = tracing::info_span!(
        "request",
        http.request.method = %method,
        url.path = %path,
        request_id = %id,
        http.response.status_code = tracing::field::Empty,
    );
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(crate::telemetry::remote_context(req.headers()));
    }
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // No bodies and no message content here: method, path, status and time only.
    tracing::info!(
        request_id = %id,
        client = %client,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// A GraphQL-over-HTTP error response with the matching status.
fn gql_response(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({ "data": null, "errors": [e.server_error()] });
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(d) = e.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, retry_after_value(d));
    }
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
    let principal = match state.authenticate(&headers, Some(peer.ip())) {
        Ok(p) => p,
        Err(e) => {
            state
                .metrics
                .request("graphql", &operation, e.code.as_str(), started.elapsed());
            return gql_response(e);
        }
    };
    if let Err(e) = state.rate_check(&principal.user, Some(peer.ip())) {
        state
            .metrics
            .request("graphql", &operation, e.code.as_str(), started.elapsed());
        return gql_response(e);
    }
    let timeout = Duration::from_secs(state.settings.limits.request_timeout_secs);
    let response: GqlResponse =
        match tokio::time::timeout(timeout, server.schema.execute(request.data(principal))).await {
            Ok(r) => r,
            Err(_) => {
                let e = ApiError::new(Code::Timeout, TIMED_OUT);
                state
                    .metrics
                    .request("graphql", &operation, e.code.as_str(), started.elapsed());
                return gql_response(e);
            }
        };
    let outcome = crate::graphql::outcome(&response);
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
            let _open = OpenSocket::new(state.clone());
            let init_state = state.clone();
            // The socket's writes go through a bounded queue to a writer task that gives up
            // on a client that does not read (WS_WRITE_TIMEOUT): the connection ends, and its
            // subscriptions with it, instead of holding memory for it.
            let (sink, incoming) = socket.split();
            let (outgoing, queue) = futures::channel::mpsc::channel::<WsMessage>(WS_QUEUE);
            let writer = tokio::spawn(write_socket(sink, queue));
            let (expiry_tx, expiry) = tokio::sync::oneshot::channel::<Option<u64>>();
            let ws = GraphQLWebSocket::new_with_pair(outgoing.clone(), incoming, schema, protocol)
                .on_connection_init(move |payload| async move {
                    // Credentials from the connection_init payload (browsers cannot set
                    // headers on WebSockets), else from the upgrade request's headers.
                    let principal = match init_credentials(&payload) {
                        Some(c) => init_state
                            .auth
                            .authenticate(&c.as_credentials())
                            .map_err(|e| init_state.refused(e.into(), ip)),
                        None => init_state.authenticate(&headers, ip),
                    }
                    // async-graphql closes the socket (1002) with this message as the
                    // reason: it starts with the code, as clients cannot see it elsewhere.
                    .map_err(|e| {
                        async_graphql::Error::new(close_reason(&format!(
                            "{}: {}",
                            e.code.as_str(),
                            e.message
                        )))
                    })?;
                    let _ = expiry_tx.send(principal.expires_at);
                    let mut data = Data::default();
                    data.insert(principal);
                    data.insert(crate::graphql::OverWebSocket { ip });
                    Ok(data)
                })
                .keepalive_timeout(Duration::from_secs(60))
                .serve();
            let shutdown = state.clone();
            let mut closing = outgoing;
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
                () = token_expiry(expiry) => {
                    // The credentials ran out: the connection (and every stream on it) ends.
                    let frame = CloseFrame {
                        code: 4403,
                        reason: "UNAUTHENTICATED: the token has expired".into(),
                    };
                    let _ = closing.send(WsMessage::Close(Some(frame))).await;
                }
            }
            drop(closing);
            let _ = writer.await;
        })
}

/// The longest reason a WebSocket close frame carries (RFC 6455: 125 bytes of payload, two
/// of them the code).
const MAX_CLOSE_REASON: usize = 123;

/// `reason` cut to fit a close frame, at a character's edge: a longer one makes the client
/// fail the connection (a browser reports 1006, with no reason) instead of reading the code.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Counts an open WebSocket connection in [`AppState::websockets`] while it lives.
struct OpenSocket(Arc<AppState>);

impl OpenSocket {
    fn new(state: Arc<AppState>) -> Self {
        state.websockets.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a stopping server waits for its WebSocket connections: their streams get 30 s to
/// finish (see the handler), then a moment to flush.
const WEBSOCKETS_CLOSE: Duration = Duration::from_secs(32);

/// Messages queued for a WebSocket before its handler waits for the writer.
const WS_QUEUE: usize = 64;
/// How long one message may take to reach a client before the connection is dropped.
const WS_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes queued messages to the socket until the queue ends, a close frame is sent, or the
/// client stops reading for [`WS_WRITE_TIMEOUT`].
async fn write_socket(
    mut sink: futures::stream::SplitSink<WebSocket, WsMessage>,
    mut queue: futures::channel::mpsc::Receiver<WsMessage>,
) {
    while let Some(message) = queue.next().await {
        let close = matches!(message, WsMessage::Close(_));
        match tokio::time::timeout(WS_WRITE_TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) if !close => {}
            Ok(Ok(())) => break,
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!("a WebSocket client stopped reading: connection dropped");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), sink.close()).await;
}

/// Resolves when the connection's credentials expire (never for credentials without an
/// expiry, or before `connection_init` succeeded).
async fn token_expiry(expiry: tokio::sync::oneshot::Receiver<Option<u64>>) {
    let Ok(Some(exp)) = expiry.await else {
        return std::future::pending().await;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now))).await;
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

/// The OpenAPI 3.1 document of the REST routes.
async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
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
            "store": state.engine.backend(),
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

impl axum::extract::FromRef<Server> for Arc<AppState> {
    fn from_ref(server: &Server) -> Self {
        server.state.clone()
    }
}

/// `/metrics` alone, for the separate address of `metrics.bind`.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if state.settings.metrics.require_admin {
        let ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        match state.authenticate(req.headers(), ip) {
            Ok(p) if p.admin => {}
            Ok(_) => {
                return ApiError::new(Code::Forbidden, "the metrics are for operators")
                    .into_response();
            }
            Err(e) => return e.into_response(),
        }
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(state.gauges()),
    )
        .into_response()
}

/// Serves until `shutdown` resolves, then stops taking connections, lets streams under way
/// finish (for a while) and returns.
pub async fn serve<L>(
    listener: L,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::serve::ListenerExt;
    let app = router(state.clone());
    let on_shutdown = state.clone();
    // `tap_io` gives any listener whose address is a SocketAddr the connect info.
    axum::serve(
        listener.tap_io(|_| ()),
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing streams under way");
        on_shutdown.begin_shutdown();
    })
    .await?;
    // Upgraded connections are not waited for by the above: their streams (chat answers
    // being written and stored) are given their time here.
    let deadline = Instant::now() + WEBSOCKETS_CLOSE;
    while state.websockets.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
