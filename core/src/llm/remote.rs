//! A remote chat provider speaking the OpenAI chat-completions API (vLLM, TGI, Ollama,
//! OpenAI), for operators who configure one. Nothing leaves the machine otherwise.
//!
//! Requests have a timeout (and streams an idle timeout between chunks). Connection failures,
//! timeouts, 429 and 5xx answers are retried with exponential back-off (honouring
//! `Retry-After`), as long as nothing has been handed to the caller yet. After
//! `breaker_threshold` failed calls in a row the circuit opens: calls fail at once for
//! `breaker_cooldown`, then one trial call decides whether it closes again.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::local::{Completion, FinishReason, GenerationParams};
use super::service::ChatEvent;
use crate::context::ChatTurn;
use crate::error::{Error, Result};
use crate::types::Role;

/// Where and how to reach the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteConfig {
    /// Base URL up to the API version, e.g. `http://localhost:8000/v1`.
    pub base_url: String,
    /// Bearer token, if the provider wants one.
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    /// The model name the provider knows.
    pub model: String,
    /// The model's context window in tokens (prompts are budgeted against it).
    pub context_length: usize,
    /// Whole-request timeout (non-streaming) and time to the first byte (streaming).
    pub timeout: Duration,
    /// Longest silence between two chunks of a stream.
    pub idle_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First back-off; doubled each retry.
    pub backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// Failed calls in a row that open the circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit refuses calls.
    pub breaker_cooldown: Duration,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8000/v1".into(),
            api_key: None,
            model: "default".into(),
            context_length: 8192,
            timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_retries: 3,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    trial: bool,
}

/// The circuit breaker, shared with the tasks that pump streams.
#[derive(Clone)]
struct Breaker {
    state: Arc<Mutex<BreakerState>>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    /// Fails fast while the circuit is open; lets one trial through after the cooldown.
    fn admit(&self) -> Result<Ticket> {
        let mut b = self.state.lock().expect("breaker");
        match b.open_until {
            Some(t) if Instant::now() < t => Err(Error::unavailable(format!(
                "remote provider circuit open after {} failures; retrying in {:.0?}",
                b.failures,
                t - Instant::now()
            ))),
            Some(_) if b.trial => Err(Error::unavailable(
                "remote provider circuit half-open: a trial call is in flight",
            )),
            Some(_) => {
                b.trial = true;
                Ok(Ticket {
                    breaker: self.clone(),
                    trial: true,
                })
            }
            None => Ok(Ticket {
                breaker: self.clone(),
                trial: false,
            }),
        }
    }

    fn record(&self, ok: bool) {
        let mut b = self.state.lock().expect("breaker");
        b.trial = false;
        if ok {
            *b = BreakerState::default();
            return;
        }
        b.failures += 1;
        if b.failures >= self.threshold.max(1) {
            b.open_until = Some(Instant::now() + self.cooldown);
        }
    }
}

/// One admitted call, until its outcome is recorded. A trial call whose outcome never comes
/// (its caller went away: a dropped future, a consumer that stopped reading) gives its turn
/// back when dropped, so that the next call is the trial; the circuit would otherwise stay
/// half-open, refusing every call, until the process restarts.
pub(crate) struct Ticket {
    breaker: Breaker,
    trial: bool,
}

impl Ticket {
    /// Counts the call's outcome (a broken or malformed answer is a failure of the provider).
    pub(crate) fn record(mut self, ok: bool) {
        self.trial = false;
        self.breaker.record(ok);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.trial {
            self.breaker.state.lock().expect("breaker").trial = false;
        }
    }
}

/// The client; see the module documentation.
pub struct RemoteChat {
    provider: Provider,
}

/// An OpenAI-compatible HTTP endpoint with timeouts, retries and a circuit breaker; shared by
/// the remote chat model and the remote embedder.
pub(crate) struct Provider {
    client: reqwest::Client,
    pub(crate) config: RemoteConfig,
    breaker: Breaker,
}

/// Why one attempt failed, and whether another may succeed.
struct Attempt {
    error: Error,
    retry: bool,
    wait: Option<Duration>,
}

fn unavailable(message: String, source: Option<reqwest::Error>) -> Error {
    Error::Unavailable {
        message,
        source: source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    }
}

impl Provider {
    /// A client for `config`.
    pub(crate) fn new(config: RemoteConfig) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        let breaker = Breaker {
            state: Arc::default(),
            threshold: config.breaker_threshold,
            cooldown: config.breaker_cooldown,
        };
        Ok(Self {
            client,
            config,
            breaker,
        })
    }

    fn backoff(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        let exp = self
            .config
            .backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.config.max_backoff);
        // Up to 25% jitter, from the clock's nanoseconds.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = exp.mul_f64((nanos % 1000) as f64 / 4000.0);
        hint.unwrap_or(exp + jitter).min(self.config.max_backoff)
    }

    async fn send(
        &self,
        path: &str,
        body: &Value,
        stream: bool,
    ) -> std::result::Result<reqwest::Response, Attempt> {
        let url = format!("{}{path}", self.config.base_url.trim_end_matches('/'));
        let mut req = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if !stream {
            // reqwest's timeout runs until the whole body is read: right for one answer, but
            // it would cut off a stream that is still flowing.
            req = req.timeout(self.config.timeout);
        }
        if let Some(k) = &self.config.api_key {
            req = req.bearer_auth(k);
        }
        let timed_out = || Attempt {
            retry: true,
            wait: None,
            error: unavailable(
                format!("remote provider timed out after {:?}", self.config.timeout),
                None,
            ),
        };
        let resp = match tokio::time::timeout(self.config.timeout, req.send()).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) if e.is_timeout() => {
                return Err(Attempt {
                    error: unavailable(
                        format!("remote provider timed out after {:?}", self.config.timeout),
                        Some(e),
                    ),
                    ..timed_out()
                });
            }
            Ok(Err(e)) => {
                return Err(Attempt {
                    retry: true,
                    wait: None,
                    error: unavailable(
                        format!("cannot reach the remote provider at {url}"),
                        Some(e),
                    ),
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let wait = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let detail: String = text.chars().take(300).collect();
        let retry = status.as_u16() == 429 || status.is_server_error();
        let error = if retry {
            unavailable(format!("remote provider answered {status}: {detail}"), None)
        } else {
            Error::invalid(format!(
                "remote provider refused the request ({status}): {detail}"
            ))
        };
        Err(Attempt { error, retry, wait })
    }

    /// Sends `body` to `path` (under the base URL) with retries: the answer's head, and the
    /// ticket that counts the call for the breaker once the answer was read. `stream`: the
    /// answer's body is an event stream, which `timeout` does not bound (its pieces are bound by
    /// `idle_timeout` as they are read); only the wait for its head is.
    pub(crate) async fn call(
        &self,
        path: &str,
        body: &Value,
        stream: bool,
    ) -> Result<(reqwest::Response, Ticket)> {
        let ticket = self.breaker.admit()?;
        let mut attempt = 0u32;
        loop {
            match self.send(path, body, stream).await {
                Ok(r) => return Ok((r, ticket)),
                Err(a) if a.retry && attempt < self.config.max_retries => {
                    tokio::time::sleep(self.backoff(attempt, a.wait)).await;
                    attempt += 1;
                }
                Err(a) => {
                    // A refused request (4xx) says nothing about the provider's health.
                    ticket.record(!a.retry);
                    return Err(a.error);
                }
            }
        }
    }
}

impl RemoteChat {
    /// The configuration it was made with.
    pub fn config(&self) -> &RemoteConfig {
        &self.provider.config
    }

    /// A client for `config`.
    pub fn new(config: RemoteConfig) -> Result<Self> {
        Ok(Self {
            provider: Provider::new(config)?,
        })
    }

    fn body(&self, turns: &[ChatTurn], params: &GenerationParams, stream: bool) -> Value {
        let messages: Vec<Value> = turns
            .iter()
            .map(|t| {
                let role = match t.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::System => "system",
                };
                json!({ "role": role, "content": t.content })
            })
            .collect();
        let mut body = json!({
            "model": self.provider.config.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stream": stream,
            "logprobs": true,
        });
        if let Some(p) = params.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(s) = params.seed {
            body["seed"] = json!(s);
        }
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        if stream {
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }

    /// The whole answer at once.
    pub async fn complete(
        &self,
        turns: &[ChatTurn],
        params: &GenerationParams,
    ) -> Result<Completion> {
        let body = self.body(turns, params, false);
        let (resp, ticket) = self
            .provider
            .call("/chat/completions", &body, false)
            .await?;
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                ticket.record(false);
                return Err(unavailable("remote answer broke off".into(), Some(e)));
            }
        };
        let v: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                ticket.record(false);
                return Err(Error::unavailable(format!(
                    "malformed answer from the remote provider: {e}"
                )));
            }
        };
        let choice = &v["choices"][0];
        let Some(text) = choice["message"]["content"].as_str() else {
            ticket.record(false);
            return Err(Error::unavailable(
                "remote provider answer has no choices[0].message.content",
            ));
        };
        ticket.record(true);
        Ok(Completion {
            text: text.to_owned(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
            completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
            finish_reason: finish(choice["finish_reason"].as_str()),
            confidence: mean_logprob(&choice["logprobs"]),
        })
    }

    /// Streams the answer (server-sent events): `Delta`s, then `Done`. A malformed chunk,
    /// a timeout or a dropped connection ends the stream with an error.
    pub async fn stream(
        &self,
        turns: &[ChatTurn],
        params: &GenerationParams,
    ) -> Result<mpsc::Receiver<Result<ChatEvent>>> {
        let body = self.body(turns, params, true);
        let (resp, ticket) = self.provider.call("/chat/completions", &body, true).await?;
        let (tx, rx) = mpsc::channel(64);
        let idle = self.provider.config.idle_timeout;
        tokio::spawn(async move {
            // The breaker learns how the stream went when it ends (a consumer that went away
            // says nothing either way, and a trial's turn goes back with the ticket).
            if let Some(ok) = pump(resp, tx, idle).await {
                ticket.record(ok);
            }
        });
        Ok(rx)
    }
}

#[derive(Default)]
struct StreamState {
    text: String,
    finish: Option<String>,
    prompt_tokens: usize,
    completion_tokens: usize,
    logprob_sum: f64,
    logprob_n: usize,
}

/// Reads the event stream into `tx`; `Some(success)` when the stream ended one way or the
/// other, `None` when the consumer went away.
async fn pump(
    resp: reqwest::Response,
    tx: mpsc::Sender<Result<ChatEvent>>,
    idle: Duration,
) -> Option<bool> {
    let mut st = StreamState::default();
    let mut bytes = resp.bytes_stream();
    // Bytes, decoded a whole line at a time: a chunk may end inside a character.
    let mut buf: Vec<u8> = Vec::new();
    let fail = |m: String| Err(Error::unavailable(m));
    loop {
        let next = match tokio::time::timeout(idle, bytes.next()).await {
            Err(_) => {
                let _ = tx
                    .send(fail(format!("remote stream silent for {idle:?}")))
                    .await;
                return Some(false);
            }
            Ok(n) => n,
        };
        let chunk = match next {
            None => {
                let _ = tx
                    .send(fail("remote stream ended without [DONE]".into()))
                    .await;
                return Some(false);
            }
            Some(Err(e)) => {
                let _ = tx
                    .send(Err(unavailable("remote stream broke".into(), Some(e))))
                    .await;
                return Some(false);
            }
            Some(Ok(c)) => c,
        };
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..end])
                .trim_end_matches('\r')
                .to_owned();
            buf.drain(..=end);
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                let completion = Completion {
                    text: std::mem::take(&mut st.text),
                    prompt_tokens: st.prompt_tokens,
                    completion_tokens: st.completion_tokens,
                    finish_reason: finish(st.finish.as_deref()),
                    confidence: if st.logprob_n == 0 {
                        f32::NAN
                    } else {
                        (st.logprob_sum / st.logprob_n as f64) as f32
                    },
                };
                let _ = tx.send(Ok(ChatEvent::Done { completion })).await;
                return Some(true);
            }
            let v: Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx
                        .send(fail(format!(
                            "malformed chunk from the remote provider: {e}"
                        )))
                        .await;
                    return Some(false);
                }
            };
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                st.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                st.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            }
            let choice = &v["choices"][0];
            if let Some(f) = choice["finish_reason"].as_str() {
                st.finish = Some(f.to_owned());
            }
            for lp in choice["logprobs"]["content"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(x) = lp["logprob"].as_f64() {
                    st.logprob_sum += x;
                    st.logprob_n += 1;
                }
            }
            if let Some(t) = choice["delta"]["content"].as_str()
                && !t.is_empty()
            {
                st.text.push_str(t);
                if tx
                    .send(Ok(ChatEvent::Delta { text: t.to_owned() }))
                    .await
                    .is_err()
                {
                    // The consumer went away: dropping the response closes the connection.
                    return None;
                }
            }
        }
    }
}

fn finish(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

fn mean_logprob(logprobs: &Value) -> f32 {
    let xs: Vec<f64> = logprobs["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["logprob"].as_f64())
        .collect();
    if xs.is_empty() {
        f32::NAN
    } else {
        (xs.iter().sum::<f64>() / xs.len() as f64) as f32
    }
}
