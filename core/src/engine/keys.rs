//! Extra keys (see [`crate::memory_keys`]): turning them on and off per user, the job that
//! writes them with the chat model, and how searches read a key's match as its memory's.
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::*;
use crate::error::{Error, ErrorKind};
use crate::jobs::{Job, JobKind, NewJob};
use crate::llm::GenerationParams;
use crate::memory_keys::{self as mk, KeyOptions, KeyReport, KeyStatus};
use crate::types::{Actor, NewMemory, PageRequest};

/// Memories listed per page while loading a user's keys.
const LIST_PAGE: usize = 500;
/// Keys deleted per call when keys are turned off.
const DELETE_BATCH: usize = 500;

impl Engine {
    /// Whether the user's keys are on, and how many they have.
    pub async fn memory_keys_status(&self, user: &str) -> Result<KeyStatus> {
        self.limits().check_user_id(user)?;
        let enabled = self
            .store
            .get_user(user)
            .await?
            .is_some_and(|u| u.memory_keys);
        Ok(KeyStatus {
            enabled,
            keys: self.user_keys(user).await?.len() as u64,
        })
    }

    /// Turns the user's keys on (the key job may write them; search reads them) or off
    /// (their keys are deleted: they are derived from the memories and written again when
    /// keys are turned back on).
    pub async fn set_memory_keys(&self, user: &str, enabled: bool) -> Result<KeyStatus> {
        self.limits().check_user_id(user)?;
        if enabled {
            self.store.upsert_user(user).await?;
        }
        self.store.set_memory_keys(user, enabled).await?;
        if !enabled {
            let keys: Vec<i64> = self.user_keys(user).await?.into_keys().collect();
            for chunk in keys.chunks(DELETE_BATCH) {
                self.delete_memories(user, chunk).await?;
            }
        }
        self.memory_keys_status(user).await
    }

    /// Queues the key job for the user ([`JobKind::MemoryKeys`], `params` a
    /// [`KeyOptions`]) to run now; one pending per user. The user's keys must be on.
    pub async fn queue_memory_keys_job(
        &self,
        user: &str,
        options: &KeyOptions,
        actor: &Actor,
    ) -> Result<Job> {
        self.limits().check_user_id(user)?;
        options.validate()?;
        if !self.memory_keys_status(user).await?.enabled {
            return Err(Error::invalid(
                "keys are off for this user: turn them on first",
            ));
        }
        let params = serde_json::to_value(options).map_err(|e| Error::Internal(format!("{e}")))?;
        let job = self
            .jobs
            .create_job(
                user,
                NewJob {
                    kind: JobKind::MemoryKeys,
                    run_at: Utc::now(),
                    params,
                },
                actor,
            )
            .await?;
        self.publish(Event::Job(Box::new(job.clone())));
        Ok(job)
    }

    /// Users whose keys are on (for a schedule that queues their job).
    pub async fn memory_keys_users(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        loop {
            let page = self
                .store
                .memory_keys_users(out.last().map(String::as_str), LIST_PAGE)
                .await?;
            let done = page.len() < LIST_PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// Has the chat model write a key for each of the user's messages and facts that has none
    /// (see [`crate::memory_keys`]): resumable (memories with a key are skipped), bounded by
    /// `options.max_keys`, paced by `options.pause_ms`, and stopped when the user turns keys
    /// off. `on_progress(memories done, of, keys)`.
    pub async fn write_memory_keys(
        &self,
        user: &str,
        options: &KeyOptions,
        on_progress: &mut (dyn FnMut(u64, u64, u64) + Send),
    ) -> Result<KeyReport> {
        self.limits().check_user_id(user)?;
        options.validate()?;
        let Some(model) = self.llm.clone() else {
            return Err(Error::unavailable("no chat model is loaded to write keys"));
        };
        let through = match self.store.get_user(user).await? {
            Some(u) if u.memory_keys => u.memory_keys_through,
            _ => {
                return Err(Error::invalid(
                    "keys are off for this user: turn them on first",
                ));
            }
        };
        let started = Instant::now();
        let keyed: HashSet<i64> = self.user_keys(user).await?.into_values().collect();
        let memories = self.all_memories(user).await?;
        let previous = previous_turns(&memories);
        let total = memories.len() as u64;
        // Memories are read in the order they were stored, from where the last run stopped;
        // those the model had no fact for are not asked again.
        let (mut todo, skipped): (Vec<&Memory>, Vec<&Memory>) = memories.iter().partition(|m| {
            mk::KEYED_KINDS.contains(&m.kind)
                && through.is_none_or(|t| m.id > t)
                && !keyed.contains(&m.id)
                && m.content.chars().count() >= options.min_memory_chars
        });
        todo.sort_by_key(|m| m.id);
        let mut report = KeyReport {
            model: model.name().to_owned(),
            skipped: skipped.len() as u64,
            ..KeyReport::default()
        };
        let mut done = report.skipped;
        on_progress(done, total, 0);
        let this = self.scoped(user).await?;
        let params = GenerationParams {
            max_tokens: options.max_tokens,
            temperature: 0.0,
            stop: vec!["\n".into()],
            ..GenerationParams::default()
        };
        let mut asked = 0usize;
        for group in todo.chunks(options.concurrency) {
            if report.keys as usize >= options.max_keys {
                break;
            }
            asked += group.len();
            let replies = futures::future::join_all(group.iter().map(|m| {
                let turns = mk::fact_prompt(m, previous.get(&m.id).copied());
                let model = model.clone();
                let params = params.clone();
                async move { model.complete(&turns, &params).await }
            }))
            .await;
            let mut facts = Vec::new();
            for (m, reply) in group.iter().zip(replies) {
                report.memories += 1;
                match mk::parse_fact(&reply?.text, m, previous.get(&m.id).copied()) {
                    Some(fact) if report.keys as usize + facts.len() < options.max_keys => {
                        facts.push((*m, mk::key_text(&fact, m, options.with_text)))
                    }
                    Some(_) => {}
                    None => report.rejected += 1,
                }
            }
            let vectors = this
                .embedder
                .embed(facts.iter().map(|(_, f)| f.clone()).collect())
                .await?;
            let mut written = Vec::new();
            for ((m, fact), vector) in facts.into_iter().zip(vectors) {
                let key = NewMemory {
                    kind: MemoryKind::Key,
                    content: fact,
                    session: m.session.clone(),
                    role: m.role,
                    tags: m.tags.clone(),
                    metadata: json!({
                        "key": "fact",
                        "model": model.name(),
                        "prompt_version": mk::PROMPT_VERSION,
                    }),
                    importance: Some(m.importance),
                    emotion: None,
                    created_at: Some(m.created_at),
                    embedding: this.embedding(vector),
                    expires_at: m.expires_at,
                    supersedes: None,
                    key_for: Some(m.id),
                };
                // One at a time: a memory deleted since it was read loses only its own key.
                match self.store.add_memories(user, vec![key]).await {
                    Ok(stored) => {
                        report.keys += stored.len() as u64;
                        written.extend(stored.iter().map(|k| k.id));
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            self.changed(user);
            // Keys turned off meanwhile: this group's keys go too, and the run stops.
            let last = group.last().map_or(0, |m| m.id);
            if !self.store.advance_memory_keys(user, last).await? {
                self.delete_memories(user, &written).await?;
                report.keys -= written.len() as u64;
                break;
            }
            done += group.len() as u64;
            on_progress(done, total, report.keys);
            if options.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(options.pause_ms)).await;
            }
        }
        report.left = (todo.len() - asked) as u64;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The user's keys: key id → the memory it is for.
    async fn user_keys(&self, user: &str) -> Result<HashMap<i64, i64>> {
        let filter = Filter {
            kinds: vec![MemoryKind::Key],
            include_superseded: true,
            ..Filter::default()
        };
        let mut page = PageRequest {
            first: LIST_PAGE,
            after: None,
        };
        let mut out = HashMap::new();
        loop {
            let got = self.store.list_memories(user, &filter, &page).await?;
            out.extend(
                got.items
                    .iter()
                    .filter_map(|m| m.key_for.map(|target| (m.id, target))),
            );
            match got.next_cursor {
                Some(c) => page.after = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Search hits (best first) with each key replaced by the memory it is for, which must
    /// pass `filter` (the caller's, with its validity rule); each memory once, at its best.
    pub(super) async fn resolve_keys<T>(
        &self,
        user: &str,
        hits: Vec<(Memory, T)>,
        filter: &Filter,
    ) -> Result<Vec<(Memory, T)>> {
        if !hits.iter().any(|(m, _)| m.kind == MemoryKind::Key) {
            return Ok(hits);
        }
        let mut wanted: Vec<i64> = hits.iter().filter_map(|(m, _)| m.key_for).collect();
        wanted.sort_unstable();
        wanted.dedup();
        // The memories are read at once (by primary key), those already among the hits
        // taken from there.
        let mut targets: HashMap<i64, Option<Memory>> = HashMap::with_capacity(wanted.len());
        for (m, _) in &hits {
            if wanted.binary_search(&m.id).is_ok() {
                targets.insert(m.id, Some(m.clone()));
            }
        }
        let missing: Vec<i64> = wanted
            .iter()
            .copied()
            .filter(|id| !targets.contains_key(id))
            .collect();
        let page = self.limits().max_page_size.max(1);
        for chunk in missing.chunks(page) {
            for t in self.store.get_memories(user, chunk).await? {
                targets.insert(t.id, Some(t));
            }
        }
        for t in targets.values_mut() {
            if t.as_ref().is_some_and(|t| !filter.matches(t)) {
                *t = None;
            }
        }
        let mut seen = HashSet::with_capacity(hits.len());
        let mut out = Vec::with_capacity(hits.len());
        for (m, score) in hits {
            let m = match (m.kind, m.key_for) {
                (MemoryKind::Key, Some(t)) => match targets.get(&t) {
                    Some(Some(target)) => target.clone(),
                    _ => continue,
                },
                (MemoryKind::Key, None) => continue,
                _ => m,
            };
            if seen.insert(m.id) {
                out.push((m, score));
            }
        }
        Ok(out)
    }
}

/// The filter a store search runs with so that keys are found too: a filter naming kinds
/// that have keys also admits keys (whose memories are then held to the caller's filter).
pub(super) fn with_keys(filter: &Filter) -> Cow<'_, Filter> {
    if filter.kinds.is_empty()
        || filter.kinds.contains(&MemoryKind::Key)
        || !filter.kinds.iter().any(|k| mk::KEYED_KINDS.contains(k))
    {
        return Cow::Borrowed(filter);
    }
    let mut f = filter.clone();
    f.kinds.push(MemoryKind::Key);
    Cow::Owned(f)
}

/// For each message of a session, the one before it.
fn previous_turns(memories: &[Memory]) -> HashMap<i64, &Memory> {
    let mut turns: Vec<&Memory> = memories
        .iter()
        .filter(|m| m.kind == MemoryKind::Message && m.session.is_some())
        .collect();
    turns.sort_by(|a, b| (&a.session, a.message_id, a.id).cmp(&(&b.session, b.message_id, b.id)));
    turns
        .windows(2)
        .filter(|w| w[0].session == w[1].session)
        .map(|w| (w[1].id, w[0]))
        .collect()
}
