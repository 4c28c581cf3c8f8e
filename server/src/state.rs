//! What every front door shares: the settings, the engine and chat pipeline, authentication,
//! rate limits and metrics, and shutdown.
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use recall_core::Engine;
use recall_core::chat::{ChatPipeline, ChatRequest, ChatResult, ChatStream};
use tokio::sync::Notify;

use crate::auth::{Authenticator, Credentials, Principal};
use crate::error::{ApiError, Code};
use crate::limits::{RateLimiter, StreamLimiter, StreamSlot};
use crate::metrics::{Gauges, Metrics};
use crate::settings::Settings;

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
    /// Open chat streams per user.
    pub streams: StreamLimiter,
    /// Open event subscriptions per user.
    pub subscriptions: StreamLimiter,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Set when shutdown begins: new work is refused.
    pub shutting_down: AtomicBool,
    /// Woken when shutdown begins.
    pub shutdown: Notify,
    /// Numbers request ids that clients did not send.
    pub next_request: AtomicU64,
    /// WebSocket connections open (the server waits for them when it stops, as their streams
    /// finish: the HTTP server's own graceful shutdown does not wait for upgraded ones).
    pub websockets: AtomicUsize,
    /// The proxies whose `X-Forwarded-For` is believed.
    pub proxies: crate::proxy::TrustedProxies,
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
            proxies: crate::proxy::TrustedProxies::parse(&settings.trusted_proxies)?,
            user_rate: RateLimiter::new(l.requests_per_minute, l.burst),
            ip_rate: RateLimiter::new(l.ip_requests_per_minute, l.ip_burst),
            streams: StreamLimiter::new(l.max_streams_per_user),
            subscriptions: StreamLimiter::new(l.max_subscriptions_per_user),
            auth,
            engine,
            chat,
            metrics: Metrics::default(),
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
            next_request: AtomicU64::new(1),
            websockets: AtomicUsize::new(0),
            settings,
        })
    }

    /// Takes a request token for the user and for the IP.
    pub fn rate_check(&self, user: &str, ip: Option<IpAddr>) -> Result<(), ApiError> {
        if let Some(ip) = ip {
            self.ip_rate
                .check(&ip.to_string())
                .map_err(|w| self.limited(w, "from this address"))?;
        }
        self.user_rate
            .check(user)
            .map_err(|w| self.limited(w, "for this user"))
    }

    fn limited(&self, wait: Duration, what: &str) -> ApiError {
        self.metrics.rate_limited();
        ApiError {
            code: Code::RateLimited,
            message: format!(
                "too many requests {what}; retry in {:.1}s",
                wait.as_secs_f64()
            ),
            retry_after: Some(wait),
        }
    }

    /// `refused`, the error of credentials that did not authenticate, as answered to `ip`:
    /// the refusal costs the address a request token, as an authenticated request does, so
    /// that guessing keys or tokens is held to `limits.ip_requests_per_minute` (once the
    /// address's tokens are spent, the answer is `RATE_LIMITED`, with the wait).
    pub fn refused(&self, refused: ApiError, ip: Option<IpAddr>) -> ApiError {
        match ip.map(|ip| self.ip_rate.check(&ip.to_string())) {
            Some(Err(wait)) => self.limited(wait, "from this address"),
            _ => refused,
        }
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

    /// A slot for one more event subscription of `user` (`memoryEvents`, `jobProgress`), held
    /// while it is open: each holds a place on the event bus, and a client that subscribes
    /// without end would otherwise hold them without end.
    pub fn subscription_slot(&self, user: &str) -> Result<StreamSlot, ApiError> {
        self.subscriptions.acquire(user).ok_or_else(|| ApiError {
            code: Code::RateLimited,
            message: format!(
                "at most {} event subscriptions per user at once",
                self.settings.limits.max_subscriptions_per_user
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

    /// Ready when the store answers and the chat model (if any) can answer (and not shutting
    /// down).
    pub async fn ready(&self) -> Result<(), ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::new(Code::Unavailable, "shutting down"));
        }
        if let Some(chat) = &self.chat {
            chat.model().check_ready()?;
        }
        self.engine.ping().await?;
        Ok(())
    }

    /// The values metrics read at scrape time.
    pub fn gauges(&self) -> Gauges {
        let cache = self.engine.cache_stats();
        let summaries = self.engine.summary_stats();
        Gauges {
            queue_depth: self.chat.as_ref().map_or(0, |c| c.model().queue_depth()),
            active_streams: self.streams.total(),
            memory_subscribers: self.engine.events().subscribers(),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            summaries_written: summaries.written,
            summary_failures: summaries.failed,
        }
    }

    /// Who sent this request (headers only), from `ip`: refused credentials are charged to
    /// the address ([`AppState::refused`]).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        ip: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        self.auth
            .authenticate(&Credentials {
                authorization: get("authorization"),
                api_key: get("x-api-key"),
                user_id: get("x-user-id"),
            })
            .map_err(|e| self.refused(e.into(), ip))
    }

    /// Begins shutdown: readiness fails, new chats are refused, streams are told to finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.shutdown.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use recall_core::context::{ChatTurn, TokenCounter};
    use recall_core::llm::{ApproxCounter, ChatEvent, ChatModel, GenerationParams};
    use tokio::sync::mpsc;

    use super::*;

    /// A chat model that can answer or not, as the test says.
    struct Model {
        stopped: bool,
    }

    #[async_trait::async_trait]
    impl ChatModel for Model {
        fn name(&self) -> &str {
            "test"
        }
        fn context_length(&self) -> usize {
            1024
        }
        fn token_counter(&self) -> &dyn TokenCounter {
            &ApproxCounter
        }
        fn check_ready(&self) -> recall_core::Result<()> {
            if self.stopped {
                return Err(recall_core::Error::unavailable(
                    "the chat worker has stopped",
                ));
            }
            Ok(())
        }
        async fn stream(
            &self,
            _turns: &[ChatTurn],
            _params: &GenerationParams,
        ) -> recall_core::Result<mpsc::Receiver<recall_core::Result<ChatEvent>>> {
            Err(recall_core::Error::unavailable("not in this test"))
        }
    }

    /// A replica whose chat model cannot answer (its worker stopped after a panic) is not
    /// ready, so that the load balancer sends chats to the others.
    #[tokio::test]
    async fn a_stopped_chat_model_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            recall_core::store::open(&recall_core::store::StoreConfig::embedded(dir.path()))
                .await
                .unwrap();
        let engine = Engine::without_models(store);
        for (stopped, ready) in [(false, true), (true, false)] {
            let pipeline = ChatPipeline::new(engine.clone(), Arc::new(Model { stopped }));
            let state = AppState::new(Settings::default(), engine.clone(), Some(pipeline)).unwrap();
            let answer = state.ready().await;
            assert_eq!(answer.is_ok(), ready, "{:?}", answer.err());
            if let Err(e) = answer {
                assert_eq!(e.code, Code::Unavailable);
            }
        }
    }
}
