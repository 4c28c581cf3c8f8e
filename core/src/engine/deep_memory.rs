//! Deep memory (see [`crate::deep_memory`]): pairs written by the chat model or given by the
//! user, the training and evaluation of the user's query adapter, turning it on and off, and
//! applying it to the user's query vectors.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::*;
use crate::deep_memory::{
    self as dm, Adapter, DeepMemoryStatus, Evaluation, GenerateOptions, GenerateReport, MemorySet,
    NewTrainingPair, PairSource, Questions, StoredAdapter, TrainOptions, TrainingPair,
    TrainingReport,
};
use crate::error::Error;
use crate::llm::{ChatModel, GenerationParams};
use crate::types::PageRequest;

/// Memories listed per page while loading a user's.
const LIST_PAGE: usize = 500;
/// How long a replica may use an adapter it loaded before looking at the store again (a
/// change made through this process, or announced by another replica, is seen at once).
const ADAPTER_TTL: Duration = Duration::from_secs(10);
/// Users whose adapter (or its absence) is kept in memory at most.
const ADAPTER_CACHE: usize = 10_000;

/// A user's adapter as searches use it, with when and at which cache generation it was read.
#[derive(Clone)]
pub(super) struct CachedAdapter {
    generation: u64,
    loaded: Instant,
    /// The embedding model and the adapter, when the user has one turned on.
    adapter: Option<Arc<(String, Adapter)>>,
}

/// The in-memory adapters of an engine.
pub(super) type AdapterCache = Arc<std::sync::Mutex<HashMap<String, CachedAdapter>>>;

/// Progress of a training: a phase and how far it is.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainProgress {
    /// Embedding the questions.
    Embedding {
        /// Done.
        done: usize,
        /// Of.
        total: usize,
    },
    /// An epoch ended.
    Epoch {
        /// Which.
        epoch: usize,
        /// Of.
        epochs: usize,
        /// Its mean loss.
        loss: f32,
    },
    /// Judged on the held-out pairs.
    Evaluated(Evaluation),
}

impl Engine {
    /// The chat model that writes deep memory questions in background jobs (the server passes
    /// its own).
    pub fn with_llm(mut self, model: Option<Arc<dyn ChatModel>>) -> Self {
        self.llm = model;
        self
    }

    /// Whether a chat model is there to write questions.
    pub fn has_llm(&self) -> bool {
        self.llm.is_some()
    }

    /// The user's deep memory pairs, oldest first.
    pub async fn deep_memory_pairs(&self, user: &str) -> Result<Vec<TrainingPair>> {
        self.limits().check_user_id(user)?;
        self.store.training_pairs(user).await
    }

    /// Adds the user's own (question, memory id) pairs (a question this memory answered: a
    /// click, a thumbs-up). Every memory must be the user's; at most
    /// [`dm::MAX_PAIRS_PER_CALL`] per call. How many were stored.
    pub async fn deep_memory_add_pairs(
        &self,
        user: &str,
        pairs: Vec<(String, i64)>,
    ) -> Result<u64> {
        let limits = self.limits();
        limits.check_user_id(user)?;
        if pairs.is_empty() || pairs.len() > dm::MAX_PAIRS_PER_CALL {
            return Err(Error::invalid(format!(
                "give 1 to {} pairs per call",
                dm::MAX_PAIRS_PER_CALL
            )));
        }
        let mut seen = HashSet::new();
        for (question, id) in &pairs {
            let q = question.trim();
            if q.is_empty() || q.chars().count() > dm::MAX_QUESTION_CHARS {
                return Err(Error::invalid(format!(
                    "a question must have 1 to {} characters",
                    dm::MAX_QUESTION_CHARS
                )));
            }
            if seen.insert(*id) && self.store.get_memory(user, *id).await?.is_none() {
                return Err(Error::not_found("memory", id.to_string()));
            }
        }
        self.store
            .add_training_pairs(
                user,
                pairs
                    .into_iter()
                    .map(|(question, memory_id)| NewTrainingPair {
                        memory_id,
                        question: question.trim().to_owned(),
                        source: PairSource::User,
                        model: None,
                        prompt_version: None,
                    })
                    .collect(),
            )
            .await
    }

    /// Has the chat model write questions that the user's memories answer (see
    /// [`GenerateOptions`]), stored as pairs with their provenance. Resumable: memories that
    /// already have generated pairs are skipped. `on_progress(memories done, of, pairs)`.
    pub async fn deep_memory_generate(
        &self,
        user: &str,
        options: &GenerateOptions,
        on_progress: &mut (dyn FnMut(u64, u64, u64) + Send),
    ) -> Result<GenerateReport> {
        self.limits().check_user_id(user)?;
        options.validate()?;
        let Some(model) = self.llm.clone() else {
            return Err(Error::unavailable(
                "no chat model is loaded to write deep memory questions",
            ));
        };
        let started = Instant::now();
        let existing = self.store.training_pairs(user).await?;
        let held = existing.len();
        let done_before: HashSet<i64> = existing
            .iter()
            .filter(|p| p.source == PairSource::Generated)
            .map(|p| p.memory_id)
            .collect();
        let mut known: HashMap<i64, HashSet<String>> = HashMap::new();
        for p in &existing {
            known
                .entry(p.memory_id)
                .or_default()
                .insert(dm::normalized(&p.question));
        }
        let memories = self.all_memories(user).await?;
        let total = memories.len() as u64;
        let mut report = GenerateReport {
            model: model.name().to_owned(),
            ..GenerateReport::default()
        };
        let budget = options
            .max_pairs
            .min(dm::MAX_PAIRS_PER_USER.saturating_sub(held));
        on_progress(0, total, 0);
        let (todo, skipped): (Vec<&Memory>, Vec<&Memory>) = memories.iter().partition(|m| {
            !done_before.contains(&m.id)
                && m.content.chars().count() >= options.min_memory_chars
                && options.since.is_none_or(|t| m.created_at > t)
        });
        report.skipped = skipped.len() as u64;
        let mut done = report.skipped;
        on_progress(done, total, 0);
        let per = options.questions_per_memory;
        // A few memories at a time, their questions asked together: a local model decodes
        // them in one batch.
        for group in todo.chunks(options.concurrency.max(1)) {
            if report.pairs as usize >= budget {
                break;
            }
            let asks = group.iter().flat_map(|m| (0..per).map(move |q| (*m, q)));
            let replies = futures::future::join_all(asks.map(|(memory, q)| {
                let params = GenerationParams {
                    max_tokens: options.max_tokens,
                    // The first question is the model's most likely one; others are sampled.
                    temperature: if q == 0 { 0.0 } else { 0.8 },
                    top_p: (q > 0).then_some(0.95),
                    seed: Some((memory.id as u64).wrapping_mul(31).wrapping_add(q as u64)),
                    stop: vec!["\n".into()],
                    cache_owner: Some(user.to_owned()),
                    ..GenerationParams::default()
                };
                let model = model.clone();
                async move {
                    model
                        .complete(&question_prompt(&memory.content), &params)
                        .await
                }
            }))
            .await;
            let mut replies = replies.into_iter();
            for memory in group {
                report.memories += 1;
                let seen = known.entry(memory.id).or_default();
                let mut new = Vec::new();
                for reply in replies.by_ref().take(per) {
                    let reply = reply?;
                    match dm::parse_question(&reply.text, &memory.content) {
                        Some(question)
                            if (report.pairs as usize + new.len()) < budget
                                && seen.insert(dm::normalized(&question)) =>
                        {
                            new.push(NewTrainingPair {
                                memory_id: memory.id,
                                question,
                                source: PairSource::Generated,
                                model: Some(model.name().to_owned()),
                                prompt_version: Some(dm::PROMPT_VERSION),
                            })
                        }
                        Some(_) if (report.pairs as usize + new.len()) >= budget => {}
                        _ => report.rejected += 1,
                    }
                }
                // Stored memory by memory: a run that stops loses at most a group's questions.
                report.pairs += self.store.add_training_pairs(user, new).await?;
                done += 1;
                on_progress(done, total, report.pairs);
            }
            if options.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(options.pause_ms)).await;
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        report.pairs_per_second = report.pairs as f64 / report.seconds.max(1e-9);
        Ok(report)
    }

    /// Every memory of the user but their keys, by the store's listing order.
    pub(super) async fn all_memories(&self, user: &str) -> Result<Vec<Memory>> {
        let filter = super::key_search::not_keys();
        let mut out = Vec::new();
        let mut page = PageRequest {
            first: LIST_PAGE,
            after: None,
        };
        loop {
            let got = self.store.list_memories(user, &filter, &page).await?;
            out.extend(got.items);
            if out.len() > dm::MAX_TRAIN_MEMORIES {
                return Err(Error::invalid(format!(
                    "deep memory works with at most {} memories per user",
                    dm::MAX_TRAIN_MEMORIES
                )));
            }
            match got.next_cursor {
                Some(c) => page.after = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// The user's memories with vectors of the model their searches use, and their pairs
    /// embedded as questions (held-out ones apart).
    async fn deep_memory_data(
        &self,
        user: &str,
        on_progress: &mut (dyn FnMut(TrainProgress) + Send),
    ) -> Result<(MemorySet, Vec<(i64, Vec<f32>)>, Vec<(i64, Vec<f32>)>)> {
        let model = self.embedder.model_id().to_owned();
        let ids: Vec<i64> = self
            .all_memories(user)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect();
        let mut vectors = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LIST_PAGE) {
            let got = self.store.vectors(user, &model, chunk).await?;
            vectors.extend(
                chunk
                    .iter()
                    .filter_map(|id| got.get(id).map(|v| (*id, v.clone()))),
            );
        }
        let memories = MemorySet::new(vectors)?;
        let pairs: Vec<TrainingPair> = self
            .store
            .training_pairs(user)
            .await?
            .into_iter()
            .filter(|p| memories.position(p.memory_id).is_some())
            .collect();
        let total = pairs.len();
        let mut embedded = Vec::with_capacity(total);
        for chunk in pairs.chunks(MAX_EMBED_INPUTS) {
            let v = self
                .embedder
                .embed(chunk.iter().map(|p| p.question.clone()).collect())
                .await?;
            embedded.extend(chunk.iter().map(|p| p.memory_id).zip(v));
            on_progress(TrainProgress::Embedding {
                done: embedded.len(),
                total,
            });
        }
        let (held, train): (Vec<_>, Vec<_>) =
            embedded.into_iter().partition(|(id, _)| dm::held_out(*id));
        Ok((memories, train, held))
    }

    /// Trains the user's query adapter on their pairs (with the embedding model their searches
    /// use) and judges it on the held-out pairs. It replaces the previous one; it stays on
    /// only if the previous one was on and the new one helps ([`Evaluation::helps`]).
    pub async fn deep_memory_train(
        &self,
        user: &str,
        options: &TrainOptions,
        on_progress: &mut (dyn FnMut(TrainProgress) + Send),
    ) -> Result<StoredAdapter> {
        self.limits().check_user_id(user)?;
        options.validate()?;
        let this = self.scoped(user).await?;
        let started = Instant::now();
        let began = Utc::now();
        let (memories, train, held) = this.deep_memory_data(user, on_progress).await?;
        let memories = Arc::new(memories);
        let questions = |rows: &[(i64, Vec<f32>)], pick: &[usize]| Questions {
            vectors: pick.iter().map(|&i| rows[i].1.clone()).collect(),
            answers: pick
                .iter()
                .filter_map(|&i| memories.position(rows[i].0))
                .collect(),
        };
        let (train_idx, val_idx) =
            dm::split_validation(&train.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        let train_q = questions(&train, &train_idx);
        let val_q = questions(&train, &val_idx);
        let held_q = questions(&held, &(0..held.len()).collect::<Vec<_>>());
        let (train_n, val_n) = (train_q.vectors.len(), val_q.vectors.len());
        // Training is CPU work: on a blocking thread, its epochs reported through a channel.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = {
            let (memories, options) = (memories.clone(), options.clone());
            tokio::task::spawn_blocking(move || {
                let (adapter, loss, best) =
                    dm::train(&train_q, &val_q, &memories, &options, &mut |e, n, l| {
                        let _ = tx.send((e, n, l));
                    })?;
                let evaluation = Evaluation {
                    before: dm::evaluate(None, &held_q, &memories)?,
                    after: dm::evaluate(Some(&adapter), &held_q, &memories)?,
                    pairs: held_q.vectors.len(),
                };
                Ok::<_, Error>((adapter, loss, best, evaluation))
            })
        };
        while let Some((epoch, epochs, loss)) = rx.recv().await {
            on_progress(TrainProgress::Epoch {
                epoch,
                epochs,
                loss,
            });
        }
        let (adapter, loss, best_epoch, evaluation) = task
            .await
            .map_err(|e| Error::Internal(format!("training task: {e}")))??;
        on_progress(TrainProgress::Evaluated(evaluation.clone()));
        let was_on = self
            .store
            .get_adapter(user)
            .await?
            .is_some_and(|a| a.enabled);
        let report = TrainingReport {
            train_pairs: train_n,
            validation_pairs: val_n,
            memories: memories.len(),
            epochs: loss.len(),
            best_epoch,
            loss,
            rank: options.rank,
            seconds: started.elapsed().as_secs_f64(),
            evaluation,
        };
        let stored = self
            .store
            .put_adapter(
                user,
                StoredAdapter {
                    embedding_model: this.embedder.model_id().to_owned(),
                    version: 0,
                    enabled: was_on && report.evaluation.helps(),
                    memories: self.learnable_memories(user).await?,
                    pairs: (train_n + val_n + report.evaluation.pairs) as u64,
                    trained_at: began,
                    updated_at: Utc::now(),
                    adapter,
                    report,
                },
            )
            .await?;
        self.adapter_changed(user).await;
        Ok(stored)
    }

    /// Judges the user's adapter again on the held-out pairs as they are now (pairs added
    /// since training count).
    pub async fn deep_memory_evaluate(&self, user: &str) -> Result<Evaluation> {
        self.limits().check_user_id(user)?;
        let stored = self.trained_adapter(user).await?;
        let this = self.scoped(user).await?;
        this.check_model(&stored)?;
        let (memories, _, held) = this.deep_memory_data(user, &mut |_| {}).await?;
        let held_q = Questions {
            answers: held
                .iter()
                .filter_map(|(id, _)| memories.position(*id))
                .collect(),
            vectors: held.into_iter().map(|(_, v)| v).collect(),
        };
        tokio::task::spawn_blocking(move || {
            Ok(Evaluation {
                before: dm::evaluate(None, &held_q, &memories)?,
                after: dm::evaluate(Some(&stored.adapter), &held_q, &memories)?,
                pairs: held_q.vectors.len(),
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("evaluation task: {e}")))?
    }

    async fn trained_adapter(&self, user: &str) -> Result<StoredAdapter> {
        self.store.get_adapter(user).await?.ok_or_else(|| {
            Error::invalid(
                "no deep memory adapter has been trained for this user: generate or add pairs, \
                 then train",
            )
        })
    }

    fn check_model(&self, stored: &StoredAdapter) -> Result<()> {
        let model = self.embedder.model_id();
        if stored.embedding_model != model {
            return Err(Error::invalid(format!(
                "the adapter was trained for the embedding model {}, searches use {model}: \
                 train it again",
                stored.embedding_model
            )));
        }
        Ok(())
    }

    /// Turns the user's adapter on: refused, with the figures, when none was trained, when
    /// it was trained for another embedding model, or when it does not help on the held-out
    /// pairs.
    pub async fn deep_memory_enable(&self, user: &str) -> Result<DeepMemoryStatus> {
        self.limits().check_user_id(user)?;
        let stored = self.trained_adapter(user).await?;
        self.scoped(user).await?.check_model(&stored)?;
        let e = &stored.report.evaluation;
        if !e.helps() {
            return Err(Error::invalid(format!(
                "the adapter does not help on the held-out pairs, so it stays off: recall@10 \
                 {:.3} -> {:.3}, MRR {:.3} -> {:.3} on {} pairs (at least {} needed)",
                e.before.recall_at_10,
                e.after.recall_at_10,
                e.before.mrr,
                e.after.mrr,
                e.pairs,
                dm::MIN_HELD_OUT_PAIRS
            )));
        }
        self.store.set_adapter_enabled(user, true).await?;
        self.adapter_changed(user).await;
        self.deep_memory_status(user).await
    }

    /// Turns the user's adapter off, at once (on other replicas too).
    pub async fn deep_memory_disable(&self, user: &str) -> Result<DeepMemoryStatus> {
        self.limits().check_user_id(user)?;
        self.store.set_adapter_enabled(user, false).await?;
        self.adapter_changed(user).await;
        self.deep_memory_status(user).await
    }

    /// How many memories an adapter learns from: the current ones, keys left out (training
    /// reads those only). Retraining is counted in them: a key job writing several keys per
    /// message, or a re-keying of everything, does not make it due.
    async fn learnable_memories(&self, user: &str) -> Result<u64> {
        self.store
            .count_memories_after(user, &super::key_search::not_keys(), None)
            .await
    }

    /// Where the user's deep memory stands.
    pub async fn deep_memory_status(&self, user: &str) -> Result<DeepMemoryStatus> {
        self.limits().check_user_id(user)?;
        let pairs = self.store.training_pairs(user).await?;
        let memories = self.learnable_memories(user).await?;
        let mut status = DeepMemoryStatus {
            pairs: pairs.len() as u64,
            generated_pairs: pairs
                .iter()
                .filter(|p| p.source == PairSource::Generated)
                .count() as u64,
            held_out_pairs: pairs.iter().filter(|p| dm::held_out(p.memory_id)).count() as u64,
            memories_with_pairs: pairs
                .iter()
                .map(|p| p.memory_id)
                .collect::<HashSet<_>>()
                .len() as u64,
            memories,
            ..DeepMemoryStatus::default()
        };
        if let Some(a) = self.store.get_adapter(user).await? {
            let model = self.scoped(user).await?.embedder.model_id().to_owned();
            status.trained = true;
            status.version = Some(a.version);
            status.enabled = a.enabled;
            status.active = a.enabled && a.embedding_model == model;
            if a.enabled && !status.active {
                status.inactive_reason = Some(format!(
                    "trained for the embedding model {}, searches use {model}: train it again",
                    a.embedding_model
                ));
            }
            status.embedding_model = Some(a.embedding_model);
            status.trained_at = Some(a.trained_at);
            status.new_memories = memories.saturating_sub(a.memories);
            status.report = Some(a.report);
        }
        Ok(status)
    }

    /// Whether `user`'s adapter is on and they have at least `threshold` memories more than
    /// when it was trained (one user of [`Self::deep_memory_due`]).
    pub async fn deep_memory_is_due(&self, user: &str, threshold: u64) -> Result<bool> {
        self.limits().check_user_id(user)?;
        Ok(match self.store.get_adapter(user).await? {
            Some(a) if a.enabled => self.learnable_memories(user).await? >= a.memories + threshold,
            _ => false,
        })
    }

    /// Users whose adapter is on and who have at least `threshold` memories more than when it
    /// was trained: due for retraining.
    pub async fn deep_memory_due(&self, threshold: u64) -> Result<Vec<String>> {
        let mut due = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .enabled_adapters(after.as_deref(), LIST_PAGE)
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(due);
            };
            after = Some(last.clone());
            for (user, trained_with) in page {
                if self.learnable_memories(&user).await? >= trained_with + threshold {
                    due.push(user);
                }
            }
        }
    }

    /// The adapter changed: searches read it again, here and (through the cache
    /// invalidation, sent before this returns) on the other replicas: an operator turning a
    /// bad adapter off from the command line must not wait for their caches to age.
    async fn adapter_changed(&self, user: &str) {
        if let Ok(mut cache) = self.adapters.lock() {
            cache.remove(user);
        }
        self.changed_now(user).await;
    }

    /// The query vector through the user's adapter, when they have one turned on for the
    /// embedding model of this engine.
    pub(super) async fn adapt_query(&self, user: &str, vector: Vec<f32>) -> Result<Vec<f32>> {
        let generation = self.cache.generation(user);
        let cached = self.adapters.lock().ok().and_then(|c| c.get(user).cloned());
        let adapter = match cached {
            Some(c) if c.generation == generation && c.loaded.elapsed() < ADAPTER_TTL => c.adapter,
            _ => {
                let adapter = self
                    .store
                    .get_adapter(user)
                    .await?
                    .filter(|a| a.enabled)
                    .map(|a| Arc::new((a.embedding_model, a.adapter)));
                if let Ok(mut cache) = self.adapters.lock() {
                    if cache.len() >= ADAPTER_CACHE {
                        cache.clear();
                    }
                    cache.insert(
                        user.to_owned(),
                        CachedAdapter {
                            generation,
                            loaded: Instant::now(),
                            adapter: adapter.clone(),
                        },
                    );
                }
                adapter
            }
        };
        match adapter {
            Some(a) if a.0 == self.embedder.model_id() && a.1.dims() == vector.len() => {
                a.1.apply(&vector)
            }
            _ => Ok(vector),
        }
    }
}

/// The prompt that asks the chat model for one question the memory answers (version
/// [`dm::PROMPT_VERSION`]).
fn question_prompt(memory: &str) -> Vec<ChatTurn> {
    vec![
        ChatTurn {
            role: crate::types::Role::System,
            content: "You write search questions. Given a note from a person's memory, write \
                      one short question, asked by that person, that the note answers. Reply \
                      with the question only."
                .into(),
        },
        ChatTurn {
            role: crate::types::Role::User,
            content: format!("Note: {memory}\nQuestion:"),
        },
    ]
}
