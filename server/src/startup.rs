//! Start-up as library functions: the engine (store and models) and the chat model (local, or
//! a remote OpenAI-compatible provider) from [`Settings`] — through core's `setup`, which the
//! bindings use too — and the whole server ([`run`]: fan-out, job runner, listener, graceful
//! shutdown). The command line calls these; so can an embedding program or a test.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use recall_core::Engine;
use recall_core::chat::ChatPipeline;
use recall_core::context::SummaryPolicy;
use recall_core::crypto::{DataKey, Keyring};
use recall_core::error::{Error, ErrorKind, Result};
use recall_core::jobs::JobKind;
use recall_core::llm::{ChatModel, ChatSummarizer, RemoteConfig};
use recall_core::runner::{JobRunner, JobRunnerConfig};
use recall_core::setup::{self, ChatOptions, EngineOptions, RemoteEmbedding};
use recall_core::store::StoreConfig;
use recall_core::types::Actor;

use crate::settings::Settings;
use crate::state::AppState;

/// The store the settings name (not yet opened), with its data keys: a missing or malformed
/// key file is an error here, at start.
pub fn store_config(settings: &Settings) -> Result<StoreConfig> {
    let s = &settings.store;
    let mut config = match &s.database_url {
        Some(url) => StoreConfig::postgres(url.clone()),
        None => StoreConfig::embedded(s.data_dir.clone()),
    };
    config.max_connections = s.max_connections;
    config.max_cached_vectors = s.max_cached_vectors;
    config.in_process_search_threshold = s.in_process_search_threshold;
    config.hnsw_ef_search = s.hnsw_ef_search;
    config.memory_keys_for_new_users = settings.memory_keys.new_users;
    let previous = previous_data_keys(settings)?
        .into_iter()
        .map(|k| (*k).clone())
        .collect();
    config.keys = Arc::new(Keyring::new(
        data_key(settings)?.map(|k| (*k).clone()),
        previous,
    ));
    Ok(config.with_metric(s.metric))
}

/// The engine over the configured store, with the embedding model and the optional
/// cross-encoder and emotion classifier loaded.
pub async fn engine(settings: &Settings) -> Result<Engine> {
    let m = &settings.models;
    let remote_embedding = match &m.embedding_url {
        Some(url) => Some(RemoteEmbedding {
            provider: RemoteConfig {
                timeout: Duration::from_secs(settings.chat.timeout_secs.max(1)),
                max_retries: settings.chat.max_retries,
                ..setup::remote_config(
                    url,
                    Some(&m.embedding),
                    m.embedding_api_key.as_deref(),
                    m.embedding_api_key_file.as_deref(),
                )?
            },
            max_batch: m.embedding_batch.max(1),
            max_tokens: m.embedding_max_tokens,
        }),
        None => None,
    };
    setup::open_engine(&EngineOptions {
        store: store_config(settings)?,
        models_dir: m.dir.clone(),
        embedding_model: m.embedding.clone(),
        device: m.device()?,
        embedding_precision: m.embedding_precision,
        cross_encoder: m.cross_encoder.clone(),
        emotion_model: m.emotion.clone(),
        query_cache: settings.cache.config(),
        remote_embedding,
        previous_embedding_model: m.previous_embedding.clone(),
    })
    .await
    .and_then(|e| {
        e.with_data_key(data_key(settings)?)
            .with_previous_data_keys(previous_data_keys(settings)?)
            .with_dedupe(settings.store.dedupe_similarity)
            .with_tag_ttl(settings.store.tag_ttl_seconds.clone())
    })
}

/// The data key of `encryption.key_file`, if set: a missing or malformed file is an error at
/// start, not later.
pub fn data_key(settings: &Settings) -> Result<Option<Arc<DataKey>>> {
    settings
        .encryption
        .key_file
        .as_deref()
        .map(|path| DataKey::from_file(path).map(Arc::new))
        .transpose()
}

/// The keys of `encryption.previous_key_files` (rotated out): rows and backups sealed with
/// them can still be read.
pub fn previous_data_keys(settings: &Settings) -> Result<Vec<Arc<DataKey>>> {
    settings
        .encryption
        .previous_key_files
        .iter()
        .map(|path| DataKey::from_file(path).map(Arc::new))
        .collect()
}

/// The engine over the configured store with no model loaded, for commands that only manage
/// data (export, forget): they work where the models are missing.
pub async fn data_engine(settings: &Settings) -> Result<Engine> {
    let key = data_key(settings)?;
    Ok(setup::open_data_engine(&store_config(settings)?)
        .await?
        .with_data_key(key)
        .with_previous_data_keys(previous_data_keys(settings)?))
}

/// The chat model the settings name: the remote provider when `chat.url` is set, else the
/// local model on its worker thread (`sequences` decoded together). Small quantized files in
/// formats without fast CPU kernels (Q5_1) are turned into F32 at load on the CPU unless
/// `dequantize` is false.
pub async fn chat_model(
    settings: &Settings,
    sequences: usize,
    dequantize: bool,
) -> Result<Arc<dyn ChatModel>> {
    let c = &settings.chat;
    let remote = match &c.url {
        Some(url) => Some(RemoteConfig {
            context_length: c.context_length,
            timeout: Duration::from_secs(c.timeout_secs.max(1)),
            max_retries: c.max_retries,
            ..setup::remote_config(
                url,
                c.model_name.as_deref(),
                c.api_key.as_deref(),
                c.api_key_file.as_deref(),
            )?
        }),
        None => None,
    };
    setup::open_chat_model(&ChatOptions {
        models_dir: settings.models.dir.clone(),
        model: c.model.clone(),
        device: settings.models.device()?,
        queue_capacity: c.queue_capacity,
        max_sequences: sequences,
        prefix_cache_mib: c.prefix_cache_mib,
        dequantize,
        remote,
    })
    .await
}

/// The chat pipeline over `engine` with the configured chat model, writing rolling summaries
/// when `chat.summary_trigger_messages` is set.
pub async fn chat_pipeline(settings: &Settings, engine: Engine) -> Result<ChatPipeline> {
    let model = chat_model(settings, settings.chat.max_sequences, true).await?;
    let mut pipeline = ChatPipeline::new(engine, model.clone());
    if settings.chat.summary_trigger_messages > 0 {
        pipeline = pipeline.with_summaries(
            Arc::new(ChatSummarizer::new(model, 160)),
            SummaryPolicy {
                trigger_messages: settings.chat.summary_trigger_messages,
                ..Default::default()
            },
        );
    }
    Ok(pipeline)
}

/// What the front doors share, for a process that serves no HTTP (`deep-recall mcp`): the
/// engine, and the chat pipeline unless `with_chat` is false.
pub async fn state(settings: Settings, with_chat: bool) -> Result<AppState> {
    let engine = engine(&settings).await?;
    let chat = if with_chat {
        Some(chat_pipeline(&settings, engine.clone()).await?)
    } else {
        None
    };
    AppState::new(settings, engine, chat)
}

/// `/metrics` on its own address; the task ends with the returned guard.
async fn serve_metrics(bind: SocketAddr, state: Arc<AppState>) -> Result<AbortOnDrop> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| Error::Unavailable {
            message: format!("cannot listen on {bind} for the metrics"),
            source: Some(Box::new(e)),
        })?;
    tracing::info!(%bind, "metrics on their own address");
    let app = crate::router::metrics_router(state);
    Ok(AbortOnDrop(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })))
}

/// The scheduled backups (`backup.every`): every replica tries to queue the backup of the
/// next multiple of `every` on the clock; the queue keeps one pending, so it runs once.
fn backup_schedule(settings: &Settings, engine: &Engine) -> Result<Option<AbortOnDrop>> {
    let (Some(every), Some(dir)) = (settings.backup.interval()?, settings.backup.dir.clone())
    else {
        return Ok(None);
    };
    let (engine, keep) = (engine.clone(), settings.backup.keep);
    let step = every.as_secs().max(1) as i64;
    Ok(Some(AbortOnDrop(tokio::spawn(async move {
        loop {
            let now = chrono::Utc::now().timestamp();
            let slot = (now / step + 1) * step;
            let at = chrono::DateTime::from_timestamp(slot, 0).unwrap_or_else(chrono::Utc::now);
            let params = serde_json::json!({ "dir": dir.display().to_string(), "keep": keep });
            match engine
                .schedule_system_job(JobKind::Backup, at, params, &Actor("schedule".into()))
                .await
            {
                Ok(job) => tracing::info!(job = job.id, %at, "backup scheduled"),
                // Already pending: queued by this replica or another.
                Err(e) if e.kind() == ErrorKind::InvalidInput => {}
                Err(e) => tracing::warn!(error = %e, "scheduling a backup failed"),
            }
            tokio::time::sleep(Duration::from_secs(step.clamp(1, 30) as u64)).await;
        }
    }))))
}

/// The purge of expired memories (`store.purge_every_secs`). Replicas may purge at the same
/// time: each deletion checks the expiry again in its own transaction.
fn purge_schedule(settings: &Settings, engine: &Engine) -> Option<AbortOnDrop> {
    let every = settings.store.purge_every_secs;
    if every == 0 {
        return None;
    }
    let engine = engine.clone();
    Some(AbortOnDrop(tokio::spawn(async move {
        loop {
            match engine.purge_expired(PURGE_BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired memories deleted"),
                Err(e) => tracing::warn!(error = %e, "purging expired memories failed"),
            }
            tokio::time::sleep(Duration::from_secs(every)).await;
        }
    })))
}

/// Expired memories deleted per statement batch.
const PURGE_BATCH: usize = 500;

/// Retraining of deep memory adapters (`deep_memory.retrain_after`): every
/// `deep_memory.check_secs`, queues a training (writing pairs for new memories first) for each
/// user whose adapter is on and who has that many memories more than it was trained with. The
/// queue keeps one pending per user, so replicas that look at the same time queue it once.
fn retrain_schedule(settings: &Settings, engine: &Engine) -> Option<AbortOnDrop> {
    let d = settings.deep_memory.clone();
    if d.retrain_after == 0 {
        return None;
    }
    let engine = engine.clone();
    let every = Duration::from_secs(d.check_secs.max(1));
    Some(AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let due = match engine.deep_memory_due(d.retrain_after).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "looking for deep memory retraining failed");
                    continue;
                }
            };
            for user in due {
                let params = serde_json::json!({
                    "generate": d.generate(),
                    "due_after": d.retrain_after,
                });
                match engine
                    .queue_deep_memory_job(
                        &user,
                        JobKind::DeepMemoryTrain,
                        params,
                        &Actor("schedule".into()),
                    )
                    .await
                {
                    Ok(job) => tracing::info!(job = job.id, "deep memory retraining queued"),
                    Err(e) if e.kind() == ErrorKind::InvalidInput => {}
                    Err(e) => tracing::warn!(error = %e, "queueing a retraining failed"),
                }
            }
        }
    })))
}

/// Every `memory_keys.check_secs`, queues the key job of each user with keys on who wrote a
/// memory since the last time ([`recall_core::runner::schedule_memory_keys`]). Without a chat
/// model (`chat`) the jobs write context keys only.
fn keys_schedule(settings: &Settings, engine: &Engine, chat: bool) -> Option<AbortOnDrop> {
    let k = &settings.memory_keys;
    (k.check_secs > 0).then(|| {
        AbortOnDrop(recall_core::runner::schedule_memory_keys(
            engine.clone(),
            Duration::from_secs(k.check_secs),
            k.options(chat),
        ))
    })
}

/// With `models.previous_embedding` set, queues the re-embedding job now (the queue keeps one
/// pending across replicas; one already queued or running is left alone).
async fn queue_reembed(settings: &Settings, engine: &Engine) {
    if engine.previous_embedder().is_none() {
        return;
    }
    let params = serde_json::json!({
        "batch": settings.models.reembed_batch.max(1),
        "pause_ms": settings.models.reembed_pause_ms,
    });
    match engine
        .schedule_system_job(
            JobKind::Reembed,
            chrono::Utc::now(),
            params,
            &Actor("schedule".into()),
        )
        .await
    {
        Ok(job) => tracing::info!(job = job.id, "re-embedding queued"),
        Err(e) if e.kind() == ErrorKind::InvalidInput => {}
        Err(e) => tracing::warn!(error = %e, "queueing the re-embedding failed"),
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Refuses settings that leave no way to authenticate.
fn check_auth(settings: &Settings) -> Result<()> {
    let a = &settings.auth;
    if a.jwt_secret.is_none()
        && a.jwt_public_key.is_none()
        && a.api_keys.is_empty()
        && !a.allow_anonymous
    {
        return Err(Error::invalid(
            "no way to authenticate: give --jwt-secret, --jwt-public-key or API keys in the \
             config, or --allow-anonymous for local development",
        ));
    }
    if a.allow_anonymous {
        if !settings.bind.ip().is_loopback() && !a.dangerously_allow_anonymous_on_network {
            return Err(Error::invalid(format!(
                "anonymous mode (--allow-anonymous) on {}, an address other machines can reach, \
                 would let anyone read and delete any user's memory by naming them: bind to \
                 127.0.0.1, or add --dangerously-allow-anonymous-on-network if that is really \
                 meant",
                settings.bind
            )));
        }
        tracing::warn!(
            bind = %settings.bind,
            "anonymous mode: requests without credentials act as the user X-User-Id names \
             (local development only)"
        );
        eprintln!(
            "deep-recall: WARNING: anonymous mode: anyone who reaches {} can act as any user",
            settings.bind
        );
    }
    Ok(())
}

/// The work a process does beside its requests: the job runner (`jobs.run`; named `worker`
/// in the queue) and the schedules that queue its work — backups, deep memory retraining,
/// memory keys, the purge of expired memories, and the re-embedding `models.previous_embedding`
/// asks for. The server starts it, and so does `deep-recall mcp`, which is often the only
/// process on its store. Dropping it stops the schedules; [`Background::stop`] also lets the
/// runner finish the step it is on.
pub struct Background {
    runner: Option<JobRunner>,
    _schedules: Vec<AbortOnDrop>,
}

impl Background {
    /// Starts the runner and the schedules the settings turn on. With `chat`, jobs that write
    /// with a chat model (fact keys, deep memory questions) use its model.
    pub async fn start(
        settings: &Settings,
        engine: &Engine,
        chat: Option<&ChatPipeline>,
        worker: String,
    ) -> Result<Self> {
        let runner = settings.jobs.run.then(|| {
            JobRunner::start(
                engine.clone().with_llm(chat.map(|c| c.model().clone())),
                JobRunnerConfig {
                    worker,
                    poll_interval: Duration::from_millis(settings.jobs.poll_ms.max(10)),
                    lease: Duration::from_secs(settings.jobs.lease_secs.max(1)),
                    ..Default::default()
                },
            )
        });
        let schedules = [
            backup_schedule(settings, engine)?,
            retrain_schedule(settings, engine),
            keys_schedule(settings, engine, chat.is_some()),
            purge_schedule(settings, engine),
        ];
        queue_reembed(settings, engine).await;
        Ok(Self {
            runner,
            _schedules: schedules.into_iter().flatten().collect(),
        })
    }

    /// Stops the schedules, then the runner (after the step it is on).
    pub async fn stop(self) {
        let Self { runner, _schedules } = self;
        drop(_schedules);
        if let Some(runner) = runner {
            runner.stop().await;
        }
    }
}

/// Runs the server until `shutdown` resolves: loads the models (the chat model unless
/// `with_chat` is false), opens the store, starts the fan-out between replicas and the job
/// runner, listens on `settings.bind`, tells `on_listen` the address, and serves; streams
/// under way are let finish before it returns.
pub async fn run(
    settings: Settings,
    with_chat: bool,
    on_listen: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    check_auth(&settings)?;
    tracing::info!(settings = ?settings, "starting");
    // A broken certificate stops the start before the models load.
    let certs = match (&settings.tls.cert, &settings.tls.key) {
        (Some(cert), Some(key)) => Some(crate::tls::Certificates::open(cert, key)?),
        _ => None,
    };
    let engine = engine(&settings).await?;
    let chat = if with_chat {
        Some(chat_pipeline(&settings, engine.clone()).await?)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .map_err(|e| Error::Unavailable {
            message: format!("cannot listen on {}", settings.bind),
            source: Some(Box::new(e)),
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("local address: {e}")))?;
    let _fanout = if settings.jobs.fanout {
        engine.start_fanout().await?
    } else {
        None
    };
    let background = Background::start(
        &settings,
        &engine,
        chat.as_ref(),
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| addr.to_string()),
            std::process::id()
        ),
    )
    .await?;
    let state = Arc::new(AppState::new(settings, engine, chat)?);
    let _metrics = match state.settings.metrics.bind {
        Some(bind) => Some(serve_metrics(bind, state.clone()).await?),
        None => None,
    };
    let served = match certs {
        Some(certs) => {
            #[cfg(unix)]
            let _reload = AbortOnDrop(certs.reload_on_sighup()?);
            let listener = crate::tls::TlsListener::new(listener, certs)
                .map_err(|e| Error::Internal(format!("tls listener: {e}")))?;
            on_listen(addr);
            crate::router::serve(listener, state, shutdown).await
        }
        None => {
            on_listen(addr);
            crate::router::serve(listener, state, shutdown).await
        }
    }
    .map_err(|e| Error::Internal(format!("server: {e}")));
    background.stop().await;
    served
}
