//! Start-up as library functions: the engine (store and models) from [`Settings`], the chat
//! model (local, or a remote OpenAI-compatible provider), and the whole server
//! ([`run`]: fan-out, job runner, listener, graceful shutdown). The command line calls these;
//! so can an embedding program or a test.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use recall_core::chat::ChatPipeline;
use recall_core::context::SummaryPolicy;
use recall_core::embed::{EmbedConfig, EmbeddingService};
use recall_core::error::{Error, Result};
use recall_core::llm::{
    ChatModel, ChatService, ChatSummarizer, ModelConfig, RemoteChat, RemoteConfig,
};
use recall_core::runner::{JobRunner, JobRunnerConfig};
use recall_core::store::{self, StoreConfig};
use recall_core::{Embedder, Engine};

use crate::settings::Settings;
use crate::state::AppState;

/// Files up to this size are dequantized at load on the CPU (F32 weights take about 8 bytes
/// per Q4 byte: a 400 MB file becomes about 3 GB).
const DEQUANTIZE_MAX_BYTES: u64 = 400 * 1024 * 1024;

/// The store the settings name (not yet opened).
pub fn store_config(settings: &Settings) -> StoreConfig {
    let s = &settings.store;
    let mut config = match &s.database_url {
        Some(url) => StoreConfig::postgres(url.clone()),
        None => StoreConfig::embedded(s.data_dir.clone()),
    };
    config.max_connections = s.max_connections;
    config.with_metric(s.metric)
}

/// A model setting: a path, or a name under the models directory.
fn model_path(settings: &Settings, name: &str) -> PathBuf {
    let as_path = Path::new(name);
    if as_path.is_absolute() || name.contains('/') {
        as_path.to_path_buf()
    } else {
        settings.models.dir.join(name)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("model loader panicked: {e}")))?
}

/// The engine over the configured store, with the embedding model and the optional
/// cross-encoder and emotion classifier loaded.
pub async fn engine(settings: &Settings) -> Result<Engine> {
    let device_config = settings.models.device()?;
    let mut config = EmbedConfig::new(model_path(settings, &settings.models.embedding));
    config.device = device_config;
    let embedder = blocking(move || EmbeddingService::start(&config)).await?;
    let store =
        store::open(&store_config(settings).with_index_dims(Embedder::dims(&embedder))).await?;
    let mut engine =
        Engine::new(store, Arc::new(embedder)).with_query_cache(settings.cache.config());
    let device = recall_core::device::select(device_config)?;
    if let Some(dir) = settings.models.cross_encoder.clone() {
        let device = device.clone();
        let ce = blocking(move || recall_core::rerank::CrossEncoder::load(&dir, &device)).await?;
        engine = engine.with_reranker(Arc::new(ce));
    }
    if let Some(dir) = settings.models.emotion.clone() {
        let detector =
            blocking(move || recall_core::rerank::ClassifierEmotionDetector::load(&dir, &device))
                .await?;
        engine = engine.with_emotion_detector(Arc::new(detector));
    }
    Ok(engine)
}

/// The engine over the configured store with no model loaded, for commands that only manage
/// data (export, forget): they work where the models are missing.
pub async fn data_engine(settings: &Settings) -> Result<Engine> {
    Ok(Engine::without_models(
        store::open(&store_config(settings)).await?,
    ))
}

/// The local chat model file or directory the settings name (the packaged default when
/// absent): a `.gguf` file, or a Hugging Face directory (config.json + *.safetensors +
/// tokenizer.json); a bare name is looked up under the models directory.
pub fn chat_model_path(settings: &Settings) -> Result<PathBuf> {
    let path = match settings.chat.model.as_deref() {
        None => recall_core::llm::local::default_model_path(&settings.models.dir),
        Some(m) if m.ends_with(".gguf") || m.contains('/') => PathBuf::from(m),
        Some(name) => settings.models.dir.join(name),
    };
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(path);
        }
        return std::fs::read_dir(&path)
            .map_err(|e| Error::io(&path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
            .ok_or_else(|| {
                Error::model(format!(
                    "{} has neither config.json nor a .gguf file",
                    path.display()
                ))
            });
    }
    if !path.is_file() {
        return Err(Error::model(format!(
            "chat model {} not found; run `deep-recall models fetch` (or pass --no-chat)",
            path.display()
        )));
    }
    Ok(path)
}

/// The configured remote provider's settings, when `chat.url` is set (the API key read from
/// `chat.api_key` or the file `chat.api_key_file`).
pub fn remote_config(settings: &Settings) -> Result<Option<RemoteConfig>> {
    let c = &settings.chat;
    let Some(url) = &c.url else {
        return Ok(None);
    };
    let api_key = match (&c.api_key, &c.api_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(path)) => {
            let key = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let key = key.trim().to_owned();
            if key.is_empty() {
                return Err(Error::invalid(format!(
                    "the API key file {} is empty",
                    path.display()
                )));
            }
            Some(key)
        }
        (None, None) => None,
    };
    Ok(Some(RemoteConfig {
        base_url: url.trim_end_matches('/').to_owned(),
        api_key,
        model: c
            .model_name
            .clone()
            .unwrap_or_else(|| RemoteConfig::default().model),
        context_length: c.context_length,
        timeout: Duration::from_secs(c.timeout_secs.max(1)),
        max_retries: c.max_retries,
        ..RemoteConfig::default()
    }))
}

/// The chat model the settings name: the remote provider when `chat.url` is set, else the
/// local model on its worker thread (`sequences` decoded together). Small quantized files are
/// turned into F32 at load on the CPU unless `dequantize` is false.
pub async fn chat_model(
    settings: &Settings,
    sequences: usize,
    dequantize: bool,
) -> Result<Arc<dyn ChatModel>> {
    if let Some(remote) = remote_config(settings)? {
        return Ok(Arc::new(RemoteChat::new(remote)?));
    }
    let path = chat_model_path(settings)?;
    let device = recall_core::device::select(settings.models.device()?)?;
    let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= DEQUANTIZE_MAX_BYTES);
    let config = ModelConfig {
        path,
        dequantize: dequantize && small && device.is_cpu(),
        ..ModelConfig::new("")
    };
    let queue = settings.chat.queue_capacity;
    let service = blocking(move || ChatService::start(&config, &device, queue, sequences)).await?;
    Ok(Arc::new(service))
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
    Ok(())
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
    let engine = engine(&settings).await?;
    let chat = if with_chat {
        let model = chat_model(&settings, settings.chat.max_sequences, true).await?;
        let mut pipeline = ChatPipeline::new(engine.clone(), model.clone());
        if settings.chat.summary_trigger_messages > 0 {
            pipeline = pipeline.with_summaries(
                Arc::new(ChatSummarizer::new(model, 160)),
                SummaryPolicy {
                    trigger_messages: settings.chat.summary_trigger_messages,
                    ..Default::default()
                },
            );
        }
        Some(pipeline)
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
    let runner = settings.jobs.run.then(|| {
        JobRunner::start(
            engine.clone(),
            JobRunnerConfig {
                worker: format!(
                    "{}-{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| addr.to_string()),
                    std::process::id()
                ),
                poll_interval: Duration::from_millis(settings.jobs.poll_ms.max(10)),
                lease: Duration::from_secs(settings.jobs.lease_secs.max(1)),
                ..Default::default()
            },
        )
    });
    let state = Arc::new(AppState::new(settings, engine, chat)?);
    on_listen(addr);
    let served = crate::router::serve(listener, state, shutdown)
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")));
    if let Some(runner) = runner {
        runner.stop().await;
    }
    served
}
