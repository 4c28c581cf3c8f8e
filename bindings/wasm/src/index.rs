//! `MemoryIndex`: the core's in-memory index, per user.
use chrono::{DateTime, Utc};
use recall_core::error::Error as CoreError;
use recall_core::index::{IndexEntry, MemoryIndex as CoreIndex};
use recall_core::retrieval::{RetrieveOptions, SearchMode};
use recall_core::types::{Filter, Memory, MetadataCondition};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;

use crate::error::{IntoJs, to_js};

fn time(ms: f64) -> Result<DateTime<Utc>, JsValue> {
    Some(ms)
        .filter(|ms| ms.is_finite())
        .and_then(|ms| DateTime::from_timestamp_millis(ms as i64))
        .ok_or_else(|| to_js(CoreError::invalid(format!("time {ms} ms is out of range"))))
}

fn ms(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64
}

/// An options object from JavaScript (undefined or null: the defaults), read as JSON so that
/// an unknown field or a wrong type is an `INVALID_INPUT` error, never ignored.
pub(crate) fn options<T: DeserializeOwned + Default>(
    what: &str,
    value: Option<JsValue>,
) -> Result<T, JsValue> {
    let Some(value) = value.filter(|v| !v.is_undefined() && !v.is_null()) else {
        return Ok(T::default());
    };
    let text = js_sys::JSON::stringify(&value)
        .ok()
        .and_then(|s| s.as_string())
        .ok_or_else(|| to_js(CoreError::invalid(format!("{what} is not plain data"))))?;
    serde_json::from_str(&text).map_err(|e| to_js(CoreError::invalid(format!("{what}: {e}"))))
}

/// JSON to a JavaScript value (objects, arrays, numbers, strings).
pub(crate) fn to_value(v: &Value) -> Result<JsValue, JsValue> {
    js_sys::JSON::parse(&v.to_string())
}

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** What `MemoryIndex.add` takes besides the text, vector and time (all optional). */
export interface AddOptions {
  /** The conversation it belongs to (the neighbourhood stays inside it; a filter's `session`). */
  session?: string;
  tags?: string[];
  /** A JSON object, for a filter's metadata conditions. */
  metadata?: Record<string, unknown>;
  /** When it stops being found (milliseconds since the epoch). */
  expiresAtMs?: number;
  /** The id of the user's current memory this one replaces. */
  supersedes?: number;
}

/** One condition on a memory's metadata; `key` is a dotted path (`source.app`). */
export interface MetadataCondition {
  key: string;
  op: 'eq' | 'ne' | 'in' | 'gt' | 'gte' | 'lt' | 'lte' | 'contains' | 'exists';
  value?: unknown;
}

/** Narrows a search; without `asOfMs` or `includeSuperseded`, current unexpired memories only. */
export interface SearchFilter {
  session?: string;
  /** Every one of these tags. */
  tags?: string[];
  sinceMs?: number;
  untilMs?: number;
  /** What was true at this time. */
  asOfMs?: number;
  /** Superseded memories too (expired ones never). */
  includeSuperseded?: boolean;
  metadata?: MetadataCondition[];
}

/** A memory of the index. */
export interface IndexedMemory {
  id: number;
  text: string;
  session: string | null;
  tags: string[];
  metadata: Record<string, unknown>;
  createdAtMs: number;
  expiresAtMs: number | null;
  supersedes: number | null;
  supersededBy: number | null;
  supersededAtMs: number | null;
}

/** A search result: the memory and its score (higher is better). */
export interface MemoryHit extends IndexedMemory {
  score: number;
}
"#;

#[wasm_bindgen]
extern "C" {
    /// `AddOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "AddOptions")]
    #[derive(Debug, Clone)]
    pub type JsAddOptions;
    /// `SearchFilter` in TypeScript.
    #[wasm_bindgen(typescript_type = "SearchFilter")]
    #[derive(Debug, Clone)]
    pub type JsSearchFilter;
    /// `MemoryHit[]` in TypeScript.
    #[wasm_bindgen(typescript_type = "MemoryHit[]", extends = js_sys::Array)]
    #[derive(Debug, Clone)]
    pub type JsHits;
    /// `IndexedMemory[]` in TypeScript.
    #[wasm_bindgen(typescript_type = "IndexedMemory[]", extends = js_sys::Array)]
    #[derive(Debug, Clone)]
    pub type JsMemories;
    /// `IndexedMemory | undefined` in TypeScript.
    #[wasm_bindgen(typescript_type = "IndexedMemory | undefined")]
    #[derive(Debug, Clone)]
    pub type JsMaybeMemory;
}

/// What `add` takes besides the text, vector and time.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddOptions {
    session: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: Value,
    expires_at_ms: Option<f64>,
    supersedes: Option<f64>,
}

/// A search's filter, as the server's `filter` argument with times in milliseconds.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct FilterOptions {
    session: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    since_ms: Option<f64>,
    until_ms: Option<f64>,
    as_of_ms: Option<f64>,
    #[serde(default)]
    include_superseded: bool,
    #[serde(default)]
    metadata: Vec<MetadataCondition>,
}

impl FilterOptions {
    /// The core's filter, times read from milliseconds.
    pub(crate) fn into_filter(self) -> Result<Filter, JsValue> {
        Ok(Filter {
            session: self.session,
            tags: self.tags,
            since: self.since_ms.map(time).transpose()?,
            until: self.until_ms.map(time).transpose()?,
            as_of: self.as_of_ms.map(time).transpose()?,
            include_superseded: self.include_superseded,
            metadata: self.metadata,
            ..Filter::default()
        })
    }
}

fn id_of(n: f64) -> Result<i64, JsValue> {
    if n.fract() != 0.0 || n.abs() > 9_007_199_254_740_991.0 {
        return Err(to_js(CoreError::invalid(format!(
            "a memory id is a whole number, not {n}"
        ))));
    }
    Ok(n as i64)
}

/// A memory as JavaScript sees it (the `text` and `id` of a hit, and what it carries).
pub(crate) fn memory_json(m: &Memory) -> Value {
    json!({
        "id": m.id,
        "text": m.content,
        "session": m.session,
        "tags": m.tags,
        "metadata": m.metadata,
        "createdAtMs": ms(m.created_at),
        "expiresAtMs": m.expires_at.map(ms),
        "supersedes": m.supersedes,
        "supersededBy": m.superseded_by,
        "supersededAtMs": m.superseded_at.map(ms),
    })
}

/// Memories per user, searched like the engine searches (hybrid by default).
#[wasm_bindgen]
#[derive(Default)]
pub struct MemoryIndex {
    inner: CoreIndex,
}

impl MemoryIndex {
    /// The core's index.
    pub(crate) fn core(&self) -> &CoreIndex {
        &self.inner
    }
}

#[wasm_bindgen]
impl MemoryIndex {
    /// An empty index.
    #[wasm_bindgen(constructor)]
    pub fn new() -> MemoryIndex {
        MemoryIndex::default()
    }

    /// Adds (or replaces) the memory `id` of `user` with its text, its vector (from
    /// `Embedder.embed`) and when it was written (milliseconds since the epoch). `options`:
    /// `{ session, tags, metadata, expiresAtMs, supersedes }` — the conversation it belongs to,
    /// tags and a metadata object to filter on, when it stops being found, and the id of the
    /// memory it replaces (kept, found as of an earlier time or with its history).
    pub fn add(
        &mut self,
        user: &str,
        id: f64,
        text: &str,
        vector: Vec<f32>,
        created_at_ms: f64,
        options: Option<JsAddOptions>,
    ) -> Result<(), JsValue> {
        let o: AddOptions = self::options("add options", options.map(JsValue::from))?;
        let entry = IndexEntry {
            session: o.session,
            tags: o.tags,
            metadata: o.metadata,
            expires_at: o.expires_at_ms.map(time).transpose()?,
            supersedes: o.supersedes.map(id_of).transpose()?,
        };
        self.inner
            .add_entry(user, id_of(id)?, text, vector, time(created_at_ms)?, entry)
            .js()
    }

    /// The user's best memories for a query (its text and its vector): `[{ id, score, text,
    /// session, tags, metadata, createdAtMs, expiresAtMs, supersedes, supersededBy,
    /// supersededAtMs }]`, best first. `mode`: `hybrid` (default), `vector` or `text`.
    /// `filter`: `{ session, tags, sinceMs, untilMs, asOfMs, includeSuperseded, metadata:
    /// [{ key, op, value }] }` (ops `eq`, `ne`, `in`, `gt`, `gte`, `lt`, `lte`, `contains`,
    /// `exists`), the server's filter; without `asOfMs` or `includeSuperseded` only current,
    /// unexpired memories are found.
    pub fn search(
        &self,
        user: &str,
        query_text: &str,
        query_vector: Vec<f32>,
        top_k: usize,
        mode: Option<String>,
        filter: Option<JsSearchFilter>,
    ) -> Result<JsHits, JsValue> {
        let mode: SearchMode = mode.as_deref().unwrap_or("hybrid").parse().js()?;
        let f: FilterOptions = options("filter", filter.map(JsValue::from))?;
        let filter = f.into_filter()?;
        let now = Utc::now();
        let hits = self
            .inner
            .search(
                user,
                query_text,
                &query_vector,
                &RetrieveOptions {
                    filter,
                    ..RetrieveOptions::for_mode(mode, top_k)
                },
                now,
            )
            .js()?;
        let out = js_sys::Array::new();
        for h in hits {
            let mut o = memory_json(&h.memory);
            o["score"] = json!(h.score);
            out.push(&to_value(&o)?);
        }
        Ok(out.unchecked_into())
    }

    /// One memory of the user (as a hit, without a score), or `undefined`.
    pub fn get(&self, user: &str, id: f64) -> Result<JsMaybeMemory, JsValue> {
        Ok(match self.inner.get(user, id_of(id)?) {
            Some(m) => to_value(&memory_json(m))?,
            None => JsValue::UNDEFINED,
        }
        .unchecked_into())
    }

    /// A memory's supersede history, oldest first: what it replaced, itself, and what replaced
    /// it (empty when the user has no such memory).
    pub fn history(&self, user: &str, id: f64) -> Result<JsMemories, JsValue> {
        let out = js_sys::Array::new();
        for m in self.inner.history(user, id_of(id)?) {
            out.push(&to_value(&memory_json(m))?);
        }
        Ok(out.unchecked_into())
    }

    /// Forgets one memory; false if the user had none with that id. A supersede history
    /// stays whole (what it replaced is now replaced by what replaced it, or current again).
    pub fn remove(&mut self, user: &str, id: f64) -> Result<bool, JsValue> {
        Ok(self.inner.remove(user, id_of(id)?))
    }

    /// Removes every memory (of every user) that has expired; how many went. Expired
    /// memories are never found either way: this frees their room.
    #[wasm_bindgen(js_name = purgeExpired)]
    pub fn purge_expired(&mut self) -> usize {
        self.inner.purge_expired(Utc::now())
    }

    /// Forgets everything of the user; how many memories went.
    pub fn forget(&mut self, user: &str) -> usize {
        self.inner.forget(user)
    }

    /// How many memories the user has.
    pub fn count(&self, user: &str) -> usize {
        self.inner.len(user)
    }

    /// The index as bytes (to keep in IndexedDB).
    #[wasm_bindgen(js_name = toBytes)]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.to_bytes()
    }

    /// An index saved by `toBytes`.
    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(bytes: &[u8]) -> Result<MemoryIndex, JsValue> {
        Ok(MemoryIndex {
            inner: CoreIndex::from_bytes(bytes).js()?,
        })
    }
}
