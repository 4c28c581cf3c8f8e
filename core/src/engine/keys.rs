//! Extra keys (see [`crate::memory_keys`]): turning them on and off per user, the job that
//! writes them with the chat model, and how searches read a key's match as its memory's.
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::*;
use crate::error::{Error, ErrorKind};
use crate::jobs::{Job, JobKind, NewJob};
use crate::llm::GenerationParams;
use crate::memory_keys::{self as mk, KeyOptions, KeyReport, KeyStatus};
use crate::types::{Actor, MetadataCondition, MetadataOp, NewMemory, PageRequest};

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
            let keys: Vec<i64> = self.user_keys(user).await?.iter().map(|k| k.id).collect();
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
        if !self
            .store
            .get_user(user)
            .await?
            .is_some_and(|u| u.memory_keys)
        {
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

    /// Has the chat model write the keys the user's memories lack (see
    /// [`crate::memory_keys`]): a fact for each message and fact, and a topic for each window
    /// of a session's new turns. Resumable (memories with a key of the kind are skipped, and
    /// those the model had nothing for are not asked again), bounded by `options.max_keys`,
    /// paced by `options.pause_ms`, and stopped when the user turns keys off.
    /// `on_progress(memories done, of, keys)`.
    pub async fn write_memory_keys(
        &self,
        user: &str,
        options: &KeyOptions,
        on_progress: &mut (dyn FnMut(u64, u64, u64) + Send),
    ) -> Result<KeyReport> {
        self.limits().check_user_id(user)?;
        options.validate()?;
        // Context keys need no model; facts and topics do.
        let model = self.llm.clone();
        if model.is_none() && (options.facts || options.sessions) {
            return Err(Error::unavailable("no chat model is loaded to write keys"));
        }
        // Each pass has its own watermark: a job with session keys off leaves theirs alone.
        let mut through = match self.store.get_user(user).await? {
            Some(u) if u.memory_keys => [u.memory_keys_through, u.memory_sessions_through],
            _ => {
                return Err(Error::invalid(
                    "keys are off for this user: turn them on first",
                ));
            }
        };
        let started = Instant::now();
        let mut fact_keyed = HashSet::new();
        let mut session_keyed = HashSet::new();
        let mut context_keyed = HashSet::new();
        for k in self.user_keys(user).await? {
            match k.source {
                mk::SESSION_KEY => session_keyed.insert(k.target),
                mk::CONTEXT_KEY => context_keyed.insert(k.target),
                _ => fact_keyed.insert(k.target),
            };
        }
        let memories = self.all_memories(user).await?;
        let previous = previous_turns(&memories);
        let total = memories.len() as u64;
        let units = key_units(&memories, through, &fact_keyed, &session_keyed, options);
        // Context keys: every turn with one before it in its session and no context key yet
        // (no watermark: finding them is a pass over what is already read).
        let mut in_context: Vec<&Memory> = if options.context {
            memories
                .iter()
                .filter(|m| previous.contains_key(&m.id) && !context_keyed.contains(&m.id))
                .collect()
        } else {
            Vec::new()
        };
        in_context.sort_by_key(|m| m.id);
        // Memories are read in the order they were stored, from where the last run stopped.
        // Each pass's watermark moves up to the first memory it has not done yet.
        let mut pending: BTreeSet<i64> = units.iter().flat_map(|u| u.ids()).collect();
        let in_units = pending.clone();
        pending.extend(in_context.iter().map(|m| m.id));
        let mut pass_pending: [BTreeSet<i64>; 2] = [
            units
                .iter()
                .flat_map(|u| u.facts.iter().map(|m| m.id))
                .collect(),
            units
                .iter()
                .flat_map(|u| u.window.iter().map(|m| m.id))
                .collect(),
        ];
        let pass_last = pass_pending.each_ref().map(|p| p.last().copied());
        let passes = [
            (mk::KeyPass::Facts, options.facts),
            (mk::KeyPass::Sessions, options.sessions),
        ];
        let mut report = KeyReport {
            model: model
                .as_ref()
                .map(|m| m.name().to_owned())
                .unwrap_or_default(),
            skipped: total - pending.len() as u64,
            ..KeyReport::default()
        };
        let mut done = report.skipped;
        on_progress(done, total, 0);
        let this = self.scoped(user).await?;
        for group in in_context.chunks(CONTEXT_GROUP) {
            let room = options.max_keys.saturating_sub(report.keys as usize);
            let group = &group[..group.len().min(room)];
            if group.is_empty() {
                break;
            }
            let texts: Vec<String> = group
                .iter()
                .map(|m| mk::context_key_text(previous[&m.id], m))
                .collect();
            let vectors = this.embedder.embed(texts.clone()).await?;
            let mut new_keys = Vec::with_capacity(group.len());
            for ((m, text), vector) in group.iter().zip(texts).zip(vectors) {
                // The key quotes the turn before: it goes when that turn changes or goes
                // (`context_of`, `drop_context_keys`), and expires with the first of the two.
                let before = previous[&m.id];
                let metadata = json!({ "key": mk::CONTEXT_KEY, "context_of": before.id });
                let mut key = key_memory(m, text, metadata, this.embedding(vector));
                key.expires_at = match (m.expires_at, before.expires_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                new_keys.push(key);
                if !in_units.contains(&m.id) {
                    pending.remove(&m.id);
                    done += 1;
                }
            }
            // The group at once; when a turn was deleted since it was read, one at a time,
            // so that only its own key is lost.
            let mut stored = Vec::new();
            match self.store.add_memories(user, new_keys.clone()).await {
                Ok(keys) => stored = keys,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    for key in new_keys {
                        match self.store.add_memories(user, vec![key]).await {
                            Ok(keys) => stored.extend(keys),
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            // A quoted turn deleted or changed since the job read it (a long run reads all
            // the memories first): its keys go now; later changes find them stored.
            let quoted: Vec<i64> = group.iter().map(|m| previous[&m.id].id).collect();
            let current: HashMap<i64, String> = self
                .store
                .get_memories(user, &quoted)
                .await?
                .into_iter()
                .map(|m| (m.id, m.content))
                .collect();
            let (written, stale): (Vec<&Memory>, Vec<&Memory>) = stored.iter().partition(|k| {
                let before = k.metadata["context_of"].as_i64().unwrap_or_default();
                k.key_for
                    .and_then(|t| previous.get(&t))
                    .is_some_and(|b| b.id == before && current.get(&before) == Some(&b.content))
            });
            if !stale.is_empty() {
                let ids: Vec<i64> = stale.iter().map(|k| k.id).collect();
                self.store.delete_memories(user, &ids).await?;
            }
            let written: Vec<i64> = written.iter().map(|k| k.id).collect();
            report.keys += written.len() as u64;
            report.context_keys += written.len() as u64;
            self.changed(user);
            // Keys turned off meanwhile: this group's keys go too, and the run stops.
            if !self
                .store
                .get_user(user)
                .await?
                .is_some_and(|u| u.memory_keys)
            {
                self.delete_memories(user, &written).await?;
                report.keys -= written.len() as u64;
                report.context_keys -= written.len() as u64;
                report.left = pending.len() as u64;
                report.seconds = started.elapsed().as_secs_f64();
                return Ok(report);
            }
            on_progress(done, total, report.keys);
        }
        let Some(model) = model.filter(|_| options.facts || options.sessions) else {
            report.left = pending.len() as u64;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        };
        let params = GenerationParams {
            max_tokens: options.max_tokens,
            temperature: 0.0,
            stop: vec!["\n".into()],
            ..GenerationParams::default()
        };
        let ask = |turns: Vec<crate::context::ChatTurn>| {
            let model = model.clone();
            let params = params.clone();
            async move { model.complete(&turns, &params).await }
        };
        for unit in &units {
            let room = options.max_keys.saturating_sub(report.keys as usize);
            if room == 0 {
                break;
            }
            // The unit's keys: (memory, text, source).
            let mut keys: Vec<(&Memory, String, &str)> = Vec::new();
            for group in unit.facts.chunks(options.concurrency) {
                let replies = futures::future::join_all(
                    group
                        .iter()
                        .map(|m| ask(mk::fact_prompt(m, previous.get(&m.id).copied()))),
                )
                .await;
                for (m, reply) in group.iter().zip(replies) {
                    report.memories += 1;
                    match mk::parse_fact(&reply?.text, m, previous.get(&m.id).copied()) {
                        Some(fact) => {
                            keys.push((*m, mk::key_text(&fact, m, options.with_text), mk::FACT_KEY))
                        }
                        None => report.rejected += 1,
                    }
                }
            }
            if !unit.window.is_empty() {
                report.windows += 1;
                let reply = ask(mk::topic_prompt(&unit.window)).await?;
                match mk::parse_topic(&reply.text, &unit.window) {
                    Some(topic) => keys.extend(
                        unit.window
                            .iter()
                            .map(|m| (*m, mk::session_key_text(&topic, m), mk::SESSION_KEY)),
                    ),
                    None => report.rejected_windows += 1,
                }
            }
            // A unit whose keys do not all fit is left for the next run (what it wrote is
            // kept, and skipped then).
            let cut = keys.len() > room;
            keys.truncate(room);
            let vectors = this
                .embedder
                .embed(keys.iter().map(|(_, text, _)| text.clone()).collect())
                .await?;
            let mut written = Vec::new();
            let mut written_topics = 0;
            for ((m, text, source), vector) in keys.into_iter().zip(vectors) {
                let metadata = json!({
                    "key": source,
                    "model": model.name(),
                    "prompt_version": mk::PROMPT_VERSION,
                });
                let key = key_memory(m, text, metadata, this.embedding(vector));
                // One at a time: a memory deleted since it was read loses only its own key.
                match self.store.add_memories(user, vec![key]).await {
                    Ok(stored) => {
                        report.keys += stored.len() as u64;
                        if source == mk::SESSION_KEY {
                            report.session_keys += stored.len() as u64;
                            written_topics += stored.len() as u64;
                        }
                        written.extend(stored.iter().map(|k| k.id));
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            self.changed(user);
            if cut {
                break;
            }
            let ids = unit.ids();
            for id in &ids {
                pending.remove(id);
            }
            for m in &unit.facts {
                pass_pending[0].remove(&m.id);
            }
            for m in &unit.window {
                pass_pending[1].remove(&m.id);
            }
            // Keys turned off meanwhile: this unit's keys go too, and the run stops.
            let mut on = None;
            for (i, (pass, wanted)) in passes.into_iter().enumerate() {
                if !wanted {
                    continue;
                }
                let upto = match pass_pending[i].first() {
                    Some(first) => first - 1,
                    None => pass_last[i].unwrap_or(0),
                };
                if through[i].is_none_or(|t| upto > t) {
                    through[i] = Some(upto);
                    let advanced = self.store.advance_memory_keys(user, pass, upto).await?;
                    on = Some(on.unwrap_or(true) && advanced);
                }
            }
            let on = match on {
                Some(on) => on,
                None => self
                    .store
                    .get_user(user)
                    .await?
                    .is_some_and(|u| u.memory_keys),
            };
            if !on {
                let gone = written.len() as u64;
                self.delete_memories(user, &written).await?;
                report.keys -= gone;
                report.session_keys -= written_topics;
                break;
            }
            done += ids.len() as u64;
            on_progress(done, total, report.keys);
            if options.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(options.pause_ms)).await;
            }
        }
        report.left = pending.len() as u64;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Deletes the context keys that quote one of `memories` (the keys of the turns after
    /// them, in the same session), so that no key keeps a memory's old or deleted text; the
    /// next run of the job writes them again from what is there then. Only the sessions'
    /// keys are read; memories outside a session are never quoted.
    pub(super) async fn drop_context_keys(&self, user: &str, memories: &[Memory]) -> Result<()> {
        let mut by_session: HashMap<&str, Vec<i64>> = HashMap::new();
        for m in memories {
            if let (MemoryKind::Message, Some(s)) = (m.kind, m.session.as_deref()) {
                by_session.entry(s).or_default().push(m.id);
            }
        }
        for (session, ids) in by_session {
            let filter = Filter {
                session: Some(session.to_owned()),
                kinds: vec![MemoryKind::Key],
                include_superseded: true,
                metadata: vec![MetadataCondition {
                    key: "context_of".into(),
                    op: MetadataOp::In,
                    value: json!(ids),
                }],
                ..Filter::default()
            };
            let keys: Vec<i64> = self
                .listed(user, &filter)
                .await?
                .iter()
                .map(|k| k.id)
                .collect();
            for chunk in keys.chunks(DELETE_BATCH) {
                self.store.delete_memories(user, chunk).await?;
            }
        }
        Ok(())
    }

    /// The user's keys: each with the memory it is for and its source.
    async fn user_keys(&self, user: &str) -> Result<Vec<KeyRef>> {
        let filter = Filter {
            kinds: vec![MemoryKind::Key],
            include_superseded: true,
            ..Filter::default()
        };
        Ok(self
            .listed(user, &filter)
            .await?
            .iter()
            .filter_map(|m| {
                Some(KeyRef {
                    id: m.id,
                    target: m.key_for?,
                    source: match m.metadata["key"].as_str() {
                        Some(mk::SESSION_KEY) => mk::SESSION_KEY,
                        Some(mk::CONTEXT_KEY) => mk::CONTEXT_KEY,
                        _ => mk::FACT_KEY,
                    },
                })
            })
            .collect())
    }

    /// Every memory of the user's that `filter` lists, page after page.
    async fn listed(&self, user: &str, filter: &Filter) -> Result<Vec<Memory>> {
        let mut page = PageRequest {
            first: LIST_PAGE,
            after: None,
        };
        let mut out = Vec::new();
        loop {
            let got = self.store.list_memories(user, filter, &page).await?;
            out.extend(got.items);
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

/// Context keys embedded and stored at once.
const CONTEXT_GROUP: usize = 64;

/// A key for memory `m`: its session, role, tags, importance, time and expiry.
fn key_memory(
    m: &Memory,
    text: String,
    metadata: serde_json::Value,
    embedding: Embedding,
) -> NewMemory {
    NewMemory {
        kind: MemoryKind::Key,
        content: text,
        session: m.session.clone(),
        role: m.role,
        tags: m.tags.clone(),
        metadata,
        importance: Some(m.importance),
        emotion: None,
        created_at: Some(m.created_at),
        embedding,
        expires_at: m.expires_at,
        supersedes: None,
        key_for: Some(m.id),
    }
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

/// A key of the user's: its id, the memory it is for, and its source.
struct KeyRef {
    id: i64,
    target: i64,
    source: &'static str,
}

/// What the job asks about together: the memories it wants a fact for, and a window of a
/// session it wants a topic for (empty when none; its turns' facts are asked with it).
struct KeyUnit<'a> {
    facts: Vec<&'a Memory>,
    window: Vec<&'a Memory>,
}

impl KeyUnit<'_> {
    fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .facts
            .iter()
            .chain(&self.window)
            .map(|m| m.id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The run's work, in the order the memories were stored: the new turns of each session in
/// windows (with their facts), then the other memories that want a fact, in groups of
/// `options.concurrency`. New: after the watermark of its pass (`through`: facts, sessions),
/// without a key of the kind, and at least `options.min_memory_chars` long.
fn key_units<'a>(
    memories: &'a [Memory],
    through: [Option<i64>; 2],
    fact_keyed: &HashSet<i64>,
    session_keyed: &HashSet<i64>,
    options: &KeyOptions,
) -> Vec<KeyUnit<'a>> {
    let fresh = |m: &Memory, through: Option<i64>| {
        through.is_none_or(|t| m.id > t) && m.content.chars().count() >= options.min_memory_chars
    };
    let wants_fact = |m: &Memory| {
        options.facts
            && mk::KEYED_KINDS.contains(&m.kind)
            && fresh(m, through[0])
            && !fact_keyed.contains(&m.id)
    };
    let mut turns: Vec<&Memory> = memories
        .iter()
        .filter(|m| {
            options.sessions
                && m.kind == MemoryKind::Message
                && m.session.is_some()
                && fresh(m, through[1])
                && !session_keyed.contains(&m.id)
        })
        .collect();
    turns.sort_by(|a, b| (&a.session, a.message_id, a.id).cmp(&(&b.session, b.message_id, b.id)));
    let mut units = Vec::new();
    let mut in_window = HashSet::new();
    for session in turns.chunk_by(|a, b| a.session == b.session) {
        for window in mk::session_windows(session, options.session_turns) {
            in_window.extend(window.iter().map(|m| m.id));
            units.push(KeyUnit {
                facts: window.iter().copied().filter(|m| wants_fact(m)).collect(),
                window,
            });
        }
    }
    let mut rest: Vec<&Memory> = memories
        .iter()
        .filter(|m| wants_fact(m) && !in_window.contains(&m.id))
        .collect();
    rest.sort_by_key(|m| m.id);
    units.extend(rest.chunks(options.concurrency).map(|c| KeyUnit {
        facts: c.to_vec(),
        window: vec![],
    }));
    units.sort_by_key(|u| u.ids().first().copied());
    units
}
