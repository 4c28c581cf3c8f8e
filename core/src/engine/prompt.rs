//! The prompt for the next reply: persona, summaries, retrieved memories and recent history
//! within the chat model's token budget.
use super::*;
use crate::context::{
    AssembledContext, ContextInput, PartReport, PersonaChunk, TokenCounter, assemble,
    conversation_history, fit_persona,
};
use crate::persona::{self, MAX_PERSONA_CHUNKS, PERSONA_CHUNK_KEY};
use crate::types::{Message, Retrieved, Role, Summary};

impl Engine {
    /// The session's summaries and its unsummarised messages: those after the session's
    /// `summarized_through`, the newest `max` at most, oldest first. Reads only that tail,
    /// however long the session is.
    pub(super) async fn unsummarized(
        &self,
        user: &str,
        session: &str,
        max: usize,
    ) -> Result<(Vec<Summary>, Vec<Message>)> {
        let Some(s) = self.store.get_session(user, session).await? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let summaries = self.store.list_summaries(user, session).await?;
        let max = max.min(self.store.limits().max_page_size);
        let history = if max == 0 {
            Vec::new()
        } else {
            self.store
                .messages_after(user, session, s.summarized_through.unwrap_or(0), max, true)
                .await?
        };
        Ok((summaries, history))
    }

    /// The session's last message when it is the user's `message` with nothing after it: a
    /// turn whose answer failed or was cut off, or a message the caller stored before asking
    /// for its prompt. A retried chat turn reuses it rather than storing it again.
    pub(crate) async fn unanswered(
        &self,
        user: &str,
        session: &str,
        message: &str,
    ) -> Result<Option<Message>> {
        let last = self.store.messages_after(user, session, 0, 1, true).await?;
        Ok(last.into_iter().next().filter(|m| is_turn(m, message)))
    }

    /// The prompt for replying to `message` in `session`: system prompt and persona, the
    /// session's summaries, memories retrieved for the message, and recent history, within
    /// the token budget of the chat model whose tokenizer `counter` is. The message itself is
    /// not stored here.
    pub async fn build_context(
        &self,
        user: &str,
        session: &str,
        message: &str,
        counter: &dyn TokenCounter,
        options: &ContextOptions,
    ) -> Result<AssembledContext> {
        Ok(self
            .context_with_memories(user, session, message, counter, options)
            .await?
            .0)
    }

    /// [`Engine::build_context`], also returning the memories retrieved for the message
    /// (best first; the report says which of them fitted).
    #[tracing::instrument(name = "context", level = "info", skip_all)]
    pub async fn context_with_memories(
        &self,
        user: &str,
        session: &str,
        message: &str,
        counter: &dyn TokenCounter,
        options: &ContextOptions,
    ) -> Result<(AssembledContext, Vec<Retrieved>)> {
        options.budget.validate()?;
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        limits.check_session_id(session)?;
        limits.check_content(message)?;
        let (persona, stored) = match &options.persona {
            Some(p) => (Some(p.clone()), false),
            None => (
                self.store
                    .get_session(user, session)
                    .await?
                    .and_then(|s| s.persona),
                true,
            ),
        };
        // A card over its share comes as its most relevant chunks.
        let total = options.budget.context_window - options.budget.response_reserve;
        let persona_budget = (total as f64 * options.budget.persona_share as f64) as usize;
        let mut persona_report = PartReport {
            budget: persona_budget,
            ..PartReport::default()
        };
        let persona = match persona {
            Some(card) if counter.count(&card) > persona_budget => {
                let (text, report) = self
                    .persona_excerpt(
                        user,
                        session,
                        &card,
                        stored,
                        message,
                        counter,
                        persona_budget,
                    )
                    .await?;
                persona_report = report;
                Some(text)
            }
            Some(card) => {
                persona_report.tokens = counter.count(&card);
                Some(card)
            }
            None => None,
        };
        let mut system = options.system.clone();
        let (summaries, mut history) = match &options.conversation {
            None => {
                self.unsummarized(user, session, options.max_history)
                    .await?
            }
            Some(turns) => {
                let (system_turns, history) =
                    conversation_history(turns, session, limits, Utc::now())?;
                if system.is_none() {
                    system = system_turns;
                }
                (Vec::new(), history)
            }
        };
        // The message being answered, when it is stored already (see
        // [`Engine::unanswered`]), is shown once: as the message.
        if history.last().is_some_and(|m| is_turn(m, message)) {
            history.pop();
        }
        // The persona has its own part: its chunks are not memories about the user.
        let mut retrieve = options.retrieve.clone();
        if retrieve.filter.kinds.is_empty() {
            retrieve.filter.kinds =
                vec![MemoryKind::Message, MemoryKind::Fact, MemoryKind::Summary];
        }
        let memories = self.retrieve(user, message, &retrieve).await?;
        let mut assembled = assemble(
            &ContextInput {
                system: system.as_deref(),
                persona: persona.as_deref(),
                memories: &memories,
                summaries: &summaries,
                history: &history,
                message,
            },
            counter,
            &options.budget,
        )?;
        assembled.report.persona = persona_report;
        Ok((assembled, memories))
    }

    /// The chunks of a persona card that fit `budget` tokens for `message`: scored by the
    /// session's stored persona memories when they hold this card (`stored`: the card is the
    /// session's), or else by embedding the card's chunks now.
    #[allow(clippy::too_many_arguments)]
    async fn persona_excerpt(
        &self,
        user: &str,
        session: &str,
        card: &str,
        stored: bool,
        message: &str,
        counter: &dyn TokenCounter,
        budget: usize,
    ) -> Result<(String, PartReport)> {
        let pieces = persona::chunks(card);
        let mut scored: Option<Vec<(i64, f32)>> = None;
        if stored {
            let hits = self
                .search(
                    user,
                    message,
                    &SearchOptions {
                        top_k: MAX_PERSONA_CHUNKS,
                        min_score: None,
                        filter: Filter {
                            session: Some(session.to_owned()),
                            kinds: vec![MemoryKind::Persona],
                            ..Filter::default()
                        },
                        cursor: None,
                    },
                )
                .await?
                .hits;
            // Only when they are this card's chunks, each once.
            let mut by_position: Vec<Option<(i64, f32)>> = vec![None; pieces.len()];
            let mut whole = hits.len() == pieces.len();
            for h in &hits {
                let at = h.memory.metadata[PERSONA_CHUNK_KEY]
                    .as_u64()
                    .map(|i| i as usize);
                match at.filter(|&i| i < pieces.len() && pieces[i] == h.memory.content) {
                    Some(i) if by_position[i].is_none() => {
                        by_position[i] = Some((h.memory.id, h.score))
                    }
                    _ => whole = false,
                }
            }
            if whole {
                scored = by_position.into_iter().collect();
            }
        }
        let scored = match scored {
            Some(s) => s,
            None => {
                let this = self.scoped(user).await?;
                let mut texts = Vec::with_capacity(pieces.len() + 1);
                texts.push(message.to_owned());
                texts.extend(pieces.iter().cloned());
                let vectors = this.embedder.embed(texts).await?;
                let (query, chunks) = vectors.split_first().expect("the message's vector");
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (-(i as i64) - 1, crate::embed::cosine(query, v)))
                    .collect()
            }
        };
        let chunks: Vec<PersonaChunk<'_>> = pieces
            .iter()
            .zip(&scored)
            .map(|(text, &(id, score))| PersonaChunk { id, text, score })
            .collect();
        Ok(fit_persona(&chunks, counter, budget))
    }
}

/// Whether `m` is the user's turn `message`.
fn is_turn(m: &Message, message: &str) -> bool {
    m.role == Role::User && m.content == message
}
