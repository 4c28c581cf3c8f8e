//! Re-embedding after a change of embedding model: every memory of every user gets a vector
//! of the configured model, in throttled batches; each user switches over atomically once all
//! of theirs have one (their searches used the previous model until then), and their old
//! vectors are dropped. Resumable: what has a vector of the new model is not embedded again.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::Error;
use crate::types::Embedding;

/// Users read per page while listing them.
const USER_PAGE: usize = 500;
/// Attempts to switch a user whose memories keep arriving.
const SWITCH_ATTEMPTS: usize = 5;

/// How [`Engine::reembed`] paces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReembedOptions {
    /// Memories embedded per batch.
    pub batch: usize,
    /// Pause after each batch, to leave the CPU (or GPU) to live traffic.
    pub pause: Duration,
    /// After switching, wait this long and look again for memories written with the old
    /// model by requests that were in flight during the switch.
    pub grace: Duration,
}

impl Default for ReembedOptions {
    fn default() -> Self {
        Self {
            batch: 64,
            pause: Duration::from_millis(50),
            grace: Duration::from_secs(2),
        }
    }
}

/// What [`Engine::reembed`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReembedReport {
    /// The model every switched user now searches with.
    pub model: String,
    /// Memories given a vector of it.
    pub embedded: u64,
    /// Users switched to it in this run.
    pub users_switched: u64,
    /// Users already on it.
    pub users_already: u64,
    /// How long it took.
    pub seconds: f64,
}

impl Engine {
    /// Gives every memory of every user a vector of the configured embedding model and
    /// switches each user to it (see the module). `on_progress(done, total)` counts memories.
    pub async fn reembed(
        &self,
        options: &ReembedOptions,
        on_progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<ReembedReport> {
        let started = Instant::now();
        let model = self.embedder.model_id().to_owned();
        let batch = options.batch.clamp(1, crate::engine::MAX_EMBED_INPUTS);
        let mut users = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.user_ids(after.as_deref(), USER_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.clone());
            users.extend(page);
        }
        let mut report = ReembedReport {
            model: model.clone(),
            ..ReembedReport::default()
        };
        let mut todo = Vec::new();
        let mut total = 0u64;
        for user in users {
            let (_, missing) = self.store.missing_embeddings(&user, &model, 0).await?;
            let on_model = self.store.embedding_model(&user).await?.as_deref() == Some(&model);
            if on_model && missing == 0 {
                report.users_already += 1;
            } else {
                total += missing;
                todo.push(user);
            }
        }
        on_progress(0, total);
        let mut switched = Vec::new();
        for user in &todo {
            let mut attempts = 0;
            loop {
                report.embedded += self
                    .fill(
                        user,
                        &model,
                        batch,
                        options.pause,
                        &mut |n| on_progress(n, total.max(n)),
                        report.embedded,
                    )
                    .await?;
                if self.store.switch_embedding_model(user, &model).await? {
                    self.changed(user);
                    switched.push(user.clone());
                    break;
                }
                if self.store.get_user(user).await?.is_none() {
                    // Their data was deleted during the run: nothing is left to switch.
                    break;
                }
                attempts += 1;
                if attempts >= SWITCH_ATTEMPTS {
                    return Err(Error::unavailable(format!(
                        "user {user:?} kept receiving memories without a {model} vector; run \
                         the re-embedding again"
                    )));
                }
            }
        }
        report.users_switched = switched.len() as u64;
        if !switched.is_empty() {
            // Writes that embedded with the old model just before a switch commit after it.
            tokio::time::sleep(options.grace).await;
            for user in &switched {
                report.embedded += self
                    .fill(user, &model, batch, options.pause, &mut |_| {}, 0)
                    .await?;
                self.store.switch_embedding_model(user, &model).await?;
                self.changed(user);
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Embeds the user's memories that lack a `model` vector, batch by batch; how many.
    async fn fill(
        &self,
        user: &str,
        model: &str,
        batch: usize,
        pause: Duration,
        on_done: &mut (dyn FnMut(u64) + Send),
        done_before: u64,
    ) -> Result<u64> {
        let mut done = 0u64;
        loop {
            let (rows, _) = self.store.missing_embeddings(user, model, batch).await?;
            if rows.is_empty() {
                return Ok(done);
            }
            let (ids, texts): (Vec<i64>, Vec<String>) = rows.into_iter().unzip();
            // A piece cut for a model with a longer window is embedded whole all the same.
            let vectors = self.embedder.embed_whole(texts).await?;
            let n = ids.len() as u64;
            let asked: std::collections::HashSet<i64> = ids.iter().copied().collect();
            let written = self
                .store
                .add_embeddings(
                    user,
                    ids.into_iter()
                        .zip(vectors)
                        .map(|(id, vector)| {
                            (
                                id,
                                Embedding {
                                    model: model.to_owned(),
                                    vector,
                                },
                            )
                        })
                        .collect(),
                )
                .await?;
            if written == 0 {
                // Deleted meanwhile (those memories, or the user's whole data): the rest, if
                // any, is embedded next. Memories still there without a vector are a fault.
                let (left, _) = self.store.missing_embeddings(user, model, batch).await?;
                if left.iter().any(|(id, _)| asked.contains(id)) {
                    return Err(Error::Internal(format!(
                        "re-embedding {user:?}: no vector of {n} could be written"
                    )));
                }
                continue;
            }
            done += n;
            on_done(done_before + done);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}
