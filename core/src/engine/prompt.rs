//! The prompt for the next reply: persona, summaries, retrieved memories and recent history
//! within the chat model's token budget.
use super::*;
use crate::context::{AssembledContext, ContextInput, TokenCounter, assemble};
use crate::error::Error;
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
        let persona = match &options.persona {
            Some(p) => Some(p.clone()),
            None => self
                .store
                .get_session(user, session)
                .await?
                .and_then(|s| s.persona),
        };
        let mut system = options.system.clone();
        let (summaries, history) = match &options.conversation {
            None => {
                self.unsummarized(user, session, options.max_history)
                    .await?
            }
            Some(turns) => {
                let mut history = Vec::with_capacity(turns.len());
                let mut system_turns = Vec::new();
                for (i, t) in turns.iter().enumerate() {
                    limits.check_content(&t.content).map_err(|e| {
                        Error::invalid(format!("conversation message {}: {e}", i + 1))
                    })?;
                    if t.role == Role::System {
                        system_turns.push(t.content.as_str());
                        continue;
                    }
                    history.push(Message {
                        // Not stored: ids below zero never match a stored message.
                        id: -(i as i64) - 1,
                        session: session.to_owned(),
                        role: t.role,
                        content: t.content.clone(),
                        tags: Vec::new(),
                        metadata: Value::Null,
                        created_at: Utc::now(),
                    });
                }
                if system.is_none() && !system_turns.is_empty() {
                    system = Some(system_turns.join("\n\n"));
                }
                (Vec::new(), history)
            }
        };
        let memories = self.retrieve(user, message, &options.retrieve).await?;
        let assembled = assemble(
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
        Ok((assembled, memories))
    }
}
