//! Extra keys (see [`crate::memory_keys`]): turning them on and off per user, the job that
//! writes them with the chat model, and how searches read a key's match as its memory's.
use std::collections::{BTreeSet, HashMap, HashSet};
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

/// What a context key quotes: its turn, the turn before, the reply it holds and the turn
/// before the question it answers.
type Quoted<'a> = (
    &'a Memory,
    &'a Memory,
    Option<&'a Memory>,
    Option<&'a Memory>,
);

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
            keys: self
                .store
                .count_memories_after(user, &key_filter(), None)
                .await?,
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
            let keys = self.user_keys(user).await?;
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

    /// [`Engine::write_memory_keys`] run after run (each stops at `options.max_keys`) until
    /// no memory is left without its keys: what an import or a caller that wants the keys now
    /// asks for. The keys stored.
    pub async fn write_all_memory_keys(
        &self,
        user: &str,
        options: &KeyOptions,
        on_progress: &mut (dyn FnMut(u64, u64, u64) + Send),
    ) -> Result<u64> {
        let mut keys = 0;
        loop {
            let report = self.write_memory_keys(user, options, on_progress).await?;
            keys += report.keys;
            if report.left == 0 || report.keys == 0 {
                return Ok(keys);
            }
        }
    }

    /// Has the chat model write the keys the user's memories lack (see
    /// [`crate::memory_keys`]): a fact for each message and fact, and a topic for each window
    /// of a session's new turns; and, with no model, a context key for each turn with one
    /// before it. Incremental: each pass reads only the memories after its watermark (context
    /// keys: moved back when a turn they quote changes or goes), [`mk::KEY_RANGE`] at a time.
    /// Resumable (memories with a key of the kind are skipped, and those the model had nothing
    /// for are not asked again), bounded by `options.max_keys`, paced by `options.pause_ms`,
    /// and stopped when the user turns keys off. `on_progress(memories done, of, keys)`.
    pub async fn write_memory_keys(
        &self,
        user: &str,
        options: &KeyOptions,
        on_progress: &mut (dyn FnMut(u64, u64, u64) + Send),
    ) -> Result<KeyReport> {
        self.limits().check_user_id(user)?;
        options.validate()?;
        // Each range drops the user's cached queries once its keys are written; a run that
        // fails or is cancelled (its job's lease lost) part-way drops them as it goes.
        let mut unfinished = ChangedOnDrop {
            engine: self,
            user,
            armed: true,
        };
        // Context keys need no model; facts and topics do.
        let model = self.llm.clone();
        if model.is_none() && (options.facts || options.sessions) {
            return Err(Error::unavailable("no chat model is loaded to write keys"));
        }
        let u = match self.store.get_user(user).await? {
            Some(u) if u.memory_keys => u,
            _ => {
                return Err(Error::invalid(
                    "keys are off for this user: turn them on first",
                ));
            }
        };
        // Each pass has its own watermark: a job with session keys off leaves theirs alone.
        // The run reads from the lowest of those of the passes it makes (from the first
        // memory when one of them has none).
        let from = [
            (options.facts, u.memory_keys_through),
            (options.sessions, u.memory_sessions_through),
            (options.context, u.memory_context_through),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, through)| through)
        .min()
        .flatten();
        let mut run = KeyRun {
            options,
            model: model.filter(|_| options.facts || options.sessions),
            through: [u.memory_keys_through, u.memory_sessions_through],
            context: options.context.then_some(ContextMark {
                through: u.memory_context_through,
                epoch: u.memory_context_epoch,
                moving: true,
            }),
            keyed: Default::default(),
            report: KeyReport {
                model: self
                    .llm
                    .as_ref()
                    .map(|m| m.name().to_owned())
                    .unwrap_or_default(),
                ..KeyReport::default()
            },
            done: 0,
            total: 0,
        };
        let started = Instant::now();
        let filter = super::key_search::not_keys();
        let this = self.scoped(user).await?;
        run.total = self.store.count_memories_after(user, &filter, from).await?;
        let mut after = from;
        loop {
            let memories = self
                .store
                .list_memories_by_id(user, &filter, after, mk::KEY_RANGE)
                .await?;
            let Some(last) = memories.last().map(|m| m.id) else {
                break;
            };
            let previous = self.turns_before(user, &memories).await?;
            // Which of them have keys of each source already.
            let ids: Vec<i64> = memories.iter().map(|m| m.id).collect();
            run.keyed = Default::default();
            for k in self.store.keys_for(user, &ids).await? {
                let Some(target) = k.key_for else { continue };
                let pass = match k.metadata["key"].as_str() {
                    Some(mk::SESSION_KEY) => 1,
                    Some(mk::CONTEXT_KEY) => 2,
                    _ => 0,
                };
                run.keyed[pass].insert(target);
            }
            if !self
                .key_range(user, &this, &mut run, &memories, &previous, on_progress)
                .await?
                || memories.len() < mk::KEY_RANGE
            {
                break;
            }
            after = Some(last);
        }
        if run.done == 0 {
            on_progress(0, run.total, 0);
        }
        run.report.left = run.total.saturating_sub(run.done);
        run.report.seconds = started.elapsed().as_secs_f64();
        unfinished.armed = false;
        Ok(run.report)
    }

    /// One range of the key job: the keys `memories` lack (those of each pass after its
    /// watermark), then each pass's watermark moved over what it finished. False when the
    /// run stops here (at `max_keys`, or keys were turned off).
    async fn key_range(
        &self,
        user: &str,
        this: &Engine,
        run: &mut KeyRun<'_>,
        memories: &[Memory],
        previous: &HashMap<i64, Memory>,
        on_progress: &mut (dyn FnMut(u64, u64, u64) + Send),
    ) -> Result<bool> {
        let options = run.options;
        let Some(range_end) = memories.last().map(|m| m.id) else {
            return Ok(true);
        };
        let units = key_units(memories, run.through, &run.keyed[0], &run.keyed[1], options);
        // Context keys: every turn after the watermark with one before it in its session and
        // no context key yet.
        let mut in_context: Vec<&Memory> = match &run.context {
            Some(c) => memories
                .iter()
                .filter(|m| {
                    c.through.is_none_or(|t| m.id > t)
                        && previous.contains_key(&m.id)
                        && !run.keyed[2].contains(&m.id)
                })
                .collect(),
            None => Vec::new(),
        };
        in_context.sort_by_key(|m| m.id);
        // The turn after each turn, where the range holds it; and the turns before the new
        // ones whose context key holds no reply (no `next`: written before the reply
        // existed, or the reply went on with nothing of theirs): their key is written again
        // with the new turn as its reply when that goes on with them.
        let after: HashMap<i64, &Memory> = memories
            .iter()
            .filter_map(|m| previous.get(&m.id).map(|p| (p.id, m)))
            .collect();
        let (rekey, before_rekeyed) = if in_context.is_empty() {
            Default::default()
        } else {
            self.replies_pending(user, &in_context, previous).await?
        };
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
        let skipped = (memories.len() - pending.len()) as u64;
        run.report.skipped += skipped;
        run.done += skipped;
        on_progress(run.done, run.total, run.report.keys);
        let mut context_done = 0;
        for group in in_context.chunks(CONTEXT_GROUP) {
            // A turn's own keys, and those of the turn before it when they are written again
            // with it as the reply: as many turns as have all their keys within the room (an
            // answer has two, counted as two whether or not the question has a turn before).
            let room = options.max_keys.saturating_sub(run.report.keys as usize);
            let keys_of = |before: &Memory, m: &Memory| 1 + usize::from(mk::answers(before, m));
            let mut used = 0;
            let fit = group
                .iter()
                .take_while(|m| {
                    let before = &previous[&m.id];
                    used += keys_of(before, m);
                    if rekey.contains_key(&before.id)
                        && let Some(b) = before_rekeyed.get(&before.id)
                        && mk::reply_continues(b, before, m)
                    {
                        used += keys_of(b, before);
                    }
                    used <= room
                })
                .count();
            let group = &group[..fit];
            if group.is_empty() {
                break;
            }
            context_done += group.len();
            // (turn, the turn before, the turn after) of each key to write; then the turn
            // before the question each answer answers.
            let mut triples: Vec<(&Memory, &Memory, Option<&Memory>)> = Vec::new();
            for m in group {
                let before = &previous[&m.id];
                let next = after
                    .get(&m.id)
                    .copied()
                    .filter(|n| mk::reply_continues(before, m, n));
                triples.push((m, before, next));
                if let Some(b) = before_rekeyed.get(&before.id)
                    && rekey.contains_key(&before.id)
                    && mk::reply_continues(b, before, m)
                {
                    triples.push((before, b, Some(m)));
                }
            }
            let asked = self.asked_about(user, &triples, previous).await?;
            let quads: Vec<Quoted<'_>> = triples
                .iter()
                .map(|&(m, before, next)| {
                    let about = asked.get(&before.id).filter(|_| mk::answers(before, m));
                    (m, before, next, about)
                })
                .collect();
            // Each turn's key; then an answer's second key, the exchange alone.
            let views: Vec<(&Quoted<'_>, bool)> = quads
                .iter()
                .map(|q| (q, false))
                .chain(quads.iter().filter(|q| q.3.is_some()).map(|q| (q, true)))
                .collect();
            let texts: Vec<String> = views
                .iter()
                .map(|&(&(m, before, next, about), exchange)| {
                    let about = about.filter(|_| !exchange);
                    mk::context_key_text(before, m, next, about)
                })
                .collect();
            let vectors = this.embedder.embed(texts.clone()).await?;
            let mut new_keys = Vec::with_capacity(views.len());
            for ((&(&(m, before, next, about), exchange), text), vector) in
                views.iter().zip(texts).zip(vectors)
            {
                // The key quotes the turns around its own (`context_of`; `next`, the reply,
                // and `asked_about`, the turn before the question it answers, only when the
                // key holds them): it goes when one of them changes or goes
                // (`drop_context_keys`), and expires with the first of them. An answer's
                // exchange key names the same turns as its first key, so that the two go
                // together.
                let mut metadata = json!({ "key": mk::CONTEXT_KEY, "context_of": before.id });
                if let Some(n) = next {
                    metadata["next"] = json!(n.id);
                }
                if let Some(a) = about {
                    metadata["asked_about"] = json!(a.id);
                }
                if exchange {
                    metadata["view"] = json!(mk::EXCHANGE_VIEW);
                }
                let mut key = key_memory(m, text, metadata, this.embedding(vector));
                key.expires_at = [Some(m), Some(before), next, about]
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.expires_at)
                    .min();
                new_keys.push(key);
            }
            for m in group {
                if !in_units.contains(&m.id) {
                    pending.remove(&m.id);
                    run.done += 1;
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
            // A turn or the one it quotes deleted or changed since the job read them: their
            // keys go now (later changes find them stored), and the watermark goes back
            // before their turns, which the next run keys again.
            let read: Vec<i64> = quads
                .iter()
                .flat_map(|&(m, before, next, about)| [Some(m), Some(before), next, about])
                .flatten()
                .map(|t| t.id)
                .collect();
            let current: HashMap<i64, String> = self
                .store
                .get_memories(user, &read)
                .await?
                .into_iter()
                .map(|m| (m.id, m.content))
                .collect();
            let as_read: HashMap<i64, &Memory> = quads
                .iter()
                .flat_map(|&(m, before, next, about)| [Some(m), Some(before), next, about])
                .flatten()
                .map(|m| (m.id, m))
                .collect();
            let unchanged = |id: i64| {
                as_read
                    .get(&id)
                    .is_some_and(|m| current.get(&id) == Some(&m.content))
            };
            // A key is current when its turn and the turns it quotes are as the job read them.
            let (written, stale): (Vec<&Memory>, Vec<&Memory>) = stored.iter().partition(|k| {
                k.key_for.is_some_and(unchanged)
                    && k.metadata["context_of"].as_i64().is_some_and(unchanged)
                    && k.metadata["next"].as_i64().is_none_or(unchanged)
                    && k.metadata["asked_about"].as_i64().is_none_or(unchanged)
            });
            // The keys written again replace those written before their reply existed.
            let replaced: Vec<i64> = stored
                .iter()
                .filter(|k| k.metadata.get("next").is_some())
                .filter_map(|k| k.key_for.and_then(|t| rekey.get(&t)))
                .flatten()
                .copied()
                .collect::<BTreeSet<i64>>()
                .into_iter()
                .collect();
            if !replaced.is_empty() {
                self.store.delete_memories(user, &replaced).await?;
            }
            if !stale.is_empty() {
                let ids: Vec<i64> = stale.iter().map(|k| k.id).collect();
                self.store.delete_memories(user, &ids).await?;
                if let Some(first) = stale.iter().filter_map(|k| k.key_for).min() {
                    self.store.rewind_context_keys(user, first - 1).await?;
                }
                if let Some(c) = run.context.as_mut() {
                    c.moving = false;
                }
            }
            let written: Vec<i64> = written.iter().map(|k| k.id).collect();
            run.report.keys += written.len() as u64;
            run.report.context_keys += written.len() as u64;
            self.changed(user);
            // Keys turned off meanwhile: this group's keys go too, and the run stops.
            if !self
                .store
                .get_user(user)
                .await?
                .is_some_and(|u| u.memory_keys)
            {
                self.delete_memories(user, &written).await?;
                run.report.keys -= written.len() as u64;
                run.report.context_keys -= written.len() as u64;
                return Ok(false);
            }
            on_progress(run.done, run.total, run.report.keys);
        }
        // The context watermark moves over the turns done (unless it was moved back since
        // the run read it: then the next run reads from there).
        let context_cut = context_done < in_context.len();
        if let Some(c) = run.context.as_mut().filter(|c| c.moving) {
            let upto = match in_context.get(context_done) {
                Some(m) => m.id - 1,
                None => range_end,
            };
            if c.through.is_none_or(|t| upto > t) {
                if self.store.advance_context_keys(user, c.epoch, upto).await? {
                    c.through = Some(upto);
                } else {
                    c.moving = false;
                }
            }
        }
        let Some(model) = run.model.clone() else {
            return Ok(!context_cut);
        };
        let params = GenerationParams {
            max_tokens: options.max_tokens,
            temperature: 0.0,
            stop: vec!["\n".into()],
            cache_owner: Some(user.to_owned()),
            ..GenerationParams::default()
        };
        let ask = |turns: Vec<crate::context::ChatTurn>| {
            let model = model.clone();
            let params = params.clone();
            async move { model.complete(&turns, &params).await }
        };
        for unit in &units {
            let room = options.max_keys.saturating_sub(run.report.keys as usize);
            if room == 0 {
                return Ok(false);
            }
            // The unit's keys: (memory, text, source).
            let mut keys: Vec<(&Memory, String, &str)> = Vec::new();
            for group in unit.facts.chunks(options.concurrency) {
                let replies = futures::future::join_all(
                    group
                        .iter()
                        .map(|m| ask(mk::fact_prompt(m, previous.get(&m.id)))),
                )
                .await;
                for (m, reply) in group.iter().zip(replies) {
                    run.report.memories += 1;
                    match mk::parse_fact(&reply?.text, m, previous.get(&m.id)) {
                        Some(fact) => {
                            keys.push((*m, mk::key_text(&fact, m, options.with_text), mk::FACT_KEY))
                        }
                        None => run.report.rejected += 1,
                    }
                }
            }
            if !unit.window.is_empty() {
                run.report.windows += 1;
                let reply = ask(mk::topic_prompt(&unit.window)).await?;
                match mk::parse_topic(&reply.text, &unit.window) {
                    Some(topic) => keys.extend(
                        unit.window
                            .iter()
                            .map(|m| (*m, mk::session_key_text(&topic, m), mk::SESSION_KEY)),
                    ),
                    None => run.report.rejected_windows += 1,
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
                        run.report.keys += stored.len() as u64;
                        if source == mk::SESSION_KEY {
                            run.report.session_keys += stored.len() as u64;
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
                return Ok(false);
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
                if run.through[i].is_none_or(|t| upto > t) {
                    run.through[i] = Some(upto);
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
                run.report.keys -= gone;
                run.report.session_keys -= written_topics;
                return Ok(false);
            }
            run.done += ids.len() as u64;
            on_progress(run.done, run.total, run.report.keys);
            if options.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(options.pause_ms)).await;
            }
        }
        // Every unit done: the passes have read the range through its end.
        for (i, (pass, wanted)) in passes.into_iter().enumerate() {
            if wanted && run.through[i].is_none_or(|t| range_end > t) {
                if !self
                    .store
                    .advance_memory_keys(user, pass, range_end)
                    .await?
                {
                    return Ok(false);
                }
                run.through[i] = Some(range_end);
            }
        }
        Ok(!context_cut)
    }

    /// The ids of the user's keys.
    async fn user_keys(&self, user: &str) -> Result<Vec<i64>> {
        let filter = key_filter();
        let mut out = Vec::new();
        loop {
            let page = self
                .store
                .list_memories_by_id(user, &filter, out.last().copied(), LIST_PAGE)
                .await?;
            out.extend(page.iter().map(|m| m.id));
            if page.len() < LIST_PAGE {
                return Ok(out);
            }
        }
    }

    /// Every memory of the user's that `filter` lists, page after page.
    pub(super) async fn listed(&self, user: &str, filter: &Filter) -> Result<Vec<Memory>> {
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
}

/// Drops the user's cached queries when dropped while armed (see
/// [`Engine::write_memory_keys`]).
struct ChangedOnDrop<'a> {
    engine: &'a Engine,
    user: &'a str,
    armed: bool,
}

impl Drop for ChangedOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.engine.changed(self.user);
        }
    }
}

/// Every key of a user's, whatever its validity.
fn key_filter() -> Filter {
    Filter {
        kinds: vec![MemoryKind::Key],
        include_superseded: true,
        ..Filter::default()
    }
}

/// Context keys embedded and stored at once.
const CONTEXT_GROUP: usize = 64;

/// A key job's state across its ranges.
struct KeyRun<'a> {
    options: &'a KeyOptions,
    /// The chat model, when the run writes facts or topics.
    model: Option<Arc<dyn crate::llm::ChatModel>>,
    /// The fact and session passes' watermarks.
    through: [Option<i64>; 2],
    /// The context pass's watermark (`None`: the run writes no context keys).
    context: Option<ContextMark>,
    /// The memories of the range with a key of each source: fact, session, context.
    keyed: [HashSet<i64>; 3],
    report: KeyReport,
    /// Memories done or skipped, of `total` (those after the run's first watermark).
    done: u64,
    total: u64,
}

/// The context pass's watermark as the run read it (with its epoch); `moving` is false once
/// it was moved back meanwhile: the run then leaves it there.
struct ContextMark {
    through: Option<i64>,
    epoch: i64,
    moving: bool,
}

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
