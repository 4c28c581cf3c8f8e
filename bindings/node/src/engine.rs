//! `Engine`: core's `Engine` (and, on first use, a chat pipeline) for one `Memory` of the
//! package. Every method is async and runs off the JavaScript thread.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use napi_derive::napi;
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
use recall_core::types::{
    Actor, ExportOptions, Filter, MemoryKind, MetadataCondition, PageRequest, Role, SessionPatch,
};
use recall_core::{Engine as CoreEngine, NewMemoryText, RetrieveOptions};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::chat::ChatStream;
use crate::error::{IntoJs, json as json_err};
use crate::types::{hit, memory, result, session as session_json};

/// What `Memory.open(...)` was given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Options {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    models_dir: Option<PathBuf>,
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
    /// the background (60 unless given; 0: only `writeMemoryKeys` writes them).
    memory_keys_check_seconds: Option<u64>,
}

/// Seconds between the background key writer's looks unless the options say otherwise.
const KEYS_CHECK_SECONDS: u64 = 60;

/// Search options, as the package sends them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SearchParams {
    top_k: Option<usize>,
    mode: Option<String>,
    session: Option<String>,
    filter: Option<FilterParams>,
}

/// Core's `Filter`, in the package's camelCase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FilterParams {
    session: Option<String>,
    #[serde(default)]
    kinds: Vec<MemoryKind>,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    tags: Vec<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    as_of: Option<DateTime<Utc>>,
    #[serde(default)]
    include_superseded: bool,
    #[serde(default)]
    metadata: Vec<MetadataCondition>,
}

impl From<FilterParams> for Filter {
    fn from(f: FilterParams) -> Self {
        Self {
            session: f.session,
            kinds: f.kinds,
            roles: f.roles,
            tags: f.tags,
            since: f.since,
            until: f.until,
            as_of: f.as_of,
            include_superseded: f.include_superseded,
            metadata: f.metadata,
        }
    }
}

/// What `createSession` sets (core's `SessionPatch`; what is absent stays as it is).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionParams {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    persona: Option<String>,
}

/// Core's `NewMemoryText`, in the package's camelCase.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MemoryParams {
    content: String,
    #[serde(default)]
    kind: MemoryKind,
    session: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    importance: Option<f32>,
    #[serde(default)]
    metadata: serde_json::Value,
    expires_at: Option<DateTime<Utc>>,
    ttl_seconds: Option<u64>,
    supersedes: Option<i64>,
}

/// A chat request as the package sends it (core's `ChatRequest` in JSON), checked.
fn chat_request(json: &str) -> napi::Result<ChatRequest> {
    let r: ChatRequest = serde_json::from_str(json).map_err(json_err)?;
    r.validate().js()?;
    Ok(r)
}

/// Who acts, in the audit log, for calls through the Node package.
fn actor() -> Actor {
    Actor("node".into())
}

/// The engine of one `Memory`.
#[napi]
pub struct Engine {
    /// What an open engine holds; `None` once closed.
    open: std::sync::Mutex<Option<Open>>,
    chat_options: ChatOptions,
}

/// An open engine's parts: dropped by `close`, or when JavaScript collects the `Memory`.
struct Open {
    /// Writes new memories' keys in the background (stopped when the engine goes).
    _keys: Option<KeyWriter>,
    /// Over Postgres, the fan-out that lets other processes' writes (a server, another
    /// `Memory`) drop this one's cached searches at once and reach its key schedule.
    _fanout: Option<FanoutHandle>,
    engine: CoreEngine,
    chat: Arc<Mutex<Option<ChatPipeline>>>,
}

impl Engine {
    /// The open engine (a call under way keeps its own handle through a `close`).
    fn engine(&self) -> napi::Result<CoreEngine> {
        self.open
            .lock()
            .expect("engine")
            .as_ref()
            .map(|o| o.engine.clone())
            .ok_or_else(closed)
    }

    /// The chat pipeline, loading the chat model on first use.
    async fn pipeline(&self) -> napi::Result<ChatPipeline> {
        let (engine, chat) = {
            let open = self.open.lock().expect("engine");
            let open = open.as_ref().ok_or_else(closed)?;
            (open.engine.clone(), open.chat.clone())
        };
        let mut slot = chat.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let model = setup::open_chat_model(&self.chat_options).await.js()?;
        let pipeline = ChatPipeline::new(engine, model.clone()).with_summaries(
            Arc::new(ChatSummarizer::new(model, 160)),
            SummaryPolicy::default(),
        );
        *slot = Some(pipeline.clone());
        Ok(pipeline)
    }
}

#[napi]
impl Engine {
    /// Opens the store and loads the embedding model (`options` is JSON).
    #[napi(factory)]
    pub async fn open(options: String) -> napi::Result<Engine> {
        let o: Options = serde_json::from_str(&options).map_err(json_err)?;
        let device: DeviceConfig = o.device.as_deref().unwrap_or("auto").parse().js()?;
        let embedding_precision: Precision = o
            .embedding_precision
            .as_deref()
            .unwrap_or("f32")
            .parse()
            .js()?;
        let mut store = match &o.database_url {
            Some(url) => StoreConfig::postgres(url.clone()),
            None => StoreConfig::embedded(o.data_dir.clone().unwrap_or_else(|| "data".into())),
        };
        store.memory_keys_for_new_users = o.memory_keys.unwrap_or(true);
        let models_dir = o.models_dir.clone().unwrap_or_else(|| "models".into());
        let remote = match &o.chat_url {
            Some(url) => Some(
                setup::remote_config(
                    url,
                    o.chat_model_name.as_deref(),
                    o.chat_api_key.as_deref(),
                    None,
                )
                .js()?,
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
        if let Some(d) = o.dedupe_similarity {
            recall_core::engine::check_dedupe_similarity(d).js()?;
        }
        let engine = setup::open_engine(&EngineOptions {
            models_dir,
            device,
            embedding_precision,
            ..EngineOptions::new(store)
        })
        .await
        .and_then(|e| {
            e.with_dedupe(o.dedupe_similarity)
                .with_tag_ttl(o.tag_ttl_seconds)
        })
        .js()?;
        let fanout = engine.start_fanout().await.js()?;
        let every = o.memory_keys_check_seconds.unwrap_or(KEYS_CHECK_SECONDS);
        let keys = (every > 0).then(|| {
            KeyWriter::start(
                engine.clone(),
                Duration::from_secs(every),
                KeyOptions::default(),
                format!("node-{}", std::process::id()),
            )
        });
        Ok(Engine {
            open: std::sync::Mutex::new(Some(Open {
                _keys: keys,
                _fanout: fanout,
                engine,
                chat: Arc::new(Mutex::new(None)),
            })),
            chat_options,
        })
    }

    /// Lets the store's connections, the key writer, the fan-out and the chat model go (a
    /// call under way finishes first); later calls fail. Closing twice does nothing.
    #[napi]
    pub async fn close(&self) {
        let open = self.open.lock().expect("engine").take();
        if let Some(Open {
            _keys: Some(keys), ..
        }) = open
        {
            keys.stop().await;
        }
    }

    /// Stores messages (a JSON list) in `session`; returns the stored message ids.
    #[napi]
    pub async fn add_messages(
        &self,
        user: String,
        session: String,
        messages: String,
    ) -> napi::Result<Vec<i64>> {
        let messages =
            recall_core::ingest::parse_messages(&messages, &session, self.engine()?.limits())
                .js()?;
        let stored = self.engine()?.add_messages(&user, messages).await.js()?;
        Ok(stored.iter().map(|a| a.message.id).collect())
    }

    /// Retrieves the user's memories for `query` (`options` JSON; a JSON list of hits).
    #[napi]
    pub async fn search(
        &self,
        user: String,
        query: String,
        options: String,
    ) -> napi::Result<String> {
        let p: SearchParams = serde_json::from_str(&options).map_err(json_err)?;
        let mode: SearchMode = p.mode.as_deref().unwrap_or("hybrid").parse().js()?;
        let mut filter: Filter = p.filter.map(Into::into).unwrap_or_default();
        if p.session.is_some() {
            filter.session = p.session;
        }
        let options = RetrieveOptions {
            filter,
            ..RetrieveOptions::for_mode(mode, p.top_k.unwrap_or(10))
        };
        let hits = self
            .engine()?
            .retrieve(&user, &query, &options)
            .await
            .js()?;
        serde_json::to_string(&hits.iter().map(hit).collect::<Vec<_>>()).map_err(json_err)
    }

    /// Stores a memory (`memory` JSON); the stored memory as JSON.
    #[napi]
    pub async fn add_memory(&self, user: String, memory_json: String) -> napi::Result<String> {
        let m: MemoryParams = serde_json::from_str(&memory_json).map_err(json_err)?;
        let new = NewMemoryText {
            kind: m.kind,
            content: m.content,
            session: m.session,
            tags: m.tags,
            importance: m.importance,
            metadata: m.metadata,
            expires_at: m.expires_at,
            ttl_seconds: m.ttl_seconds,
            supersedes: m.supersedes,
        };
        let stored = self.engine()?.add_memory(&user, new).await.js()?;
        serde_json::to_string(&memory(&stored)).map_err(json_err)
    }

    /// Creates the session if needed and sets what `patch_json` gives (`title`, `persona`);
    /// a persona card is stored as the session's persona memories, replacing those of the
    /// card before. The session as JSON.
    #[napi]
    pub async fn create_session(
        &self,
        user: String,
        session: String,
        patch_json: String,
    ) -> napi::Result<String> {
        let p: SessionParams = serde_json::from_str(&patch_json).map_err(json_err)?;
        let patch = SessionPatch {
            title: p.title.map(Some),
            persona: p.persona.map(Some),
        };
        let stored = self
            .engine()?
            .create_session(&user, &session, patch)
            .await
            .js()?;
        serde_json::to_string(&session_json(&stored)).map_err(json_err)
    }

    /// A page of the user's memories, newest first: `filter` is the search filter (JSON or
    /// empty), `after` the `next` of the page before. `{ items: [memory], next }` as JSON.
    #[napi]
    pub async fn memories(
        &self,
        user: String,
        filter: String,
        first: u32,
        after: Option<String>,
    ) -> napi::Result<String> {
        let filter: Filter = if filter.is_empty() {
            Filter::default()
        } else {
            serde_json::from_str::<FilterParams>(&filter)
                .map_err(json_err)?
                .into()
        };
        let page = PageRequest {
            first: first as usize,
            after,
        };
        let page = self.engine()?.memories(&user, &filter, &page).await.js()?;
        let items: Vec<_> = page.items.iter().map(memory).collect();
        serde_json::to_string(&serde_json::json!({ "items": items, "next": page.next_cursor }))
            .map_err(json_err)
    }

    /// A page of the user's sessions, most recently changed first: `{ items, next }` as JSON.
    #[napi]
    pub async fn sessions(
        &self,
        user: String,
        first: u32,
        after: Option<String>,
    ) -> napi::Result<String> {
        let page = PageRequest {
            first: first as usize,
            after,
        };
        let page = self.engine()?.sessions(&user, &page).await.js()?;
        let items: Vec<_> = page.items.iter().map(session_json).collect();
        serde_json::to_string(&serde_json::json!({ "items": items, "next": page.next_cursor }))
            .map_err(json_err)
    }

    /// A memory's supersede history, oldest first (a JSON list of memories).
    #[napi]
    pub async fn memory_history(&self, user: String, id: i64) -> napi::Result<String> {
        let history = self.engine()?.memory_history(&user, id).await.js()?;
        serde_json::to_string(&history.iter().map(memory).collect::<Vec<_>>()).map_err(json_err)
    }

    /// Deletes the user's memories with these ids; returns how many there were.
    #[napi]
    pub async fn delete_memories(&self, user: String, ids: Vec<i64>) -> napi::Result<i64> {
        let n = self.engine()?.delete_memories(&user, &ids).await.js()?;
        Ok(n as i64)
    }

    /// Everything stored about the user (JSON, as `deep-recall export` prints it).
    #[napi]
    pub async fn export(&self, user: String) -> napi::Result<String> {
        let data = self
            .engine()?
            .export(&user, &ExportOptions::default(), &actor())
            .await
            .js()?;
        serde_json::to_string(&data).map_err(json_err)
    }

    /// Deletes everything stored about the user (JSON report).
    #[napi]
    pub async fn forget(&self, user: String) -> napi::Result<String> {
        let report = self.engine()?.delete_user(&user, &actor()).await.js()?;
        serde_json::to_string(&report).map_err(json_err)
    }

    /// Whether the user's memory keys are on, and how many they have (JSON).
    #[napi]
    pub async fn memory_keys(&self, user: String) -> napi::Result<String> {
        let status = self.engine()?.memory_keys_status(&user).await.js()?;
        serde_json::to_string(&status).map_err(json_err)
    }

    /// Turns the user's memory keys on or off (off deletes them); the status as JSON.
    #[napi]
    pub async fn set_memory_keys(&self, user: String, enabled: bool) -> napi::Result<String> {
        let status = self.engine()?.set_memory_keys(&user, enabled).await.js()?;
        serde_json::to_string(&status).map_err(json_err)
    }

    /// Writes the keys the user's memories lack now; how many were stored.
    #[napi]
    pub async fn write_memory_keys(&self, user: String) -> napi::Result<i64> {
        let keys = self
            .engine()?
            .write_all_memory_keys(&user, &KeyOptions::default(), &mut |_, _, _| {})
            .await
            .js()?;
        Ok(keys as i64)
    }

    /// One whole chat turn (`request` is core's `ChatRequest` as JSON); the result as JSON.
    #[napi]
    pub async fn chat(&self, user: String, request: String) -> napi::Result<String> {
        let request = chat_request(&request)?;
        let pipeline = self.pipeline().await?;
        let r = pipeline.chat(&user, request).await.js()?;
        serde_json::to_string(&result(&r)).map_err(json_err)
    }

    /// A streamed chat turn (`request` as for `chat`).
    #[napi]
    pub async fn chat_stream(&self, user: String, request: String) -> napi::Result<ChatStream> {
        let request = chat_request(&request)?;
        let pipeline = self.pipeline().await?;
        let stream = pipeline.stream(&user, request).await.js()?;
        Ok(ChatStream::new(stream.updates))
    }
}

/// The error of a call on a closed `Memory`.
fn closed() -> napi::Error {
    napi::Error::from_reason("INVALID_INPUT|this Memory is closed")
}
