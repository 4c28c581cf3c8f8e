//! The engine: a store and an embedder working together. This is what the command line, the
//! server and the bindings call; it embeds what it stores and what it searches for.
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::embed::Embedder;
use crate::error::Result;
use crate::store::MemoryStore;
use crate::types::{
    AppendedMessage, Embedding, Filter, Memory, MemoryKind, MessageWrite, NewMemory, NewMessage,
    SearchPage, VectorQuery,
};

/// Messages embedded between two progress reports.
const PROGRESS_STEP: usize = 256;

/// Search options of [`Engine::search`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchOptions {
    /// Hits per page.
    pub top_k: usize,
    /// Drop hits scoring below this.
    pub min_score: Option<f32>,
    /// Narrowing.
    #[serde(default)]
    pub filter: Filter,
    /// Continue after a previous page.
    pub cursor: Option<String>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            top_k: 10,
            min_score: None,
            filter: Filter::default(),
            cursor: None,
        }
    }
}

/// A store plus an embedder.
#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn MemoryStore>,
    embedder: Arc<dyn Embedder>,
}

impl Engine {
    /// Puts the two together.
    pub fn new(store: Arc<dyn MemoryStore>, embedder: Arc<dyn Embedder>) -> Self {
        Self { store, embedder }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn MemoryStore> {
        &self.store
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    fn embedding(&self, vector: Vec<f32>) -> Embedding {
        Embedding {
            model: self.embedder.model_id().to_owned(),
            vector,
        }
    }

    /// Stores messages, each also as a searchable memory, in one transaction. The store checks
    /// every message before the (slow) embedding starts, so bad input costs nothing.
    pub async fn add_messages(
        &self,
        user: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<AppendedMessage>> {
        self.add_messages_with_progress(user, messages, &|_| {})
            .await
    }

    /// [`Engine::add_messages`], calling `progress` with the number of messages embedded so
    /// far.
    pub async fn add_messages_with_progress(
        &self,
        user: &str,
        messages: Vec<NewMessage>,
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<Vec<AppendedMessage>> {
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        for (i, m) in messages.iter().enumerate() {
            limits
                .check_message(m)
                .map_err(|e| crate::Error::invalid(format!("message {}: {e}", i + 1)))?;
        }
        let mut vectors = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(PROGRESS_STEP) {
            vectors.extend(
                self.embedder
                    .embed(chunk.iter().map(|m| m.content.clone()).collect())
                    .await?,
            );
            progress(vectors.len());
        }
        let writes = messages
            .into_iter()
            .zip(vectors)
            .map(|(message, vector)| MessageWrite {
                memories: vec![NewMemory::new(
                    MemoryKind::Message,
                    message.content.clone(),
                    self.embedding(vector),
                )],
                message,
            })
            .collect();
        self.store.append_messages(user, writes).await
    }

    /// Stores a free-standing memory (a fact, by default).
    pub async fn add_memory(&self, user: &str, memory: NewMemoryText) -> Result<Memory> {
        self.store.limits().check_user_id(user)?;
        self.store.limits().check_content(&memory.content)?;
        let vector = self.embedder.embed_one(&memory.content).await?;
        let mut stored = self
            .store
            .add_memories(
                user,
                vec![NewMemory {
                    session: memory.session,
                    tags: memory.tags,
                    importance: memory.importance,
                    ..NewMemory::new(memory.kind, memory.content, self.embedding(vector))
                }],
            )
            .await?;
        stored
            .pop()
            .ok_or_else(|| crate::Error::Internal("store returned no memory".into()))
    }

    /// Semantic search over the user's memories.
    pub async fn search(
        &self,
        user: &str,
        text: &str,
        options: &SearchOptions,
    ) -> Result<SearchPage> {
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        limits.check_content(text)?;
        limits.check_page_size(options.top_k)?;
        limits.check_filter(&options.filter)?;
        let vector = self.embedder.embed_one(text).await?;
        self.store
            .search(
                user,
                &VectorQuery {
                    embedding: self.embedding(vector),
                    top_k: options.top_k,
                    min_score: options.min_score,
                    filter: options.filter.clone(),
                    cursor: options.cursor.clone(),
                },
            )
            .await
    }
}

/// A memory given as text, for [`Engine::add_memory`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMemoryText {
    /// What it is.
    pub kind: MemoryKind,
    /// The text.
    pub content: String,
    /// Session it belongs to.
    pub session: Option<String>,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Importance in [0, 1].
    pub importance: Option<f32>,
}
