//! Opening an engine and a chat model from plain options: the one place that knows where the
//! packaged models live, how a model setting names a file or a directory, and when a quantized
//! model is turned into F32 at load. The server, the command line and the bindings all start
//! here, so they open the same engine the same way.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cache::QueryCacheConfig;
use crate::device::DeviceConfig;
use crate::embed::{
    DEFAULT_EMBEDDING_MODEL, EmbedConfig, Embedder, EmbeddingService, Precision, RemoteEmbedder,
};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::llm::{ChatModel, ChatService, ModelConfig, RemoteChat, RemoteConfig, WorkerLimits};
use crate::rerank::{ClassifierEmotionDetector, CrossEncoder};
use crate::store::{self, StoreConfig};

/// GGUF files up to this size whose formats have no fast quantized CPU kernel (Q5_1)
/// are dequantized at load on the CPU (F32 weights take about 8 bytes per Q4 byte: a 400 MB
/// file becomes about 3 GB).
pub const DEQUANTIZE_MAX_BYTES: u64 = 400 * 1024 * 1024;

/// What [`open_engine`] opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineOptions {
    /// The store.
    pub store: StoreConfig,
    /// Where the models are (filled by `deep-recall models fetch`).
    pub models_dir: PathBuf,
    /// The embedding model: a directory name under `models_dir`, or a path.
    pub embedding_model: String,
    /// Where models run.
    pub device: DeviceConfig,
    /// The local embedder's arithmetic on the CPU (int8: about twice as fast, cosine ≥ 0.99
    /// to the F32 vectors).
    #[serde(default)]
    pub embedding_precision: Precision,
    /// A cross-encoder directory, to re-rank the top candidates of every retrieval.
    pub cross_encoder: Option<PathBuf>,
    /// An emotion classifier directory, instead of the built-in lexicon.
    pub emotion_model: Option<PathBuf>,
    /// The query cache.
    pub query_cache: QueryCacheConfig,
    /// A remote embedding provider instead of the local model (`embedding_model` and
    /// `device` are then unused for embeddings).
    #[serde(default)]
    pub remote_embedding: Option<RemoteEmbedding>,
    /// The local embedding model being left while a change of model is rolled out (a
    /// directory name under `models_dir`, or a path): users not yet re-embedded keep
    /// searching with it (see [`Engine::reembed`]).
    #[serde(default)]
    pub previous_embedding_model: Option<String>,
}

/// A remote embedding provider (the OpenAI embeddings API): where, and how many texts a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteEmbedding {
    /// The provider; its `model` is the name the provider knows, recorded with every vector.
    pub provider: RemoteConfig,
    /// Texts in one request at most.
    pub max_batch: usize,
    /// The provider model's input limit in tokens: longer messages are split into pieces
    /// within it ([`RemoteEmbedder::with_max_tokens`]); none: texts are sent whole.
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

impl EngineOptions {
    /// `store` with the default models (`./models`, all-MiniLM-L6-v2, any device) and cache.
    pub fn new(store: StoreConfig) -> Self {
        Self {
            store,
            models_dir: PathBuf::from("models"),
            embedding_model: DEFAULT_EMBEDDING_MODEL.to_owned(),
            device: DeviceConfig::default(),
            embedding_precision: Precision::default(),
            cross_encoder: None,
            remote_embedding: None,
            previous_embedding_model: None,
            emotion_model: None,
            query_cache: QueryCacheConfig::default(),
        }
    }
}

/// A model setting: a path (absolute, or with a `/`), or a name under `models_dir`.
pub fn model_path(models_dir: &Path, name: &str) -> PathBuf {
    let as_path = Path::new(name);
    if as_path.is_absolute() || name.contains('/') {
        as_path.to_path_buf()
    } else {
        models_dir.join(name)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("model loader panicked: {e}")))?
}

/// The engine over `options.store` with the embedding model (and the optional cross-encoder
/// and emotion classifier) loaded, off the async runtime.
pub async fn open_engine(options: &EngineOptions) -> Result<Engine> {
    let embedder: Arc<dyn Embedder> = match &options.remote_embedding {
        Some(remote) => Arc::new(
            RemoteEmbedder::connect(remote.provider.clone(), remote.max_batch)
                .await?
                .with_max_tokens(remote.max_tokens),
        ),
        None => {
            let mut config =
                EmbedConfig::new(model_path(&options.models_dir, &options.embedding_model));
            config.device = options.device;
            config.precision = options.embedding_precision;
            Arc::new(blocking(move || EmbeddingService::start(&config)).await?)
        }
    };
    let store = store::open(&options.store.clone().with_index_dims(embedder.dims())).await?;
    let mut engine = Engine::new(store, embedder).with_query_cache(options.query_cache);
    if let Some(previous) = &options.previous_embedding_model {
        let mut config = EmbedConfig::new(model_path(&options.models_dir, previous));
        config.device = options.device;
        config.precision = options.embedding_precision;
        let previous: Arc<dyn Embedder> =
            Arc::new(blocking(move || EmbeddingService::start(&config)).await?);
        engine = engine.with_previous_embedder(Some(previous));
    }
    let device = crate::device::select(options.device)?;
    if let Some(dir) = options.cross_encoder.clone() {
        let device = device.clone();
        let ce = blocking(move || CrossEncoder::load(&dir, &device)).await?;
        engine = engine.with_reranker(Arc::new(ce));
    }
    if let Some(dir) = options.emotion_model.clone() {
        let detector = blocking(move || ClassifierEmotionDetector::load(&dir, &device)).await?;
        engine = engine.with_emotion_detector(Arc::new(detector));
    }
    Ok(engine)
}

/// The engine over `store` with no model loaded, for data management (export, deletion,
/// listing): it works where the models are missing.
pub async fn open_data_engine(store: &StoreConfig) -> Result<Engine> {
    Ok(Engine::without_models(store::open(store).await?))
}

/// What [`open_chat_model`] opens: a remote provider when `remote` is set, else a local model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatOptions {
    /// Where the models are.
    pub models_dir: PathBuf,
    /// A local model: a `.gguf` file, a safetensors directory, or a name under `models_dir`;
    /// the packaged SmolLM2-135M-Instruct when absent.
    pub model: Option<String>,
    /// Where the local model runs.
    pub device: DeviceConfig,
    /// Requests waiting for the local model at most.
    pub queue_capacity: usize,
    /// Sequences the local model decodes together at most.
    pub max_sequences: usize,
    /// MiB of finished sequences' attention caches the local model keeps for prompts that
    /// begin with the same tokens (prefix reuse, [`crate::llm::prefix`]; 0: none).
    pub prefix_cache_mib: usize,
    /// Turn small quantized files without fast CPU kernels (Q5_1) into F32 at load on
    /// the CPU (faster there); files in other formats stay quantized.
    pub dequantize: bool,
    /// A remote OpenAI-compatible provider instead of the local model.
    pub remote: Option<RemoteConfig>,
}

impl ChatOptions {
    /// The packaged local model under `models_dir`, on any device, one sequence at a time.
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        Self {
            models_dir: models_dir.into(),
            model: None,
            device: DeviceConfig::default(),
            queue_capacity: 64,
            max_sequences: 1,
            prefix_cache_mib: 64,
            dequantize: true,
            remote: None,
        }
    }
}

/// The local chat model a setting names (the packaged default when absent): a `.gguf` file, or
/// a Hugging Face directory (config.json + *.safetensors + tokenizer.json); a bare name is
/// looked up under `models_dir`, and a directory holding one `.gguf` file means that file.
pub fn chat_model_path(models_dir: &Path, model: Option<&str>) -> Result<PathBuf> {
    let path = match model {
        None => crate::llm::local::default_model_path(models_dir),
        Some(m) if m.ends_with(".gguf") || m.contains('/') => PathBuf::from(m),
        Some(name) => models_dir.join(name),
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
            "chat model {} not found; run `deep-recall models fetch`",
            path.display()
        )));
    }
    Ok(path)
}

/// The chat model of `options`: the remote provider, or the local model on its worker thread.
pub async fn open_chat_model(options: &ChatOptions) -> Result<Arc<dyn ChatModel>> {
    if let Some(remote) = &options.remote {
        return Ok(Arc::new(RemoteChat::new(remote.clone())?));
    }
    let path = chat_model_path(&options.models_dir, options.model.as_deref())?;
    let device = crate::device::select(options.device)?;
    let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= DEQUANTIZE_MAX_BYTES);
    let slow_format = path.is_file() && !crate::llm::local::has_fast_cpu_kernels(&path)?;
    let config = ModelConfig {
        path,
        dequantize: options.dequantize && small && slow_format && device.is_cpu(),
        ..ModelConfig::new("")
    };
    let (queue, sequences) = (options.queue_capacity.max(1), options.max_sequences.max(1));
    let limits = WorkerLimits {
        prefix_cache_bytes: options.prefix_cache_mib.saturating_mul(1 << 20),
        ..WorkerLimits::for_device(&device)
    };
    let service = blocking(move || {
        ChatService::start_with_limits(&config, &device, queue, sequences, limits)
    })
    .await?;
    Ok(Arc::new(service))
}

/// A remote provider's settings from plain values: `api_key` itself or read from
/// `api_key_file` (trimmed; an empty file is an error).
pub fn remote_config(
    base_url: &str,
    model: Option<&str>,
    api_key: Option<&str>,
    api_key_file: Option<&Path>,
) -> Result<RemoteConfig> {
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(Error::invalid(format!(
            "a provider URL must be http:// or https://, not {base_url:?}"
        )));
    }
    let api_key = match (api_key, api_key_file) {
        (Some(k), _) => Some(k.to_owned()),
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
    Ok(RemoteConfig {
        base_url: base_url.trim_end_matches('/').to_owned(),
        api_key,
        model: model.map_or_else(|| RemoteConfig::default().model, str::to_owned),
        ..RemoteConfig::default()
    })
}
