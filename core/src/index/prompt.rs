//! The prompt for the next reply from an in-memory index: the memories retrieved for the
//! message and the conversation the caller holds, within the chat model's token budget, by
//! the engine's rules ([`crate::context`]).
use chrono::{DateTime, Utc};

use super::MemoryIndex;
use crate::context::{
    AssembledContext, ChatTurn, ContextBudget, ContextInput, PartReport, PersonaChunk,
    TokenCounter, assemble, conversation_history, fit_persona,
};
use crate::error::Result;
use crate::persona;
use crate::retrieval::RetrieveOptions;
use crate::types::Retrieved;

/// What [`MemoryIndex::build_prompt`] takes besides the message.
#[derive(Debug, Clone, Default)]
pub struct PromptOptions {
    /// The system prompt; else the conversation's system turns, joined.
    pub system: Option<String>,
    /// Who the assistant is: whole when it fits its share of the budget, else its opening
    /// and then its chunks in the card's order, as many as fit (the index has no embedder to
    /// rank them by the message, as the engine does).
    pub persona: Option<String>,
    /// The conversation so far, oldest first.
    pub conversation: Vec<ChatTurn>,
    /// Token budget and shares.
    pub budget: ContextBudget,
    /// How memories are retrieved for the message.
    pub retrieve: RetrieveOptions,
}

impl MemoryIndex {
    /// The prompt for replying to `message` (whose vector is `message_vector`) as `user`:
    /// system prompt and persona, the user's memories retrieved for the message, and the
    /// conversation, counted by the chat model's tokenizer `counter`; also the memories
    /// retrieved (best first; the report says which fitted).
    pub fn build_prompt(
        &self,
        user: &str,
        message: &str,
        message_vector: &[f32],
        options: &PromptOptions,
        counter: &dyn TokenCounter,
        now: DateTime<Utc>,
    ) -> Result<(AssembledContext, Vec<Retrieved>)> {
        options.budget.validate()?;
        self.limits.check_user_id(user)?;
        self.limits.check_content(message)?;
        if let Some(p) = &options.persona {
            self.limits.check_persona("persona", p)?;
        }
        let (system_turns, history) =
            conversation_history(&options.conversation, "", &self.limits, now)?;
        let system = options.system.clone().or(system_turns);
        let budget = &options.budget;
        let total = budget.context_window - budget.response_reserve;
        let persona_budget = (total as f64 * budget.persona_share as f64) as usize;
        let mut persona_report = PartReport {
            budget: persona_budget,
            ..PartReport::default()
        };
        let persona = match &options.persona {
            Some(card) if counter.count(card) > persona_budget => {
                let pieces = persona::chunks(card);
                let chunks: Vec<PersonaChunk<'_>> = pieces
                    .iter()
                    .enumerate()
                    .map(|(i, text)| PersonaChunk {
                        id: -(i as i64) - 1,
                        text,
                        score: 0.0,
                    })
                    .collect();
                let (text, report) = fit_persona(&chunks, counter, persona_budget);
                persona_report = report;
                Some(text)
            }
            Some(card) => {
                persona_report.tokens = counter.count(card);
                Some(card.clone())
            }
            None => None,
        };
        let memories = self.search(user, message, message_vector, &options.retrieve, now)?;
        let mut assembled = assemble(
            &ContextInput {
                system: system.as_deref(),
                persona: persona.as_deref(),
                memories: &memories,
                summaries: &[],
                history: &history,
                message,
            },
            counter,
            budget,
        )?;
        assembled.report.persona = persona_report;
        Ok((assembled, memories))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::context::ApproxCounter;
    use crate::error::ErrorKind;
    use crate::retrieval::SearchMode;
    use crate::types::Role;

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, day, 12, 0, 0).unwrap()
    }

    fn index() -> MemoryIndex {
        let mut index = MemoryIndex::new();
        let facts = [
            "My cat is called Biscuit",
            "I work as a nurse in Porto",
            "My sister lives in Berlin",
        ];
        for (i, text) in facts.iter().enumerate() {
            let mut v = vec![0.0; 3];
            v[i] = 1.0;
            index.add("me", i as i64 + 1, text, v, t(1)).unwrap();
        }
        index
            .add(
                "other",
                9,
                "My cat is called Shadow",
                vec![1.0, 0.0, 0.0],
                t(1),
            )
            .unwrap();
        index
    }

    fn turn(role: Role, content: &str) -> ChatTurn {
        ChatTurn {
            role,
            content: content.into(),
        }
    }

    #[test]
    fn the_prompt_holds_the_users_memories_and_the_conversation_in_order() {
        let options = PromptOptions {
            conversation: vec![
                turn(Role::System, "You are a kind assistant."),
                turn(Role::User, "Hi!"),
                turn(Role::Assistant, "Hello, how can I help?"),
            ],
            retrieve: RetrieveOptions::for_mode(SearchMode::Hybrid, 2),
            ..PromptOptions::default()
        };
        let (prompt, memories) = index()
            .build_prompt(
                "me",
                "What is my cat called?",
                &[1.0, 0.0, 0.0],
                &options,
                &ApproxCounter,
                t(2),
            )
            .unwrap();
        assert_eq!(memories[0].memory.content, "My cat is called Biscuit");
        let roles: Vec<Role> = prompt.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::User]
        );
        let system = &prompt.messages[0].content;
        assert!(system.starts_with("You are a kind assistant."), "{system}");
        assert!(system.contains("My cat is called Biscuit"), "{system}");
        assert!(
            !system.contains("Shadow"),
            "another user's memory: {system}"
        );
        assert_eq!(prompt.messages[3].content, "What is my cat called?");
        assert_eq!(prompt.report.memories.included[0], 1);
        assert!(prompt.report.used <= prompt.report.budget);
    }

    #[test]
    fn a_long_persona_is_cut_to_its_share_and_a_long_message_refused() {
        let card = (0..80)
            .map(|i| format!("Trait number {i} of the assistant."))
            .collect::<Vec<_>>()
            .join(" ");
        let options = PromptOptions {
            persona: Some(card.clone()),
            budget: ContextBudget {
                context_window: 1000,
                response_reserve: 100,
                ..ContextBudget::default()
            },
            retrieve: RetrieveOptions::for_mode(SearchMode::Vector, 3),
            ..PromptOptions::default()
        };
        let (prompt, _) = index()
            .build_prompt(
                "me",
                "cat?",
                &[1.0, 0.0, 0.0],
                &options,
                &ApproxCounter,
                t(2),
            )
            .unwrap();
        let report = &prompt.report;
        assert!(report.used <= report.budget, "{report:?}");
        assert!(report.persona.tokens <= report.persona.budget);
        assert!(!report.persona.dropped.is_empty(), "the card was cut");
        let system = &prompt.messages[0].content;
        assert!(system.starts_with("Trait number 0"), "{system}");

        // The message alone over the window is a clear error.
        let long = "word ".repeat(1000);
        let err = index()
            .build_prompt(
                "me",
                &long,
                &[1.0, 0.0, 0.0],
                &options,
                &ApproxCounter,
                t(2),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
