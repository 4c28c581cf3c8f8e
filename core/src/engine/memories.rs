//! Messages and memories: written embedded and scored, announced, and read back.
use futures::StreamExt;

use super::*;
use crate::error::Error;
use crate::retrieval;
use crate::types::{
    AppendedMessage, MemoryPatch, Message, MessageWrite, NewMemory, NewMessage, Page, PageRequest,
    VectorQuery,
};

/// Messages in one batch of ingest's pipeline (embedded together, then written while the next
/// batches are embedded); the embedding service's default batch.
const PIPELINE_BATCH: usize = 32;

/// Batches of ingest's pipeline in the making at once: one being embedded and the next ones'
/// requests queued behind it, so that the embedder goes on while a batch is written.
const PIPELINE_DEPTH: usize = 3;

pub use crate::limits::MAX_HISTORY;

impl Engine {
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
    ///
    /// Ingest is a pipeline: the messages go through in batches, each split into pieces,
    /// embedded and scored while the store writes the batches before it (all in the call's one
    /// transaction), and the next batches' requests wait in the embedder's queue so that it
    /// never waits on this task or the store.
    pub async fn add_messages_with_progress(
        &self,
        user: &str,
        messages: Vec<NewMessage>,
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<Vec<AppendedMessage>> {
        self.append(user, messages, None, progress).await
    }

    /// Stores a reply to the user's message `answers`, only while that message exists: a
    /// reply finished after the user's data was deleted fails with `NotFound` and writes
    /// nothing (see [`MessageWrite::answers`]).
    pub async fn add_reply(
        &self,
        user: &str,
        answers: i64,
        reply: NewMessage,
    ) -> Result<AppendedMessage> {
        self.append(user, vec![reply], Some(answers), &|_| {})
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("the store returned no message".into()))
    }

    async fn append(
        &self,
        user: &str,
        messages: Vec<NewMessage>,
        answers: Option<i64>,
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<Vec<AppendedMessage>> {
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        let this = self.scoped(user).await?;
        let this = this.as_ref();
        for (i, m) in messages.iter().enumerate() {
            limits
                .check_message(m)
                .map_err(|e| Error::invalid(format!("message {}: {e}", i + 1)))?;
        }
        let now = Utc::now();
        let expiries: Vec<Option<DateTime<Utc>>> = messages
            .iter()
            .map(|m| self.expiry(now, &m.tags, None, None))
            .collect::<Result<_>>()?;
        let mut batches = Vec::with_capacity(messages.len().div_ceil(PIPELINE_BATCH));
        let (mut messages, mut expiries) = (messages.into_iter(), expiries.into_iter());
        let mut start = 0;
        loop {
            let batch: Vec<(NewMessage, Option<DateTime<Utc>>)> = messages
                .by_ref()
                .zip(expiries.by_ref())
                .take(PIPELINE_BATCH)
                .collect();
            if batch.is_empty() {
                break;
            }
            start += batch.len();
            batches.push((start, batch));
        }
        let writes = futures::stream::iter(batches)
            .map(|(done, batch)| async move {
                Ok::<_, Error>((done, this.message_writes(batch, now).await?))
            })
            .buffered(PIPELINE_DEPTH)
            // Reported in order (a later batch may be embedded first).
            .map(|batch| {
                batch.map(|(done, mut writes)| {
                    progress(done);
                    for w in &mut writes {
                        w.answers = answers;
                    }
                    writes
                })
            })
            .boxed();
        let out = self.store.append_message_stream(user, writes).await;
        self.changed(user);
        if let Ok(appended) = &out {
            for a in appended {
                for &id in &a.memory_ids {
                    self.publish_memory(MemoryEvent {
                        user: user.to_owned(),
                        action: MemoryAction::Added,
                        memory_id: id,
                        kind: Some(MemoryKind::Message),
                        memory: None,
                    });
                }
            }
        }
        out
    }

    /// One batch of messages made into writes: each split into pieces the embedder takes
    /// whole (each piece a memory), embedded and scored.
    async fn message_writes(
        &self,
        batch: Vec<(NewMessage, Option<DateTime<Utc>>)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<MessageWrite>> {
        let mut pieces: Vec<(usize, String)> = Vec::with_capacity(batch.len());
        for (i, (m, _)) in batch.iter().enumerate() {
            let ranges = self.embedder.piece_ranges(&m.content);
            pieces.extend(
                ranges
                    .into_iter()
                    .map(|(a, b)| (i, m.content[a..b].to_owned())),
            );
        }
        // The embedding runs on the embedder's threads while this task scores the pieces
        // (emotion, importance): the embedding future is polled first, so its request is
        // queued before the scoring takes this thread.
        let embedding = self
            .embedder
            .embed(pieces.iter().map(|(_, t)| t.clone()).collect());
        let scoring = async {
            let texts: Vec<&str> = pieces.iter().map(|(_, t)| t.as_str()).collect();
            let emotions = self.emotion.detect(&texts).await?;
            Ok::<_, Error>(
                pieces
                    .iter()
                    .zip(emotions)
                    .map(|((i, text), emotion)| {
                        let said_at = batch[*i].0.created_at.unwrap_or(now);
                        retrieval::ingest_signals(text, emotion, said_at)
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let (vectors, signals) = tokio::join!(embedding, scoring);
        let (vectors, signals) = (vectors?, signals?);
        let mut counts = vec![0usize; batch.len()];
        for (i, _) in &pieces {
            counts[*i] += 1;
        }
        let mut memories: Vec<Vec<NewMemory>> = vec![Vec::new(); batch.len()];
        for (((i, text), vector), (importance, emotion, mut metadata)) in
            pieces.into_iter().zip(vectors).zip(signals)
        {
            let n = memories[i].len();
            // The caller's keys, beside (and over) the engine's signals, as on a free-standing
            // memory: metadata conditions on search find a message by what it was sent with.
            own_metadata(&mut metadata, &batch[i].0.metadata);
            if counts[i] > 1 {
                metadata["chunk"] = json!(n);
                metadata["chunks"] = json!(counts[i]);
            }
            memories[i].push(NewMemory {
                importance: Some(importance),
                emotion: Some(emotion),
                metadata,
                expires_at: batch[i].1,
                ..NewMemory::new(MemoryKind::Message, text, self.embedding(vector))
            });
        }
        Ok(batch
            .into_iter()
            .zip(memories)
            .map(|((message, _), memories)| MessageWrite {
                memories,
                message,
                answers: None,
            })
            .collect())
    }

    /// Stores a free-standing memory (a fact, by default).
    pub async fn add_memory(&self, user: &str, memory: NewMemoryText) -> Result<Memory> {
        self.store.limits().check_user_id(user)?;
        if memory.kind == MemoryKind::Key {
            return Err(crate::error::Error::invalid(
                "keys are written by the key job (turn keys on), not added",
            ));
        }
        self.store.limits().check_content(&memory.content)?;
        self.store.limits().check_metadata(&memory.metadata)?;
        let expires_at = self.expiry(
            Utc::now(),
            &memory.tags,
            memory.expires_at,
            memory.ttl_seconds,
        )?;
        let this = self.scoped(user).await?;
        let vector = this.embedder.embed_one_whole(&memory.content).await?;
        let emotion = self
            .emotion
            .detect(&[memory.content.as_str()])
            .await?
            .pop()
            .unwrap_or(EmotionScore::neutral(0.5));
        let (importance, emotion, mut metadata) =
            retrieval::ingest_signals(&memory.content, emotion, Utc::now());
        own_metadata(&mut metadata, &memory.metadata);
        // A memory that replaces another is stored as given, never merged.
        if memory.supersedes.is_none()
            && let Some(merged) = this
                .merge_duplicate(user, &memory, expires_at, &vector)
                .await?
        {
            return Ok(merged);
        }
        let stored = self
            .store
            .add_memories(
                user,
                vec![NewMemory {
                    session: memory.session,
                    tags: memory.tags,
                    importance: Some(memory.importance.unwrap_or(importance)),
                    emotion: Some(emotion),
                    metadata,
                    expires_at,
                    supersedes: memory.supersedes,
                    ..NewMemory::new(memory.kind, memory.content, this.embedding(vector))
                }],
            )
            .await;
        // What it supersedes stops being current everywhere at once.
        if memory.supersedes.is_some() {
            self.changed_now(user).await;
        } else {
            self.changed(user);
        }
        let memory = stored?
            .pop()
            .ok_or_else(|| Error::Internal("store returned no memory".into()))?;
        self.published(user, MemoryAction::Added, &memory);
        Ok(memory)
    }

    /// Deduplication on add (when switched on, [`Engine::with_dedupe`]): when the user already
    /// has a memory of the same kind (and session) at least that alike, the new one merges into it
    /// instead of being stored: tags are united, the higher importance kept, and
    /// `metadata.merged` counts the merges, and the memory lasts as long as the longer-lived
    /// of the two (`expires_at`, the new one's expiry). Messages are a transcript and never
    /// merge; a memory of no session merges only into one of no session.
    async fn merge_duplicate(
        &self,
        user: &str,
        memory: &NewMemoryText,
        expires_at: Option<DateTime<Utc>>,
        vector: &[f32],
    ) -> Result<Option<Memory>> {
        let Some(threshold) = self.dedupe else {
            return Ok(None);
        };
        if memory.kind == MemoryKind::Message {
            return Ok(None);
        }
        let filter = Filter {
            session: memory.session.clone(),
            kinds: vec![memory.kind],
            ..Filter::default()
        };
        let found = self
            .store
            .search(
                user,
                &VectorQuery {
                    embedding: self.embedding(vector.to_vec()),
                    top_k: 1,
                    min_score: Some(threshold),
                    filter,
                    cursor: None,
                },
            )
            .await?;
        // (No session in the filter finds every session's: those are not this one's.)
        let Some(hit) = found
            .hits
            .into_iter()
            .next()
            .filter(|h| h.memory.session == memory.session)
        else {
            return Ok(None);
        };
        let old = hit.memory;
        let lasts = match (old.expires_at, expires_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let mut tags = old.tags.clone();
        for t in &memory.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        let mut metadata = match old.metadata {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let merges = metadata.get("merged").and_then(|v| v.as_u64()).unwrap_or(0);
        metadata.insert("merged".into(), (merges + 1).into());
        let importance = memory
            .importance
            .map_or(old.importance, |i| i.max(old.importance));
        let out = self
            .store
            .update_memory(
                user,
                old.id,
                MemoryPatch {
                    tags: Some(tags),
                    metadata: Some(serde_json::Value::Object(metadata)),
                    importance: Some(importance),
                    expires_at: (lasts != old.expires_at).then_some(lasts),
                    ..MemoryPatch::default()
                },
            )
            .await;
        self.changed(user);
        let merged = out?;
        self.published(user, MemoryAction::Updated, &merged);
        Ok(Some(merged))
    }

    /// Changes a memory; new text is embedded again (and replaces the old embeddings).
    pub async fn update_memory(&self, user: &str, id: i64, update: MemoryUpdate) -> Result<Memory> {
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        let this = self.scoped(user).await?;
        let embedding = match &update.content {
            Some(text) => {
                limits.check_content(text)?;
                Some(this.embedding(this.embedder.embed_one_whole(text).await?))
            }
            None => None,
        };
        if let Some(i) = update.importance
            && !(0.0..=1.0).contains(&i)
        {
            return Err(Error::invalid("importance must be in [0, 1]"));
        }
        if let Some(Some(t)) = update.expires_at {
            self.expiry(Utc::now(), &[], Some(t), None)?;
        }
        // The times the text names follow the text (read against when it was first written),
        // and survive new metadata.
        let metadata = if update.content.is_some() || update.metadata.is_some() {
            match self.store.get_memory(user, id).await? {
                Some(old) => {
                    let text = update.content.as_deref().unwrap_or(&old.content);
                    let mut m = update.metadata.clone().unwrap_or(old.metadata.clone());
                    retrieval::set_event_windows(&mut m, text, old.created_at);
                    Some(m)
                }
                None => update.metadata,
            }
        } else {
            None
        };
        let new_text = update.content.is_some();
        let out = self
            .store
            .update_memory(
                user,
                id,
                MemoryPatch {
                    content: update.content,
                    embedding,
                    tags: update.tags,
                    metadata,
                    importance: update.importance,
                    emotion: None,
                    expires_at: update.expires_at,
                },
            )
            .await;
        // A changed text (a redaction) or expiry must not be served from caches anywhere.
        self.changed_now(user).await;
        let memory = out?;
        if new_text {
            let dropped = self
                .drop_context_keys(user, std::slice::from_ref(&memory))
                .await;
            self.changed_now(user).await;
            dropped?;
        }
        self.published(user, MemoryAction::Updated, &memory);
        Ok(memory)
    }

    /// Deletes memories (and invalidates the user's cached queries, on the other replicas too
    /// before it returns).
    pub async fn delete_memories(&self, user: &str, ids: &[i64]) -> Result<u64> {
        self.store.limits().check_page_size(ids.len())?;
        // Which of them exist (and are the user's) decides which deletions are announced.
        let mut existing = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(m) = self.store.get_memory(user, id).await? {
                existing.push(m);
            }
        }
        // (Keys dropped before a failure are gone: their absence is announced too.)
        let out = match self.drop_context_keys(user, &existing).await {
            Ok(()) => self.store.delete_memories(user, ids).await,
            Err(e) => Err(e),
        };
        self.changed_now(user).await;
        if out.is_ok() {
            for m in &existing {
                self.published(user, MemoryAction::Deleted, m);
            }
        }
        out
    }

    /// One of the user's memories.
    pub async fn memory(&self, user: &str, id: i64) -> Result<Option<Memory>> {
        self.store.get_memory(user, id).await
    }

    /// A memory's supersede history, oldest first: the memories it replaced, itself, and
    /// those that replaced it (at most [`MAX_HISTORY`] each way; memories that expired and
    /// were purged end it). [`Error::NotFound`] when the user has no such memory.
    pub async fn memory_history(&self, user: &str, id: i64) -> Result<Vec<Memory>> {
        let memory = self
            .store
            .get_memory(user, id)
            .await?
            .ok_or_else(|| Error::not_found("memory", id.to_string()))?;
        let mut before = Vec::new();
        let mut next = memory.supersedes;
        while let Some(id) = next.filter(|_| before.len() < MAX_HISTORY) {
            let Some(m) = self.store.get_memory(user, id).await? else {
                break;
            };
            next = m.supersedes;
            before.push(m);
        }
        before.reverse();
        let mut after = Vec::new();
        let mut next = memory.superseded_by;
        while let Some(id) = next.filter(|_| after.len() < MAX_HISTORY) {
            let Some(m) = self.store.get_memory(user, id).await? else {
                break;
            };
            next = m.superseded_by;
            after.push(m);
        }
        before.push(memory);
        before.extend(after);
        Ok(before)
    }

    /// Deletes memories whose time ran out (of every user), `batch` at a time until none
    /// is left, announcing each deletion; returns how many went. The server runs it on a
    /// schedule; reads leave expired memories out before it does.
    pub async fn purge_expired(&self, batch: usize) -> Result<u64> {
        let mut purged = 0u64;
        loop {
            let gone = self.store.purge_expired(Utc::now(), batch).await?;
            let mut n = 0;
            for (user, memories) in gone {
                self.changed(&user);
                n += memories.len();
                // A context key expires with the turns it quotes: the turn after an expired
                // turn is keyed again, quoting the one before, and so is the turn before it,
                // whose key quoted it as its reply (see `drop_context_keys`).
                if let Some(first) = memories
                    .iter()
                    .filter_map(|m| match m.kind {
                        MemoryKind::Message => Some(m.id),
                        MemoryKind::Key => m.key_for,
                        _ => None,
                    })
                    .min()
                {
                    self.store.rewind_context_keys(&user, first - 1).await?;
                }
                for m in memories {
                    self.publish_memory(MemoryEvent {
                        user: user.clone(),
                        action: MemoryAction::Deleted,
                        memory_id: m.id,
                        kind: Some(m.kind),
                        memory: None,
                    });
                }
            }
            purged += n as u64;
            if n < batch {
                return Ok(purged);
            }
        }
    }

    /// When a memory stored now expires: at `at`, or `ttl` seconds from now, or after the
    /// shortest TTL of its tags; never when none applies.
    pub(crate) fn expiry(
        &self,
        now: DateTime<Utc>,
        tags: &[String],
        at: Option<DateTime<Utc>>,
        ttl: Option<u64>,
    ) -> Result<Option<DateTime<Utc>>> {
        let after = |secs: u64| now + chrono::Duration::seconds(secs as i64);
        match (at, ttl) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "give a memory `expires_at` or `ttl_seconds`, not both",
            )),
            (Some(t), None) => {
                crate::limits::check_expires_at(now, t)?;
                Ok(Some(t))
            }
            (None, Some(secs)) => {
                check_ttl(secs)?;
                Ok(Some(after(secs)))
            }
            (None, None) => Ok(tags
                .iter()
                .filter_map(|t| self.tag_ttl.get(t))
                .min()
                .map(|&secs| after(secs))),
        }
    }

    /// The user's memories matching `filter`, newest first.
    pub async fn memories(
        &self,
        user: &str,
        filter: &Filter,
        page: &PageRequest,
    ) -> Result<Page<Memory>> {
        self.limits().check_user_id(user)?;
        self.store.list_memories(user, filter, page).await
    }

    /// How many memories the user has.
    pub async fn count_memories(&self, user: &str) -> Result<u64> {
        self.store.count_memories(user).await
    }

    /// A session's messages, oldest first.
    pub async fn messages(
        &self,
        user: &str,
        session: &str,
        page: &PageRequest,
    ) -> Result<Page<Message>> {
        self.limits().check_user_id(user)?;
        self.store.list_messages(user, session, page).await
    }
}

/// Puts the caller's metadata keys into `signals` (the engine's, from
/// [`retrieval::ingest_signals`]), over any of the same name. Metadata that is not an object
/// (`null`: none given) adds nothing.
fn own_metadata(signals: &mut Value, own: &Value) {
    if let (Value::Object(signals), Value::Object(own)) = (signals, own) {
        signals.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}
