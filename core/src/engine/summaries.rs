//! Rolling summaries: a session's older history folded into summaries, off the reply path.
//!
//! The session's `summarized_through` is the watermark: messages after it are the
//! unsummarised history, read without scanning the session. A fold reads a bounded run of
//! them (what fits the summarizer's input), and its summary moves the watermark by compare and
//! set, so two replicas never store the same span twice. A long backlog is folded in several
//! steps, each within the model's window. Failures are logged and counted.
use std::sync::atomic::AtomicU64;

use super::*;
use crate::context::{Summarizer, SummaryPolicy};
use crate::error::Error;
use crate::types::{Message, NewSummary, Summary};

/// How rolling summaries went since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryStats {
    /// Summaries stored.
    pub written: u64,
    /// Summarisations that failed (the model or the store erred).
    pub failed: u64,
    /// Folds dropped because another writer (a replica) summarised the span first.
    pub superseded: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    written: AtomicU64,
    failed: AtomicU64,
    superseded: AtomicU64,
}

/// Folds per call at most: a backlog longer than this many windows is finished by the next
/// calls.
const MAX_FOLDS: usize = 64;

/// A summarisation under way: takes its session off the set when dropped.
struct UnderWay<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    key: (String, String),
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl Engine {
    /// Rolling summary counters.
    pub fn summary_stats(&self) -> SummaryStats {
        SummaryStats {
            written: self.summaries.written.load(Ordering::Relaxed),
            failed: self.summaries.failed.load(Ordering::Relaxed),
            superseded: self.summaries.superseded.load(Ordering::Relaxed),
        }
    }

    /// A session's summaries, oldest first.
    pub async fn summaries(&self, user: &str, session: &str) -> Result<Vec<Summary>> {
        self.store.list_summaries(user, session).await
    }

    /// Folds the session's older history into summaries when `policy` says it is due: once
    /// `trigger_messages` messages are unsummarised, all but the newest `keep_recent` are
    /// summarised (with the previous summary) and stored as summary memories, in as many
    /// steps as the summarizer's input bound needs. Returns the last summary written, or
    /// `None` when nothing was due (or another summarisation of the session is running, here
    /// or on another replica). Failures are logged and counted before they are returned.
    pub async fn summarize_if_due(
        &self,
        user: &str,
        session: &str,
        summarizer: &dyn Summarizer,
        policy: SummaryPolicy,
    ) -> Result<Option<Summary>> {
        let key = (user.to_owned(), session.to_owned());
        if !self
            .summarizing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            return Ok(None);
        }
        // However the fold ends (a panic in the summarizer, a caller that stops waiting), the
        // session is free to be summarised again.
        let _under_way = UnderWay {
            set: &self.summarizing,
            key,
        };
        let out = self.summarize_now(user, session, summarizer, policy).await;
        if let Err(e) = &out {
            self.summaries.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "rolling summary failed");
        }
        out
    }

    async fn summarize_now(
        &self,
        user: &str,
        session: &str,
        summarizer: &dyn Summarizer,
        policy: SummaryPolicy,
    ) -> Result<Option<Summary>> {
        let this = self.scoped(user).await?;
        let mut written = None;
        for fold in 0..MAX_FOLDS {
            let Some(s) = self.store.get_session(user, session).await? else {
                break;
            };
            let through = s.summarized_through.unwrap_or(0);
            let pending = self
                .store
                .count_messages_after(user, session, through)
                .await? as usize;
            let due = if fold == 0 {
                pending >= policy.trigger_messages.max(1)
            } else {
                true
            };
            if !due || pending <= policy.keep_recent {
                break;
            }
            let foldable = (pending - policy.keep_recent).min(self.store.limits().max_page_size);
            let candidates = self
                .store
                .messages_after(user, session, through, foldable, false)
                .await?;
            let summaries = self.store.list_summaries(user, session).await?;
            let (previous, messages) = fit(
                summarizer,
                summaries.last().map(|s| s.content.as_str()),
                candidates,
            );
            let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
                break;
            };
            let (first, last) = (first.id, last.id);
            let text = summarizer
                .summarize(user, previous.as_deref(), &messages)
                .await?;
            let text = text.trim();
            if text.is_empty() {
                return Err(Error::Internal(
                    "the summarizer returned an empty summary".into(),
                ));
            }
            let vector = this.embedder.embed_one_whole(text).await?;
            let stored = self
                .store
                .add_summary(
                    user,
                    NewSummary {
                        session: session.to_owned(),
                        content: text.to_owned(),
                        first_message_id: Some(first),
                        last_message_id: Some(last),
                        model: Some(summarizer.model_id().to_owned()),
                        embedding: this.embedding(vector),
                        expected_through: s.summarized_through,
                    },
                )
                .await;
            self.changed(user);
            match stored? {
                Some(summary) => {
                    self.summaries.written.fetch_add(1, Ordering::Relaxed);
                    written = Some(summary);
                }
                None => {
                    self.summaries.superseded.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("another writer summarised this span first");
                    break;
                }
            }
        }
        Ok(written)
    }

    /// [`Engine::summarize_if_due`] on its own task, off the reply path.
    pub fn spawn_summarize_if_due(
        &self,
        user: &str,
        session: &str,
        summarizer: Arc<dyn Summarizer>,
        policy: SummaryPolicy,
    ) -> tokio::task::JoinHandle<Result<Option<Summary>>> {
        let engine = self.clone();
        let (user, session) = (user.to_owned(), session.to_owned());
        tokio::spawn(async move {
            engine
                .summarize_if_due(&user, &session, summarizer.as_ref(), policy)
                .await
        })
    }
}

/// What one fold reads: the previous summary (cut to half the summarizer's input bound if it
/// is longer) and the oldest of `candidates` that fit with it. The first message always goes
/// in, cut to the bound when it alone is too long, so that every fold moves forward.
fn fit(
    summarizer: &dyn Summarizer,
    previous: Option<&str>,
    candidates: Vec<Message>,
) -> (Option<String>, Vec<Message>) {
    let budget = summarizer.max_input_tokens();
    let previous = previous.map(|p| cut_to_tokens(summarizer, p, budget / 2));
    let mut used = previous
        .as_deref()
        .map_or(0, |p| summarizer.count_tokens(p));
    let mut out = Vec::new();
    for mut m in candidates {
        let cost = summarizer.count_tokens(&m.content) + PER_MESSAGE_TOKENS;
        if used.saturating_add(cost) > budget {
            if out.is_empty() {
                let room = budget.saturating_sub(used + PER_MESSAGE_TOKENS).max(1);
                m.content = cut_to_tokens(summarizer, &m.content, room);
                out.push(m);
            }
            break;
        }
        used += cost;
        out.push(m);
    }
    (previous, out)
}

/// Tokens a transcript line costs besides its text (the speaker's name and punctuation).
const PER_MESSAGE_TOKENS: usize = 4;

/// The longest prefix of `text` (at a character boundary) within `tokens`.
fn cut_to_tokens(summarizer: &dyn Summarizer, text: &str, tokens: usize) -> String {
    if summarizer.count_tokens(text) <= tokens {
        return text.to_owned();
    }
    // Binary search on the character count.
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let (mut lo, mut hi) = (0usize, bounds.len() - 1);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if summarizer.count_tokens(&text[..bounds[mid]]) <= tokens {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    text[..bounds[lo]].to_owned()
}
