//! `Engine`: core's `Engine` (and, on first use, a chat pipeline) behind a tokio runtime of its
//! own. Every call releases the GIL while Rust works, so Python threads (and the asyncio
//! wrapper's executor) run calls at the same time.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use recall_core::chat::{ChatPipeline, ChatRequest};
use recall_core::context::SummaryPolicy;
use recall_core::device::DeviceConfig;
use recall_core::embed::Precision;
use recall_core::engine::FanoutHandle;
use recall_core::llm::ChatSummarizer;
use recall_core::memory_keys::KeyOptions;
use recall_core::retrieval::SearchMode;
use recall_core::runner::KeyWriter;
use recall_core::setup::{self, ChatOptions, EngineOptions};
use recall_core::store::StoreConfig;
use recall_core::types::{Actor, ExportOptions, Filter, PageRequest, SessionPatch};
use recall_core::{Engine as CoreEngine, NewMemoryText, RetrieveOptions};
use serde::Deserialize;
use tokio::runtime::Runtime;

use crate::chat::ChatStream;
use crate::error::{IntoPy, bad_json, json as json_err};
use crate::types::{hit, memory, result};

/// What `Memory(...)` was given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    models_dir: Option<PathBuf>,
    #[serde(default)]
    device: Option<String>,
    embedding_precision: Option<String>,
    chat_model: Option<String>,
    chat_url: Option<String>,
    chat_model_name: Option<String>,
    chat_api_key: Option<String>,
    dedupe_similarity: Option<f32>,
    #[serde(default)]
    tag_ttl_seconds: BTreeMap<String, u64>,
    /// New users get memory keys (on unless false, as under the server).
    memory_keys: Option<bool>,
    /// Seconds between looks for users who wrote, whose new memories then get their keys in
    /// the background (60 unless given; 0: only `write_memory_keys` writes them).
    memory_keys_check_seconds: Option<u64>,
}

/// Seconds between the background key writer's looks unless the options say otherwise.
const KEYS_CHECK_SECONDS: u64 = 60;

/// A chat request as the package sends it (core's `ChatRequest` in JSON), checked.
fn chat_request(json: &str) -> PyResult<ChatRequest> {
    let r: ChatRequest = serde_json::from_str(json).map_err(|e| bad_json("chat request", e))?;
    r.validate().py()?;
    Ok(r)
}

/// Who acts, in the audit log, for calls through the Python package.
fn actor() -> Actor {
    Actor("python".into())
}

/// The engine of one `Memory`.
#[pyclass(frozen, module = "deep_recall._native")]
pub struct Engine {
    /// Writes new memories' keys in the background; first, so that it stops before the
    /// runtime it runs on goes.
    _keys: Option<KeyWriter>,
    /// Over Postgres, the fan-out that lets other processes' writes (a server, another
    /// `Memory`) drop this one's cached searches at once and reach its key schedule; stops
    /// before the runtime too.
    _fanout: Option<FanoutHandle>,
    runtime: Arc<Runtime>,
    engine: CoreEngine,
    chat_options: ChatOptions,
    chat: Mutex<Option<ChatPipeline>>,
}

impl Engine {
    /// The chat pipeline, loading the chat model on first use.
    fn pipeline(&self, py: Python<'_>) -> PyResult<ChatPipeline> {
        py.detach(|| {
            let mut slot = self.chat.lock().expect("chat pipeline");
            if let Some(p) = slot.as_ref() {
                return Ok(p.clone());
            }
            let model = self
                .runtime
                .block_on(setup::open_chat_model(&self.chat_options))
                .py()?;
            let pipeline = ChatPipeline::new(self.engine.clone(), model.clone()).with_summaries(
                Arc::new(ChatSummarizer::new(model, 160)),
                SummaryPolicy::default(),
            );
            *slot = Some(pipeline.clone());
            Ok(pipeline)
        })
    }
}

/// A count from Python (a page size, `top_k`): a negative one is refused as the out-of-range
/// ones are (core's limits decide the range), not left to overflow.
fn count(what: &str, n: i64) -> PyResult<usize> {
    usize::try_from(n).map_err(|_| {
        crate::error::InvalidInput::new_err(format!("{what} must be positive, not {n}"))
    })
}

#[pymethods]
impl Engine {
    /// Opens the store and loads the embedding model (`options` is JSON).
    #[new]
    fn new(py: Python<'_>, options: &str) -> PyResult<Self> {
        let o: Options = serde_json::from_str(options).map_err(|e| bad_json("options", e))?;
        let device: DeviceConfig = o.device.as_deref().unwrap_or("auto").parse().py()?;
        if let Some(d) = o.dedupe_similarity {
            recall_core::engine::check_dedupe_similarity(d).py()?;
        }
        let embedding_precision: Precision = o
            .embedding_precision
            .as_deref()
            .unwrap_or("f32")
            .parse()
            .py()?;
        let mut store = match &o.database_url {
            Some(url) => StoreConfig::postgres(url.clone()),
            None => StoreConfig::embedded(o.data_dir.clone().unwrap_or_else(|| "data".into())),
        };
        store.memory_keys_for_new_users = o.memory_keys.unwrap_or(true);
        let keys_every = o.memory_keys_check_seconds.unwrap_or(KEYS_CHECK_SECONDS);
        let models_dir = o.models_dir.clone().unwrap_or_else(|| "models".into());
        let remote = match &o.chat_url {
            Some(url) => Some(
                setup::remote_config(
                    url,
                    o.chat_model_name.as_deref(),
                    o.chat_api_key.as_deref(),
                    None,
                )
                .py()?,
            ),
            None => None,
        };
        let chat_options = ChatOptions {
            model: o.chat_model.clone(),
            device,
            max_sequences: 4,
            remote,
            ..ChatOptions::new(&models_dir)
        };
        let engine_options = EngineOptions {
            models_dir,
            device,
            embedding_precision,
            ..EngineOptions::new(store)
        };
        py.detach(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("deep-recall")
                .enable_all()
                .build()
                .map_err(|e| crate::error::DeepRecallError::new_err(format!("runtime: {e}")))?;
            let engine = runtime
                .block_on(setup::open_engine(&engine_options))
                .and_then(|e| {
                    e.with_dedupe(o.dedupe_similarity)
                        .with_tag_ttl(o.tag_ttl_seconds)
                })
                .py()?;
            let fanout = runtime.block_on(engine.start_fanout()).py()?;
            let keys = (keys_every > 0).then(|| {
                let _in = runtime.enter();
                KeyWriter::start(
                    engine.clone(),
                    Duration::from_secs(keys_every),
                    KeyOptions::default(),
                    format!("python-{}", std::process::id()),
                )
            });
            Ok(Self {
                _fanout: fanout,
                runtime: Arc::new(runtime),
                engine,
                chat_options,
                chat: Mutex::new(None),
                _keys: keys,
            })
        })
    }

    /// Stores messages (a JSON list) in `session`; returns the stored message ids.
    fn add_messages(
        &self,
        py: Python<'_>,
        user: &str,
        session: &str,
        messages: &str,
    ) -> PyResult<Vec<i64>> {
        let messages =
            recall_core::ingest::parse_messages(messages, session, self.engine.limits()).py()?;
        py.detach(|| {
            let stored = self
                .runtime
                .block_on(self.engine.add_messages(user, messages))
                .py()?;
            Ok(stored.iter().map(|a| a.message.id).collect())
        })
    }

    /// Stores a memory (`memory_json` is core's `NewMemoryText` as JSON); the stored memory
    /// as JSON.
    fn add_memory(&self, py: Python<'_>, user: &str, memory_json: &str) -> PyResult<String> {
        let new: NewMemoryText =
            serde_json::from_str(memory_json).map_err(|e| bad_json("memory", e))?;
        py.detach(|| {
            let stored = self
                .runtime
                .block_on(self.engine.add_memory(user, new))
                .py()?;
            serde_json::to_string(&memory(&stored)).map_err(json_err)
        })
    }

    /// Creates the session if needed and sets its title and persona (`patch_json`: core's
    /// `SessionPatch` as JSON); a persona card is stored as the session's persona memories,
    /// replacing those of the card before. The session as JSON.
    fn create_session(
        &self,
        py: Python<'_>,
        user: &str,
        session: &str,
        patch_json: &str,
    ) -> PyResult<String> {
        let patch: SessionPatch =
            serde_json::from_str(patch_json).map_err(|e| bad_json("session", e))?;
        py.detach(|| {
            let stored = self
                .runtime
                .block_on(self.engine.create_session(user, session, patch))
                .py()?;
            serde_json::to_string(&crate::types::session(&stored)).map_err(json_err)
        })
    }

    /// A page of the user's memories, newest first (`filter`: core's `Filter` as JSON;
    /// `after`: the `next` of the page before): `{"items": [memory], "next": cursor}`.
    #[pyo3(signature = (user, first, after=None, filter=None))]
    fn memories(
        &self,
        py: Python<'_>,
        user: &str,
        first: i64,
        after: Option<String>,
        filter: Option<&str>,
    ) -> PyResult<String> {
        let first = count("page_size", first)?;
        let filter: Filter = match filter {
            Some(f) => serde_json::from_str(f).map_err(|e| bad_json("filter", e))?,
            None => Filter::default(),
        };
        let page = PageRequest { first, after };
        py.detach(|| {
            let page = self
                .runtime
                .block_on(self.engine.memories(user, &filter, &page))
                .py()?;
            let items: Vec<_> = page.items.iter().map(memory).collect();
            serde_json::to_string(&serde_json::json!({ "items": items, "next": page.next_cursor }))
                .map_err(json_err)
        })
    }

    /// A page of the user's sessions, most recently changed first: `{"items", "next"}`.
    #[pyo3(signature = (user, first, after=None))]
    fn sessions(
        &self,
        py: Python<'_>,
        user: &str,
        first: i64,
        after: Option<String>,
    ) -> PyResult<String> {
        let first = count("page_size", first)?;
        let page = PageRequest { first, after };
        py.detach(|| {
            let page = self
                .runtime
                .block_on(self.engine.sessions(user, &page))
                .py()?;
            let items: Vec<_> = page.items.iter().map(crate::types::session).collect();
            serde_json::to_string(&serde_json::json!({ "items": items, "next": page.next_cursor }))
                .map_err(json_err)
        })
    }

    /// A memory's supersede history, oldest first (JSON list of memories).
    fn memory_history(&self, py: Python<'_>, user: &str, id: i64) -> PyResult<String> {
        py.detach(|| {
            let history = self
                .runtime
                .block_on(self.engine.memory_history(user, id))
                .py()?;
            serde_json::to_string(&history.iter().map(memory).collect::<Vec<_>>()).map_err(json_err)
        })
    }

    /// Deletes the user's memories with these ids; returns how many there were.
    fn delete_memories(&self, py: Python<'_>, user: &str, ids: Vec<i64>) -> PyResult<u64> {
        py.detach(|| {
            self.runtime
                .block_on(self.engine.delete_memories(user, &ids))
                .py()
        })
    }

    /// Retrieves the user's memories for `query` (JSON list of hits); `filter` is core's
    /// `Filter` as JSON.
    #[pyo3(signature = (user, query, top_k, mode, session=None, filter=None))]
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        py: Python<'_>,
        user: &str,
        query: &str,
        top_k: i64,
        mode: &str,
        session: Option<String>,
        filter: Option<&str>,
    ) -> PyResult<String> {
        let top_k = count("top_k", top_k)?;
        let mode: SearchMode = mode.parse().py()?;
        let mut filter: Filter = match filter {
            Some(f) => serde_json::from_str(f).map_err(|e| bad_json("filter", e))?,
            None => Filter::default(),
        };
        if session.is_some() {
            filter.session = session;
        }
        let options = RetrieveOptions {
            filter,
            ..RetrieveOptions::for_mode(mode, top_k)
        };
        py.detach(|| {
            let hits = self
                .runtime
                .block_on(self.engine.retrieve(user, query, &options))
                .py()?;
            serde_json::to_string(&hits.iter().map(hit).collect::<Vec<_>>()).map_err(json_err)
        })
    }

    /// Everything stored about the user (JSON, as `deep-recall export` prints it).
    fn export(&self, py: Python<'_>, user: &str) -> PyResult<String> {
        py.detach(|| {
            let data = self
                .runtime
                .block_on(
                    self.engine
                        .export(user, &ExportOptions::default(), &actor()),
                )
                .py()?;
            serde_json::to_string(&data).map_err(json_err)
        })
    }

    /// Deletes everything stored about the user (JSON report).
    fn forget(&self, py: Python<'_>, user: &str) -> PyResult<String> {
        py.detach(|| {
            let report = self
                .runtime
                .block_on(self.engine.delete_user(user, &actor()))
                .py()?;
            serde_json::to_string(&report).map_err(json_err)
        })
    }

    /// Whether the user's memory keys are on, and how many they have (JSON).
    fn memory_keys(&self, py: Python<'_>, user: &str) -> PyResult<String> {
        py.detach(|| {
            let status = self
                .runtime
                .block_on(self.engine.memory_keys_status(user))
                .py()?;
            serde_json::to_string(&status).map_err(json_err)
        })
    }

    /// Turns the user's memory keys on or off (off deletes them); the status as JSON.
    fn set_memory_keys(&self, py: Python<'_>, user: &str, enabled: bool) -> PyResult<String> {
        py.detach(|| {
            let status = self
                .runtime
                .block_on(self.engine.set_memory_keys(user, enabled))
                .py()?;
            serde_json::to_string(&status).map_err(json_err)
        })
    }

    /// Writes the keys the user's memories lack now; how many were stored.
    fn write_memory_keys(&self, py: Python<'_>, user: &str) -> PyResult<u64> {
        py.detach(|| {
            self.runtime
                .block_on(self.engine.write_all_memory_keys(
                    user,
                    &KeyOptions::default(),
                    &mut |_, _, _| {},
                ))
                .py()
        })
    }

    /// One whole chat turn (`request` is core's `ChatRequest` as JSON); the result as JSON.
    fn chat(&self, py: Python<'_>, user: &str, request: &str) -> PyResult<String> {
        let request = chat_request(request)?;
        let pipeline = self.pipeline(py)?;
        py.detach(|| {
            let r = self.runtime.block_on(pipeline.chat(user, request)).py()?;
            serde_json::to_string(&result(&r)).map_err(json_err)
        })
    }

    /// A streamed chat turn (`request` as for `chat`): an iterator of `("delta", text)` and
    /// then `("done", json)`.
    fn chat_stream(&self, py: Python<'_>, user: &str, request: &str) -> PyResult<ChatStream> {
        let request = chat_request(request)?;
        let pipeline = self.pipeline(py)?;
        py.detach(|| {
            let stream = self.runtime.block_on(pipeline.stream(user, request)).py()?;
            Ok(ChatStream::new(stream.updates))
        })
    }
}
