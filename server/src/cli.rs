//! The `deep-recall` command line.
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use recall_core::context::ChatTurn;
use recall_core::device::DeviceConfig;
use recall_core::embed::{DEFAULT_EMBEDDING_MODEL, EmbedConfig, EmbeddingService};
use recall_core::llm::{GenerationParams, LocalModel, ModelConfig};
use recall_core::models::{self, FetchOptions, FetchOutcome, FetchProgress, ModelSpec};
use recall_core::retrieval::{Fusion, RankingConfig, SearchMode};
use recall_core::store::{self, Actor, ExportOptions, StoreConfig};
use recall_core::types::{Filter, MemoryKind, Metric, Role, SearchPage};
use recall_core::{Engine, Error, ErrorKind, RetrieveOptions, SearchOptions};
use serde_json::json;

/// Long-term memory for open-source LLMs.
#[derive(Debug, Parser)]
#[command(name = "deep-recall", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Postgres URL (postgres://...). When absent, the embedded store in --data-dir is used.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// Data directory of the embedded store.
    #[arg(
        long,
        env = "DEEP_RECALL_DATA_DIR",
        default_value = "data",
        global = true
    )]
    data_dir: PathBuf,

    /// Directory holding the models (filled by `deep-recall models fetch`).
    #[arg(
        long,
        env = "DEEP_RECALL_MODELS_DIR",
        default_value = "models",
        global = true
    )]
    models_dir: PathBuf,

    /// Embedding model: a directory name under --models-dir, or a path.
    #[arg(long, env = "DEEP_RECALL_EMBEDDING_MODEL", default_value = DEFAULT_EMBEDDING_MODEL, global = true)]
    embedding_model: String,

    /// How vectors are compared: cosine, l2 or dot.
    #[arg(
        long,
        env = "DEEP_RECALL_METRIC",
        default_value = "cosine",
        global = true
    )]
    metric: Metric,

    /// Where models run: auto, cpu, cuda[:N] or metal[:N].
    #[arg(
        long,
        env = "DEEP_RECALL_DEVICE",
        default_value = "auto",
        global = true
    )]
    device: DeviceConfig,

    /// Cross-encoder directory (BertForSequenceClassification, one output) to re-rank the top
    /// candidates of every search; none by default.
    #[arg(long, env = "DEEP_RECALL_CROSS_ENCODER", global = true)]
    cross_encoder: Option<PathBuf>,

    /// Emotion classifier directory (BertForSequenceClassification with emotion labels) to use
    /// instead of the built-in lexicon.
    #[arg(long, env = "DEEP_RECALL_EMOTION_MODEL", global = true)]
    emotion_model: Option<PathBuf>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch or list the packaged models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Import a conversation from a JSON Lines file (one message per line), embedding every
    /// message. The whole file is checked first; nothing is written if any line is bad.
    Ingest {
        /// The user who owns the conversation.
        #[arg(long)]
        user: String,
        /// The file; `-` reads standard input.
        file: PathBuf,
    },
    /// Search a user's memories: hybrid (vector + full text, fused and re-ranked) by default.
    Search {
        /// Whose memories to search.
        #[arg(long)]
        user: String,
        /// How many results.
        #[arg(long, short = 'k', default_value_t = 10)]
        top_k: usize,
        /// Only this session.
        #[arg(long)]
        session: Option<String>,
        /// Only these kinds (message, fact, persona, summary); repeatable.
        #[arg(long)]
        kind: Vec<MemoryKind>,
        /// Only these roles (user, assistant, system); repeatable.
        #[arg(long)]
        role: Vec<Role>,
        /// Only memories with every one of these tags; repeatable.
        #[arg(long)]
        tag: Vec<String>,
        /// Only memories at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Only memories before this time (RFC 3339).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        /// Drop results scoring below this (raw similarity in plain vector mode).
        #[arg(long)]
        min_score: Option<f32>,
        /// Continue after a previous page (its `next_cursor`; plain vector mode only).
        #[arg(long)]
        cursor: Option<String>,
        /// Retrievers: vector, text or hybrid.
        #[arg(long, default_value = "hybrid")]
        mode: SearchMode,
        #[command(flatten)]
        ranking: RankingArgs,
        /// What to look for.
        query: String,
    },
    /// Measure retrieval on a conversation benchmark in the LoCoMo JSON format: recall@k,
    /// hit@k and MRR of the evidence turns, overall and per question category. Each sample is
    /// ingested as a temporary user (removed afterwards) of the configured store.
    Eval {
        /// The dataset (a JSON list of LoCoMo samples).
        file: PathBuf,
        /// Cut-offs, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
        k: Vec<usize>,
        /// Modes to evaluate (vector, text, hybrid), comma-separated; each is reported
        /// separately, on the same ingested data.
        #[arg(long, value_delimiter = ',', default_value = "hybrid")]
        mode: Vec<SearchMode>,
        #[command(flatten)]
        ranking: RankingArgs,
    },
    /// Generate an answer with a local chat model, streamed to standard output.
    Generate {
        /// A chat model: a .gguf path, or a name under --models-dir (default: the packaged
        /// SmolLM2-135M-Instruct).
        #[arg(long)]
        model: Option<String>,
        /// Tokens to generate at most.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Sampling temperature (0 is greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Nucleus sampling.
        #[arg(long)]
        top_p: Option<f64>,
        /// Top-k sampling.
        #[arg(long)]
        top_k: Option<usize>,
        /// Repetition penalty (1 is none).
        #[arg(long, default_value_t = 1.1)]
        repetition_penalty: f32,
        /// Sampler seed.
        #[arg(long, default_value_t = 299_792_458)]
        seed: u64,
        /// Text that ends the answer; repeatable.
        #[arg(long)]
        stop: Vec<String>,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        /// Keep quantized weights as they are (by default small models are turned into F32
        /// at load on the CPU, which is much faster there).
        #[arg(long)]
        no_dequantize: bool,
        /// The user's message.
        prompt: String,
    },
    /// Print everything stored about a user as JSON.
    Export {
        /// Whose data.
        #[arg(long)]
        user: String,
        /// Include the embedding vectors.
        #[arg(long)]
        with_vectors: bool,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Delete everything stored about a user, at once and for good.
    Forget {
        /// Whose data.
        #[arg(long)]
        user: String,
    },
    /// Run the server: GraphQL at /graphql (HTTP and WebSocket), OpenAI-compatible REST under
    /// /v1, /health, /ready and /metrics.
    Serve(ServeArgs),
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Service API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print the SHA-256 of a key, as `auth.api_keys[].sha256` in the settings wants it.
    Hash {
        /// The key.
        key: String,
    },
}

/// Flags of `serve`; they override the config file and `DEEP_RECALL__*` variables.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Settings file (TOML); see docs/setup.md for the keys.
    #[arg(long, env = "DEEP_RECALL_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// HS256 secret for JWT bearer tokens.
    #[arg(long, env = "DEEP_RECALL_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// PEM file with the RS256 public key for JWT bearer tokens.
    #[arg(long, env = "DEEP_RECALL_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// Let requests without credentials in; `X-User-Id` names the user (development only).
    #[arg(long)]
    allow_anonymous: bool,
    /// Serve GraphiQL on GET /graphql.
    #[arg(long)]
    graphiql: bool,
    /// Chat model: a .gguf path or a name under --models-dir (the packaged SmolLM2 by default).
    #[arg(long, env = "DEEP_RECALL_CHAT_MODEL")]
    chat_model: Option<String>,
    /// Serve without a chat model (memory API only; chat answers UNAVAILABLE).
    #[arg(long)]
    no_chat: bool,
}

impl Cli {
    /// Whether this runs the server (which logs JSON at info level by default).
    pub fn is_serve(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }
}

/// Re-ranking flags shared by `search` and `eval`.
#[derive(Debug, Clone, Args)]
struct RankingArgs {
    /// Apply the re-ranking signals (the default in hybrid mode).
    #[arg(long, overrides_with = "no_rerank")]
    rerank: bool,
    /// Relevance only (the default in vector and text modes).
    #[arg(long)]
    no_rerank: bool,
    /// Candidates taken from each retriever.
    #[arg(long)]
    candidates: Option<usize>,
    /// Hybrid fusion: rrf or weighted.
    #[arg(long)]
    fusion: Option<String>,
    /// RRF's k, or the vector weight alpha of weighted fusion.
    #[arg(long)]
    fusion_param: Option<f32>,
    /// Weight of recency (0 switches it off).
    #[arg(long)]
    recency_weight: Option<f32>,
    /// Recency half-life in days.
    #[arg(long)]
    half_life_days: Option<f32>,
    /// Weight of importance (0 switches it off).
    #[arg(long)]
    importance_weight: Option<f32>,
    /// Weight of emotional match (0 switches it off).
    #[arg(long)]
    emotion_weight: Option<f32>,
    /// MMR lambda in [0, 1] (1 switches diversity off).
    #[arg(long)]
    mmr: Option<f32>,
    /// Candidates re-scored by the cross-encoder (with --cross-encoder).
    #[arg(long)]
    cross_encoder_top_n: Option<usize>,
    /// Weight of the cross-encoder's probability in [0, 1] (0 switches it off).
    #[arg(long)]
    cross_encoder_weight: Option<f32>,
}

impl RankingArgs {
    fn config(
        &self,
        mode: SearchMode,
        min_score: Option<f32>,
    ) -> recall_core::Result<RankingConfig> {
        let rerank = if self.no_rerank {
            false
        } else {
            self.rerank || mode == SearchMode::Hybrid
        };
        let mut c = if rerank {
            RankingConfig::default()
        } else {
            RankingConfig::plain()
        };
        if let Some(n) = self.candidates {
            c.candidates = n;
        }
        match (self.fusion.as_deref(), self.fusion_param) {
            (None | Some("rrf"), p) => {
                if let Some(k) = p {
                    c.fusion = Fusion::Rrf { k };
                } else if self.fusion.is_some() {
                    c.fusion = Fusion::Rrf { k: 60.0 };
                }
            }
            (Some("weighted"), p) => {
                c.fusion = Fusion::Weighted {
                    alpha: p.unwrap_or(0.5),
                }
            }
            (Some(other), _) => {
                return Err(Error::invalid(format!(
                    "unknown fusion {other:?} (rrf or weighted)"
                )));
            }
        }
        if let Some(w) = self.recency_weight {
            c.recency_weight = w;
        }
        if let Some(d) = self.half_life_days {
            c.recency_half_life_days = d;
        }
        if let Some(w) = self.importance_weight {
            c.importance_weight = w;
        }
        if let Some(w) = self.emotion_weight {
            c.emotion_weight = w;
        }
        if let Some(l) = self.mmr {
            c.mmr_lambda = Some(l);
        }
        if let Some(n) = self.cross_encoder_top_n {
            c.cross_encoder_top_n = n;
        }
        if let Some(w) = self.cross_encoder_weight {
            c.cross_encoder_weight = w;
        }
        c.min_score = min_score;
        c.validate()?;
        Ok(c)
    }

    /// Plain vector search with no signal: served by the paginated similarity search.
    fn is_plain_vector(&self, mode: SearchMode) -> bool {
        mode == SearchMode::Vector
            && !self.rerank
            && self.recency_weight.is_none_or(|w| w == 0.0)
            && self.importance_weight.is_none_or(|w| w == 0.0)
            && self.emotion_weight.is_none_or(|w| w == 0.0)
            && self.mmr.is_none_or(|l| l >= 1.0)
    }
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Download the default models (checked by sha256; files already in place are kept).
    Fetch {
        /// Where to put them (overrides --models-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Only these models (by name); repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Every known model, test models included.
        #[arg(long)]
        all: bool,
        /// Look here for already downloaded wheels before going to the network.
        #[arg(long, env = "DEEP_RECALL_WHEEL_DIR")]
        wheel_dir: Option<PathBuf>,
        /// Package index ("simple" API) to download from.
        #[arg(long, env = "DEEP_RECALL_PYPI_INDEX", default_value = models::DEFAULT_INDEX)]
        index_url: String,
    },
    /// Show the known models and whether they are present.
    List,
}

/// Exit codes: 0 success, 1 internal failure, 2 bad input (also bad flags), 3 not found,
/// 4 model files missing or broken, 5 a service (database, network) unavailable or overloaded.
pub fn exit_code(err: &Error) -> i32 {
    match err.kind() {
        ErrorKind::InvalidInput => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::Model => 4,
        ErrorKind::Unavailable | ErrorKind::Overloaded => 5,
        ErrorKind::Internal => 1,
    }
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let json = cli.global.json;
    match dispatch(cli).await {
        Ok(()) => 0,
        Err(err) => {
            if json {
                let body = json!({ "error": { "code": format!("{:?}", err.kind()), "message": err.to_string() } });
                eprintln!("{body}");
            } else {
                eprintln!("error: {err}");
                let mut source = std::error::Error::source(&err);
                while let Some(s) = source {
                    eprintln!("  caused by: {s}");
                    source = s.source();
                }
            }
            exit_code(&err)
        }
    }
}

async fn dispatch(cli: Cli) -> recall_core::Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Models { command } => match command {
            ModelsCommand::Fetch {
                dir,
                only,
                all,
                wheel_dir,
                index_url,
            } => {
                let models_dir = dir.clone().unwrap_or_else(|| g.models_dir.clone());
                fetch_models(
                    &models_dir,
                    only,
                    *all,
                    wheel_dir.clone(),
                    index_url,
                    g.json,
                )
                .await
            }
            ModelsCommand::List => list_models(&g.models_dir, g.json),
        },
        Command::Ingest { user, file } => ingest(g, user, file).await,
        Command::Search {
            user,
            top_k,
            session,
            kind,
            role,
            tag,
            since,
            until,
            min_score,
            cursor,
            mode,
            ranking,
            query,
        } => {
            let filter = Filter {
                session: session.clone(),
                kinds: kind.clone(),
                roles: role.clone(),
                tags: tag.clone(),
                since: *since,
                until: *until,
            };
            if ranking.is_plain_vector(*mode) {
                let options = SearchOptions {
                    top_k: *top_k,
                    min_score: *min_score,
                    filter,
                    cursor: cursor.clone(),
                };
                return search(g, user, query, &options).await;
            }
            if cursor.is_some() {
                return Err(Error::invalid(
                    "--cursor pages plain vector search only (--mode vector without re-ranking)",
                ));
            }
            let options = RetrieveOptions {
                top_k: *top_k,
                mode: *mode,
                filter,
                ranking: ranking.config(*mode, *min_score)?,
                now: None,
            };
            retrieve(g, user, query, &options).await
        }
        Command::Eval {
            file,
            k,
            mode,
            ranking,
        } => eval(g, file, k, mode, ranking).await,
        Command::Generate {
            model,
            max_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            stop,
            system,
            no_dequantize,
            prompt,
        } => {
            let params = GenerationParams {
                max_tokens: *max_tokens,
                temperature: *temperature,
                top_p: *top_p,
                top_k: *top_k,
                repetition_penalty: *repetition_penalty,
                seed: *seed,
                stop: stop.clone(),
                ..GenerationParams::default()
            };
            generate(
                g,
                model.as_deref(),
                system.as_deref(),
                prompt,
                &params,
                !*no_dequantize,
            )
            .await
        }
        Command::Export {
            user,
            with_vectors,
            output,
        } => export(g, user, *with_vectors, output.as_deref()).await,
        Command::Forget { user } => forget(g, user).await,
        Command::Serve(args) => serve(g, args).await,
        Command::Schema => {
            print!("{}", crate::graphql::sdl());
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Hash { key },
        } => {
            println!("{}", crate::auth::hash_api_key(key));
            Ok(())
        }
    }
}

async fn serve(g: &Global, args: &ServeArgs) -> recall_core::Result<()> {
    use crate::settings::Settings;
    let mut settings = Settings::load(args.config.as_deref(), std::env::vars())?;
    if let Some(b) = args.bind {
        settings.bind = b;
    }
    if args.jwt_secret.is_some() {
        settings.auth.jwt_secret = args.jwt_secret.clone();
    }
    if args.jwt_public_key.is_some() {
        settings.auth.jwt_public_key = args.jwt_public_key.clone();
    }
    settings.auth.allow_anonymous |= args.allow_anonymous;
    settings.graphiql |= args.graphiql;
    if args.chat_model.is_some() {
        settings.chat.model = args.chat_model.clone();
    }
    settings.validate()?;
    if settings.auth.jwt_secret.is_none()
        && settings.auth.jwt_public_key.is_none()
        && settings.auth.api_keys.is_empty()
        && !settings.auth.allow_anonymous
    {
        return Err(Error::invalid(
            "no way to authenticate: give --jwt-secret, --jwt-public-key or API keys in the \
             config, or --allow-anonymous for local development",
        ));
    }
    tracing::info!(settings = ?settings, "starting");
    let engine = engine(g).await?;
    let chat = if args.no_chat {
        None
    } else {
        let path = chat_model_path(g, settings.chat.model.as_deref())?;
        let device = recall_core::device::select(g.device)?;
        let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= DEQUANTIZE_MAX_BYTES);
        let config = ModelConfig {
            path,
            dequantize: small && device.is_cpu(),
            ..ModelConfig::new("")
        };
        let (queue, seqs) = (settings.chat.queue_capacity, settings.chat.max_sequences);
        let service = tokio::task::spawn_blocking(move || {
            recall_core::llm::ChatService::start(&config, &device, queue, seqs)
        })
        .await
        .map_err(|e| Error::Internal(format!("model loader panicked: {e}")))??;
        let model: Arc<dyn recall_core::llm::ChatModel> = Arc::new(service);
        let mut pipeline = recall_core::chat::ChatPipeline::new(engine.clone(), model.clone());
        if settings.chat.summary_trigger_messages > 0 {
            pipeline = pipeline.with_summaries(
                Arc::new(recall_core::llm::ChatSummarizer::new(model, 160)),
                recall_core::context::SummaryPolicy {
                    trigger_messages: settings.chat.summary_trigger_messages,
                    ..Default::default()
                },
            );
        }
        Some(pipeline)
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
        recall_core::jobs::JobRunner::start(
            engine.clone(),
            recall_core::jobs::JobRunnerConfig {
                worker: format!(
                    "{}-{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| addr.to_string()),
                    std::process::id()
                ),
                poll_interval: std::time::Duration::from_millis(settings.jobs.poll_ms.max(10)),
                lease: std::time::Duration::from_secs(settings.jobs.lease_secs.max(1)),
                ..Default::default()
            },
        )
    });
    let state = Arc::new(crate::app::AppState::new(settings, engine, chat)?);
    println!("deep-recall: listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let served = crate::app::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")));
    if let Some(runner) = runner {
        runner.stop().await;
    }
    served
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The chat model for a `--model`/`--chat-model` value (the packaged default when absent): a
/// `.gguf` file, or a Hugging Face directory (config.json + *.safetensors + tokenizer.json);
/// a bare name is looked up under the models directory.
fn chat_model_path(g: &Global, model: Option<&str>) -> recall_core::Result<PathBuf> {
    let path = match model {
        None => recall_core::llm::local::default_model_path(&g.models_dir),
        Some(m) if m.ends_with(".gguf") || m.contains('/') => PathBuf::from(m),
        Some(name) => g.models_dir.join(name),
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

fn store_config(g: &Global) -> StoreConfig {
    let config = match &g.database_url {
        Some(url) => StoreConfig::postgres(url.clone()),
        None => StoreConfig::embedded(g.data_dir.clone()),
    };
    config.with_metric(g.metric)
}

fn embedding_dir(g: &Global) -> PathBuf {
    let as_path = Path::new(&g.embedding_model);
    if as_path.is_absolute() || g.embedding_model.contains('/') {
        as_path.to_path_buf()
    } else {
        g.models_dir.join(&g.embedding_model)
    }
}

async fn engine(g: &Global) -> recall_core::Result<Engine> {
    let dir = embedding_dir(g);
    let mut config = EmbedConfig::new(dir);
    config.device = g.device;
    let embedder = tokio::task::spawn_blocking(move || EmbeddingService::start(&config))
        .await
        .map_err(|e| Error::Internal(format!("model loader panicked: {e}")))??;
    let store =
        store::open(&store_config(g).with_index_dims(recall_core::Embedder::dims(&embedder)))
            .await?;
    let mut engine = Engine::new(store, Arc::new(embedder));
    let device = recall_core::device::select(g.device)?;
    if let Some(dir) = g.cross_encoder.clone() {
        let device = device.clone();
        let ce = tokio::task::spawn_blocking(move || {
            recall_core::rerank::CrossEncoder::load(&dir, &device)
        })
        .await
        .map_err(|e| Error::Internal(format!("model loader panicked: {e}")))??;
        engine = engine.with_reranker(Arc::new(ce));
    }
    if let Some(dir) = g.emotion_model.clone() {
        let detector = tokio::task::spawn_blocking(move || {
            recall_core::rerank::ClassifierEmotionDetector::load(&dir, &device)
        })
        .await
        .map_err(|e| Error::Internal(format!("model loader panicked: {e}")))??;
        engine = engine.with_emotion_detector(Arc::new(detector));
    }
    Ok(engine)
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)")
        .expect("valid template")
        .progress_chars("=> ")
}

async fn ingest(g: &Global, user: &str, file: &Path) -> recall_core::Result<()> {
    let started = Instant::now();
    let engine = engine(g).await?;
    let limits = engine.store().limits().clone();
    let messages = if file == Path::new("-") {
        recall_core::ingest::parse_jsonl(std::io::stdin().lock(), &limits)?
    } else {
        let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
        recall_core::ingest::parse_jsonl(BufReader::new(f), &limits)?
    };
    let total = messages.len();
    let sessions: std::collections::HashSet<&str> =
        messages.iter().map(|m| m.session.as_str()).collect();
    let sessions = sessions.len();
    let bar = ProgressBar::new(total as u64).with_style(spinner_style());
    bar.set_message("embedding");
    let written = engine
        .add_messages_with_progress(user, messages, &|done| bar.set_position(done as u64))
        .await?;
    bar.finish_and_clear();
    let memories: usize = written.iter().map(|w| w.memory_ids.len()).sum();
    let seconds = started.elapsed().as_secs_f64();
    if g.json {
        println!(
            "{}",
            json!({
                "user": user,
                "messages": written.len(),
                "sessions": sessions,
                "memories": memories,
                "store": engine.store().backend(),
                "seconds": seconds,
            })
        );
    } else {
        println!(
            "ingested {} messages ({} sessions, {} memories) for user {user} into the {} store in {seconds:.1}s",
            written.len(),
            sessions,
            memories,
            engine.store().backend(),
        );
    }
    Ok(())
}

fn print_page(page: &SearchPage, json: bool) {
    if json {
        let hits: Vec<_> = page
            .hits
            .iter()
            .map(|h| {
                json!({
                    "id": h.memory.id,
                    "score": h.score,
                    "distance": h.distance,
                    "kind": h.memory.kind,
                    "content": h.memory.content,
                    "session": h.memory.session,
                    "role": h.memory.role,
                    "message_id": h.memory.message_id,
                    "tags": h.memory.tags,
                    "created_at": h.memory.created_at,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "hits": hits, "next_cursor": page.next_cursor })
        );
        return;
    }
    if page.hits.is_empty() {
        println!("no memories found");
    }
    for (i, h) in page.hits.iter().enumerate() {
        let m = &h.memory;
        let role = m.role.map_or(String::new(), |r| format!("{r}, "));
        println!(
            "{:>3}. [{:.4}] ({}session {}, {}) {}",
            i + 1,
            h.score,
            role,
            m.session.as_deref().unwrap_or("-"),
            m.created_at.format("%Y-%m-%d %H:%M"),
            m.content
        );
    }
    if let Some(c) = &page.next_cursor {
        println!("more: --cursor {c}");
    }
}

async fn search(
    g: &Global,
    user: &str,
    query: &str,
    options: &SearchOptions,
) -> recall_core::Result<()> {
    let engine = engine(g).await?;
    let page = engine.search(user, query, options).await?;
    print_page(&page, g.json);
    Ok(())
}

async fn retrieve(
    g: &Global,
    user: &str,
    query: &str,
    options: &RetrieveOptions,
) -> recall_core::Result<()> {
    let engine = engine(g).await?;
    let hits = engine.retrieve(user, query, options).await?;
    if g.json {
        let hits: Vec<_> = hits
            .iter()
            .map(|h| {
                json!({
                    "id": h.memory.id,
                    "score": h.score,
                    "similarity": h.signals.similarity,
                    "signals": h.signals,
                    "kind": h.memory.kind,
                    "content": h.memory.content,
                    "session": h.memory.session,
                    "role": h.memory.role,
                    "message_id": h.memory.message_id,
                    "tags": h.memory.tags,
                    "importance": h.memory.importance,
                    "emotion": h.memory.emotion,
                    "created_at": h.memory.created_at,
                })
            })
            .collect();
        println!("{}", json!({ "mode": options.mode, "hits": hits }));
        return Ok(());
    }
    if hits.is_empty() {
        println!("no memories found");
    }
    for (i, h) in hits.iter().enumerate() {
        let m = &h.memory;
        let role = m.role.map_or(String::new(), |r| format!("{r}, "));
        let sim = h
            .signals
            .similarity
            .map_or(String::new(), |s| format!(" sim {s:.4}"));
        println!(
            "{:>3}. [{:.4}{sim}] ({}session {}, {}) {}",
            i + 1,
            h.score,
            role,
            m.session.as_deref().unwrap_or("-"),
            m.created_at.format("%Y-%m-%d %H:%M"),
            m.content
        );
    }
    Ok(())
}

async fn eval(
    g: &Global,
    file: &Path,
    ks: &[usize],
    modes: &[SearchMode],
    ranking: &RankingArgs,
) -> recall_core::Result<()> {
    if ks.is_empty() || ks.contains(&0) {
        return Err(Error::invalid("--k needs cut-offs of at least 1"));
    }
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let (samples, warnings) = recall_core::eval::parse_locomo(&text)?;
    for w in &warnings.bad_evidence {
        eprintln!("warning: skipped evidence id {w}");
    }
    let engine = engine(g).await?;
    let run = format!("{:x}", Utc::now().timestamp_micros());
    let bar = ProgressBar::new(samples.len() as u64).with_style(spinner_style());
    bar.set_message("ingesting");
    let mut ingested = Vec::with_capacity(samples.len());
    let mut outcome = Ok(());
    for s in samples {
        let user = format!("eval-{run}-{}", s.id);
        match recall_core::eval::ingest_sample(&engine, &user, &s).await {
            Ok(i) => ingested.push((s, i)),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut reports = Vec::new();
    if outcome.is_ok() {
        for mode in modes {
            let options = RetrieveOptions {
                mode: *mode,
                ranking: match ranking.config(*mode, None) {
                    Ok(c) => c,
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                },
                ..RetrieveOptions::default()
            };
            match recall_core::eval::evaluate(&engine, &ingested, ks, &options).await {
                Ok(mut r) => {
                    r["mode"] = json!(mode);
                    r["reranked"] = json!(options.ranking != RankingConfig::plain());
                    r["store"] = json!(engine.store().backend());
                    r["bad_evidence"] = json!(warnings.bad_evidence.len());
                    r["skipped_questions"] = json!(warnings.skipped_questions);
                    reports.push(r);
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
    }
    // The temporary users go whatever happened.
    for (_, i) in &ingested {
        engine.store().delete_user(&i.user, &Actor::cli()).await?;
    }
    outcome?;
    for r in &reports {
        if g.json {
            println!("{r}");
        } else {
            print_eval(r, ks);
        }
    }
    Ok(())
}

fn print_eval(r: &serde_json::Value, ks: &[usize]) {
    let mode = r["mode"].as_str().unwrap_or("?");
    let reranked = if r["reranked"].as_bool() == Some(true) {
        " + re-ranking"
    } else {
        ""
    };
    println!(
        "mode {mode}{reranked} on the {} store: {} questions",
        r["store"].as_str().unwrap_or("?"),
        r["questions"]
    );
    let mut header = format!("{:<10}", "category");
    for k in ks {
        header += &format!(" {:>9} {:>7}", format!("recall@{k}"), format!("hit@{k}"));
    }
    println!("{header} {:>6} {:>5}", "mrr", "n");
    let row = |name: &str, m: &serde_json::Value| {
        let mut line = format!("{name:<10}");
        for k in ks {
            line += &format!(
                " {:>9.3} {:>7.3}",
                m[format!("recall@{k}")].as_f64().unwrap_or(0.0),
                m[format!("hit@{k}")].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "{line} {:>6.3} {:>5}",
            m["mrr"].as_f64().unwrap_or(0.0),
            m["questions"]
        );
    };
    if let Some(cats) = r["by_category"].as_object() {
        for (c, m) in cats {
            row(c, m);
        }
    }
    row("overall", &r["overall"]);
    println!();
}

/// Files up to this size are dequantized at load on the CPU (F32 weights take about 8 bytes
/// per Q4 byte: a 400 MB file becomes about 3 GB).
const DEQUANTIZE_MAX_BYTES: u64 = 400 * 1024 * 1024;

async fn generate(
    g: &Global,
    model: Option<&str>,
    system: Option<&str>,
    prompt: &str,
    params: &GenerationParams,
    dequantize: bool,
) -> recall_core::Result<()> {
    let path = chat_model_path(g, model)?;
    let device = recall_core::device::select(g.device)?;
    let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= DEQUANTIZE_MAX_BYTES);
    let config = ModelConfig {
        path,
        dequantize: dequantize && small && device.is_cpu(),
        ..ModelConfig::new("")
    };
    let json_out = g.json;
    let mut turns = Vec::new();
    if let Some(s) = system {
        turns.push(ChatTurn {
            role: Role::System,
            content: s.to_owned(),
        });
    }
    turns.push(ChatTurn {
        role: Role::User,
        content: prompt.to_owned(),
    });
    let params = params.clone();
    let (completion, name) = tokio::task::spawn_blocking(move || {
        let mut model = LocalModel::load(&config, &device)?;
        let ids = model.encode(&model.template().render(&turns))?;
        let mut out = std::io::stdout();
        let completion = model.generate(&ids, &params, &mut |piece| {
            if !json_out {
                let _ = write!(out, "{piece}");
                let _ = out.flush();
            }
            true
        })?;
        Ok::<_, Error>((completion, model.name().to_owned()))
    })
    .await
    .map_err(|e| Error::Internal(format!("generation task: {e}")))??;
    if json_out {
        let mut v = serde_json::to_value(&completion)
            .map_err(|e| Error::Internal(format!("serialise: {e}")))?;
        v["model"] = json!(name);
        println!("{v}");
    } else {
        println!();
    }
    Ok(())
}

async fn export(
    g: &Global,
    user: &str,
    with_vectors: bool,
    output: Option<&Path>,
) -> recall_core::Result<()> {
    let store = store::open(&store_config(g)).await?;
    let data = store
        .export_user(
            user,
            &ExportOptions {
                include_vectors: with_vectors,
            },
            &Actor::cli(),
        )
        .await?;
    let text = serde_json::to_string_pretty(&data)
        .map_err(|e| Error::Internal(format!("export serialisation: {e}")))?;
    match output {
        Some(path) => {
            std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
            if !g.json {
                eprintln!(
                    "exported {} messages and {} memories of user {user} to {}",
                    data.messages.len(),
                    data.memories.len(),
                    path.display()
                );
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").map_err(|e| Error::io("<stdout>", e))?;
        }
    }
    Ok(())
}

async fn forget(g: &Global, user: &str) -> recall_core::Result<()> {
    let store = store::open(&store_config(g)).await?;
    let report = store.delete_user(user, &Actor::cli()).await?;
    if g.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serialises")
        );
    } else if report.existed {
        println!(
            "deleted user {user}: {} sessions, {} messages, {} memories, {} vectors, {} summaries",
            report.sessions, report.messages, report.memories, report.embeddings, report.summaries
        );
    } else {
        println!("user {user} had no data");
    }
    Ok(())
}

struct Bars {
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl FetchProgress for Bars {
    fn begin(&self, model: &str, phase: &str, total: u64) {
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("{model}: {phase}"));
        *self.bar.lock().expect("bar") = Some(bar);
    }
    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.bar.lock().expect("bar") {
            bar.inc(n);
        }
    }
    fn end(&self) {
        if let Some(bar) = self.bar.lock().expect("bar").take() {
            bar.finish_and_clear();
        }
    }
}

async fn fetch_models(
    models_dir: &Path,
    only: &[String],
    all: bool,
    wheel_dir: Option<PathBuf>,
    index_url: &str,
    json_out: bool,
) -> recall_core::Result<()> {
    let specs: Vec<&ModelSpec> = if !only.is_empty() {
        only.iter()
            .map(|name| {
                models::find(name).ok_or_else(|| {
                    let known: Vec<&str> = models::ALL.iter().map(|m| m.name).collect();
                    Error::invalid(format!(
                        "unknown model {name:?} (known: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect::<recall_core::Result<_>>()?
    } else {
        models::ALL.iter().filter(|m| all || m.default).collect()
    };
    let options = FetchOptions {
        wheel_dir,
        index_url: index_url.to_owned(),
        ..FetchOptions::new(models_dir)
    };
    let progress = Bars {
        bar: std::sync::Mutex::new(None),
    };
    let mut results = Vec::new();
    for spec in specs {
        let outcome = models::fetch(spec, &options, &progress).await?;
        let dir = models::model_dir(models_dir, spec);
        if !json_out {
            let what = match outcome {
                FetchOutcome::AlreadyPresent => "already present",
                FetchOutcome::FromLocalWheel => "unpacked from local wheel",
                FetchOutcome::Downloaded => "downloaded",
            };
            println!("{:<24} {what:<26} {}", spec.name, dir.display());
        }
        results.push(json!({ "model": spec.name, "outcome": outcome, "dir": dir }));
    }
    if json_out {
        println!("{}", json!({ "models": results }));
    }
    Ok(())
}

fn list_models(models_dir: &Path, json_out: bool) -> recall_core::Result<()> {
    let mut rows = Vec::new();
    for spec in models::ALL {
        let present = models::verify(models_dir, spec)?;
        if !json_out {
            println!(
                "{:<24} {:<10} {:<8} {:<8} {}",
                spec.name,
                format!("{:?}", spec.role).to_lowercase(),
                if spec.default { "default" } else { "" },
                if present { "present" } else { "missing" },
                models::model_dir(models_dir, spec).display()
            );
        }
        rows.push(json!({
            "model": spec.name,
            "role": spec.role,
            "default": spec.default,
            "present": present,
            "dir": models::model_dir(models_dir, spec),
            "license": spec.license,
        }));
    }
    if json_out {
        println!("{}", json!({ "models": rows }));
    }
    Ok(())
}
