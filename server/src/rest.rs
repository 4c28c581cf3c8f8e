//! OpenAI-compatible REST under `/v1`: chat completions (streamed as server-sent events, or
//! whole), embeddings and the model list, so that OpenAI client libraries work unchanged.
//!
//! Whose memory a completion uses: the `user` field when given (an authenticated caller may
//! only name themselves, unless they are an admin), else the authenticated subject. The
//! session comes from the `X-Session-Id` header or a `session` field (default `default`).
//! The client's `messages` are the conversation: the last user message is answered and stored
//! with the answer; the others are used as the history as they are (blank ones left out;
//! system messages, wherever they are, make the system prompt).
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use recall_core::chat::{ChatRequest, ChatUpdate};
use recall_core::context::ChatTurn;
use recall_core::llm::FinishReason;
use recall_core::types::Role;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::{ApiError, Code, TIMED_OUT, retry_after_value};
use crate::state::AppState;

/// The `/v1` routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/chat/completions", post(chat_completions))
        .route("/embeddings", post(embeddings))
        .route("/models", get(models))
        .fallback(unknown_route)
}

/// A path under `/v1` that is not one of the routes: an OpenAI-shaped 404, not the web app.
async fn unknown_route(uri: axum::http::Uri) -> Response {
    ApiError::new(Code::NotFound, format!("no route {}", uri.path())).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let kind = match self.code {
            Code::Unauthenticated => "authentication_error",
            Code::Forbidden => "permission_error",
            Code::NotFound => "not_found_error",
            Code::BadInput => "invalid_request_error",
            Code::RateLimited => "rate_limit_error",
            Code::Unavailable => "service_unavailable",
            Code::Timeout => "timeout_error",
            Code::Internal => "server_error",
        };
        let body = json!({ "error": {
            "message": self.message,
            "type": kind,
            "code": self.code.as_str(),
        }});
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(d) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_value(d));
        }
        if self.code == Code::Timeout {
            // OpenAI's clients retry a 5xx unless told not to: the turn cut off may have been
            // stored.
            resp.headers_mut().insert(
                header::HeaderName::from_static("x-should-retry"),
                header::HeaderValue::from_static("false"),
            );
        }
        resp
    }
}

/// Counts the request in the metrics and turns an error into its response.
fn measured(
    state: &AppState,
    operation: &str,
    started: Instant,
    out: Result<Response, ApiError>,
) -> Response {
    let outcome = match &out {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    state
        .metrics
        .request("rest", operation, outcome, started.elapsed());
    out.unwrap_or_else(IntoResponse::into_response)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::BadInput, message)
}

/// Authenticates and rate-limits a REST request; `user` is the body's `user` field.
fn caller(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    user: Option<&str>,
) -> Result<Principal, ApiError> {
    // In anonymous mode the body's `user` names the user when no header does (with
    // credentials, it is checked against them below).
    let mut p = match user.and_then(|u| u.parse().ok()) {
        Some(v)
            if state.auth.anonymous_allowed()
                && !headers.contains_key("x-user-id")
                && !headers.contains_key(header::AUTHORIZATION)
                && !headers.contains_key("x-api-key") =>
        {
            let mut with_user = headers.clone();
            with_user.insert("x-user-id", v);
            state.authenticate(&with_user, Some(peer.ip()))?
        }
        _ => state.authenticate(headers, Some(peer.ip()))?,
    };
    if let Some(u) = user
        && u != p.user
    {
        if !p.admin {
            return Err(ApiError::new(
                Code::Forbidden,
                "`user` must be the authenticated user",
            ));
        }
        p.user = u.to_owned();
    }
    state.rate_check(&p.user, Some(peer.ip()))?;
    Ok(p)
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("malformed request body: {e}")))
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    stream_options: Option<Value>,
}

/// The text of a message's `content` (a string, or an array of `{type: "text", text}` parts).
fn content_text(v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => out.push(t),
                    _ => return Err(bad("only text content parts are supported")),
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(bad("message content must be a string or text parts")),
    }
}

fn role(r: &str) -> Result<Role, ApiError> {
    match r {
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "system" | "developer" => Ok(Role::System),
        other => Err(bad(format!("unsupported message role {other:?}"))),
    }
}

fn finish(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "stop",
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What `/v1/chat/completions` makes of a body before anything runs: the core request (in
/// `session`, with `default_max_tokens` when the body names none) and whether to stream.
/// Public for the fuzz targets (`fuzz/`); the route calls the same functions.
pub fn parse_completion(
    body: &[u8],
    session: String,
    default_max_tokens: usize,
) -> Result<(ChatRequest, bool), ApiError> {
    let req: CompletionRequest = json_body(body)?;
    Ok((chat_request(default_max_tokens, &req, session)?, req.stream))
}

/// What `/v1/embeddings` makes of a body: the texts and whether to answer base64. Public for
/// the fuzz targets.
pub fn parse_embedding(body: &[u8]) -> Result<(Vec<String>, bool), ApiError> {
    let req: EmbeddingRequest = json_body(body)?;
    embedding_input(req).map(|(texts, base64, _)| (texts, base64))
}

/// The core request for a completion: fields mapped, the rules are core's
/// ([`ChatRequest::validate`]).
fn chat_request(
    default_max_tokens: usize,
    req: &CompletionRequest,
    session: String,
) -> Result<ChatRequest, ApiError> {
    if req.n.unwrap_or(1) != 1 {
        return Err(bad("only n = 1 is supported"));
    }
    if req.messages.is_empty() {
        return Err(bad("`messages` must not be empty"));
    }
    let mut roles = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        roles.push(role(&m.role)?);
    }
    // The message answered is the last user message. System messages after it (a client's
    // post-history instructions or a nudge to write as one character) join the system prompt,
    // as every system message of the conversation does. An assistant message after it (a
    // prefill to continue) cannot be honoured: the answer is a new message.
    let at = roles
        .iter()
        .rposition(|r| *r == Role::User)
        .ok_or_else(|| bad("`messages` must hold a user message to answer"))?;
    if roles[at + 1..].iter().any(|r| *r != Role::System) {
        return Err(bad(
            "only system messages may follow the last user message (an assistant prefill \
             is not supported)",
        ));
    }
    let last = &req.messages[at];
    let mut conversation = Vec::with_capacity(req.messages.len() - 1);
    for (i, m) in req.messages.iter().enumerate() {
        if i == at {
            continue;
        }
        let content = content_text(&m.content)?;
        // History may hold blank turns (an empty system prompt, an assistant turn that only
        // called tools): they say nothing, and are left out.
        if content.trim().is_empty() {
            continue;
        }
        conversation.push(ChatTurn {
            role: roles[i],
            content,
        });
    }
    let mut r = ChatRequest::new(session, content_text(&last.content)?);
    let g = &mut r.generation;
    g.max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(default_max_tokens);
    if let Some(t) = req.temperature {
        g.temperature = t;
    }
    g.top_p = req.top_p.or(g.top_p);
    g.seed = req.seed.or(g.seed);
    g.stop = match &req.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    r.context.conversation = Some(conversation);
    r.validate()?;
    Ok(r)
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    let out = completions(&state, peer, &headers, &body).await;
    measured(&state, "chat.completions", started, out)
}

async fn completions(
    state: &Arc<AppState>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let req: CompletionRequest = json_body(body)?;
    let p = caller(state, headers, peer, req.user.as_deref())?;
    let session = headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.session.clone())
        .unwrap_or_else(|| "default".into());
    let request = chat_request(state.settings.chat.max_tokens, &req, session)?;
    let model = state
        .chat
        .as_ref()
        .map(|c| c.model().name().to_owned())
        .or(req.model.clone())
        .unwrap_or_default();
    let created = now_secs();
    if !req.stream {
        let timeout = Duration::from_secs(state.settings.limits.request_timeout_secs);
        let r = tokio::time::timeout(timeout, state.chat(&p, request))
            .await
            .map_err(|_| ApiError::new(Code::Timeout, TIMED_OUT))??;
        let body = json!({
            "id": format!("chatcmpl-{}", r.message_id),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": r.text },
                "finish_reason": finish(r.finish_reason),
                "logprobs": null,
            }],
            "usage": {
                "prompt_tokens": r.usage.prompt_tokens,
                "completion_tokens": r.usage.completion_tokens,
                "total_tokens": r.usage.total_tokens,
            },
            "deep_recall": {
                "session": r.session,
                "message_id": r.message_id,
                "reply_id": r.reply_id,
                "context": r.context,
                "confidence": r.confidence,
                "latency": r.latency,
            },
        });
        return Ok(axum::Json(body).into_response());
    }
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o["include_usage"].as_bool())
        .unwrap_or(false);
    let (stream, slot) = state.chat_stream(&p, request).await?;
    let id = format!("chatcmpl-{}", stream.message_id);
    // OpenAI's shape: with `include_usage`, every chunk has `"usage": null` and the usage comes
    // in a chunk of its own after the finish, with no choices.
    let chunk = move |choice: Option<(Value, Option<&str>)>, usage: Option<Value>| {
        let choices = match choice {
            Some((delta, finish)) => {
                json!([{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }])
            }
            None => json!([]),
        };
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        });
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        Event::default().data(c.to_string())
    };
    let metrics_state = state.clone();
    let first = chunk(
        Some((json!({ "role": "assistant", "content": "" }), None)),
        None,
    );
    let events = futures::stream::unfold(
        (VecDeque::from([first]), stream.updates, false, Some(slot)),
        move |(mut pending, mut rx, ended, slot)| {
            let chunk = chunk.clone();
            let metrics_state = metrics_state.clone();
            async move {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok::<_, Infallible>(e), (pending, rx, ended, slot)));
                }
                if ended {
                    return None;
                }
                match rx.recv().await {
                    Some(Ok(ChatUpdate::Delta { text })) => Some((
                        Ok(chunk(Some((json!({ "content": text }), None)), None)),
                        (pending, rx, false, slot),
                    )),
                    Some(Ok(ChatUpdate::Done(r))) => {
                        metrics_state.metrics.tokens(r.usage.completion_tokens);
                        let last = chunk(Some((json!({}), Some(finish(r.finish_reason)))), None);
                        if include_usage {
                            let usage = json!({
                                "prompt_tokens": r.usage.prompt_tokens,
                                "completion_tokens": r.usage.completion_tokens,
                                "total_tokens": r.usage.total_tokens,
                            });
                            pending.push_back(chunk(None, Some(usage)));
                        }
                        pending.push_back(Event::default().data("[DONE]"));
                        Some((Ok(last), (pending, rx, true, None)))
                    }
                    Some(Err(e)) => {
                        let e = ApiError::from(e);
                        let body =
                            json!({ "error": { "message": e.message, "code": e.code.as_str() } });
                        Some((
                            Ok(Event::default().data(body.to_string())),
                            (pending, rx, true, None),
                        ))
                    }
                    None => None,
                }
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    input: EmbedInput,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

async fn embeddings(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let started = Instant::now();
    let out = embed(&state, peer, &headers, &body).await;
    measured(&state, "embeddings", started, out)
}

async fn embed(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let req: EmbeddingRequest = json_body(body)?;
    caller(state, headers, peer, req.user.as_deref())?;
    let (texts, base64, model) = embedding_input(req)?;
    let embedded = state.engine.embed_texts(texts, model.as_deref()).await?;
    let vectors = embedded.vectors;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": embedded.model,
        "usage": { "prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens },
    }))
    .into_response())
}

/// The texts, the encoding (base64 or not) and the model of an embedding request.
fn embedding_input(req: EmbeddingRequest) -> Result<(Vec<String>, bool, Option<String>), ApiError> {
    let texts = match req.input {
        EmbedInput::One(s) => vec![s],
        EmbedInput::Many(v) => v,
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(bad(format!("unknown encoding_format {other:?}"))),
    };
    Ok((texts, base64, req.model))
}

async fn models(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = caller(&state, &headers, peer, None) {
        return e.into_response();
    }
    let mut data = Vec::new();
    if let Some(c) = &state.chat {
        data.push(json!({ "id": c.model().name(), "object": "model", "created": 0, "owned_by": "deep-recall" }));
    }
    data.push(json!({ "id": state.engine.embedder().model_id(), "object": "model", "created": 0, "owned_by": "deep-recall" }));
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}
