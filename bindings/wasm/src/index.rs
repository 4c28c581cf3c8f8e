//! `MemoryIndex`: the core's in-memory index, per user.
use chrono::{DateTime, Utc};
use recall_core::index::MemoryIndex as CoreIndex;
use recall_core::retrieval::{RetrieveOptions, SearchMode};
use wasm_bindgen::prelude::*;

use crate::error::IntoJs;

fn time(ms: f64) -> Result<DateTime<Utc>, JsValue> {
    DateTime::from_timestamp_millis(ms as i64)
        .ok_or_else(|| JsValue::from(js_sys::Error::new("createdAtMs is out of range")))
}

/// Memories per user, searched like the engine searches (hybrid by default).
#[wasm_bindgen]
#[derive(Default)]
pub struct MemoryIndex {
    inner: CoreIndex,
}

#[wasm_bindgen]
impl MemoryIndex {
    /// An empty index.
    #[wasm_bindgen(constructor)]
    pub fn new() -> MemoryIndex {
        MemoryIndex::default()
    }

    /// Adds (or replaces) the memory `id` of `user` with its text, its vector (from
    /// `Embedder.embed`) and when it was written (milliseconds since the epoch).
    pub fn add(
        &mut self,
        user: &str,
        id: f64,
        text: &str,
        vector: Vec<f32>,
        created_at_ms: f64,
    ) -> Result<(), JsValue> {
        self.inner
            .add(user, id as i64, text, vector, time(created_at_ms)?)
            .js()
    }

    /// The user's best memories for a query (its text and its vector):
    /// `[{ id, score }]`, best first. `mode`: `hybrid` (default), `vector` or `text`.
    pub fn search(
        &self,
        user: &str,
        query_text: &str,
        query_vector: Vec<f32>,
        top_k: usize,
        mode: Option<String>,
    ) -> Result<js_sys::Array, JsValue> {
        let mode: SearchMode = mode.as_deref().unwrap_or("hybrid").parse().js()?;
        let now = Utc::now();
        let hits = self
            .inner
            .search(
                user,
                query_text,
                &query_vector,
                &RetrieveOptions::for_mode(mode, top_k),
                now,
            )
            .js()?;
        let out = js_sys::Array::new();
        for h in hits {
            let o = js_sys::Object::new();
            js_sys::Reflect::set(&o, &"id".into(), &(h.memory.id as f64).into())?;
            js_sys::Reflect::set(&o, &"score".into(), &f64::from(h.score).into())?;
            js_sys::Reflect::set(&o, &"text".into(), &h.memory.content.into())?;
            out.push(&o);
        }
        Ok(out)
    }

    /// Forgets one memory; false if the user had none with that id.
    pub fn remove(&mut self, user: &str, id: f64) -> bool {
        self.inner.remove(user, id as i64)
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
