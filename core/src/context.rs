//! Context assembly: the prompt for the next reply, built within the chat model's token budget
//! and counted with the model's own tokenizer.
//!
//! The budget is the context window less the response reserve. The system prompt, persona
//! and the new message are never cut (if they alone do not fit, that is an error); a persona
//! card longer than its share comes as its most relevant chunks ([`fit_persona`]). What is
//! left is shared between summaries of earlier history, retrieved memories and recent history
//! by configurable shares; a part that needs less than its share leaves the rest to recent
//! history. Recent history is taken newest first, in whole messages, and given back in
//! chronological order. The report says what went in, what was dropped, and token counts.
use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::types::{Message, Retrieved, Role, Summary};

/// Counts tokens the way the chat model does.
pub trait TokenCounter: Send + Sync {
    /// Tokens of a text (no special tokens added).
    fn count(&self, text: &str) -> usize;
}

impl TokenCounter for tokenizers::Tokenizer {
    fn count(&self, text: &str) -> usize {
        self.encode(text, false)
            .map(|e| e.get_ids().len())
            // A text the tokenizer cannot encode is counted by its bytes: an over-estimate.
            .unwrap_or(text.len())
    }
}

/// Token estimate for models whose tokenizer is not at hand (remote providers, a model in
/// the page): one token per four bytes of text, rounded up, which over-counts English slightly
/// and so keeps prompts inside the window.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApproxCounter;

impl TokenCounter for ApproxCounter {
    fn count(&self, text: &str) -> usize {
        text.len().div_ceil(4)
    }
}

/// The conversation as a caller holds it (an OpenAI-style client sends it with every request),
/// oldest first, made ready for [`assemble`]: its system turns joined into one system prompt,
/// the others as history messages that were never stored (ids below zero never match a stored
/// message). Each turn's content is checked.
pub fn conversation_history(
    turns: &[ChatTurn],
    session: &str,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<(Option<String>, Vec<Message>)> {
    let mut history = Vec::with_capacity(turns.len());
    let mut system_turns = Vec::new();
    for (i, t) in turns.iter().enumerate() {
        limits
            .check_content(&t.content)
            .map_err(|e| Error::invalid(format!("conversation message {}: {e}", i + 1)))?;
        if t.role == Role::System {
            system_turns.push(t.content.as_str());
            continue;
        }
        history.push(Message {
            id: -(i as i64) - 1,
            session: session.to_owned(),
            role: t.role,
            content: t.content.clone(),
            tags: Vec::new(),
            metadata: Value::Null,
            created_at: now,
        });
    }
    let system = (!system_turns.is_empty()).then(|| system_turns.join("\n\n"));
    Ok((system, history))
}

/// Token budget and how it is shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContextBudget {
    /// The model's context window in tokens.
    pub context_window: usize,
    /// Tokens kept free for the answer.
    pub response_reserve: usize,
    /// Share of the flexible part for retrieved memories.
    pub memory_share: f32,
    /// Share for summaries of earlier history.
    pub summary_share: f32,
    /// Share for recent history (it also gets whatever the others leave).
    pub history_share: f32,
    /// Tokens the chat template adds around each message (ChatML: `<|im_start|>`, the role,
    /// a newline, `<|im_end|>`, a newline). The prompt counts it once more for the opening of
    /// the answer (the generation prompt, a BOS token), which the model reads before it writes.
    pub per_message_overhead: usize,
    /// Share of the whole prompt budget a persona card may take: one that fits goes in
    /// whole; a longer one as its opening and its chunks most relevant to the message.
    pub persona_share: f32,
}

impl Default for ContextBudget {
    fn default() -> Self {
        Self {
            context_window: 8192,
            response_reserve: 512,
            memory_share: 0.3,
            summary_share: 0.15,
            history_share: 0.55,
            per_message_overhead: 5,
            persona_share: 0.25,
        }
    }
}

impl ContextBudget {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let shares = [self.memory_share, self.summary_share, self.history_share];
        if shares.iter().any(|s| !s.is_finite() || *s < 0.0) || shares.iter().sum::<f32>() > 1.0001
        {
            return Err(Error::invalid(
                "context shares must be non-negative and sum to at most 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.persona_share) {
            return Err(Error::invalid("the persona share must be between 0 and 1"));
        }
        if self.response_reserve >= self.context_window {
            return Err(Error::invalid(
                "the response reserve must be smaller than the context window",
            ));
        }
        Ok(())
    }
}

/// One message of the assembled prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurn {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

/// What goes into the prompt.
#[derive(Debug, Clone, Copy)]
pub struct ContextInput<'a> {
    /// The system prompt.
    pub system: Option<&'a str>,
    /// The persona (who the assistant is for this user).
    pub persona: Option<&'a str>,
    /// Retrieved memories, best first.
    pub memories: &'a [Retrieved],
    /// Summaries of earlier history, oldest first.
    pub summaries: &'a [Summary],
    /// Recent history, oldest first.
    pub history: &'a [Message],
    /// The new user message.
    pub message: &'a str,
}

/// Accounting of one part of the prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReport {
    /// Tokens the part was allowed.
    pub budget: usize,
    /// Tokens it used.
    pub tokens: usize,
    /// Ids of what went in (memory, summary or message ids).
    pub included: Vec<i64>,
    /// Ids of what did not fit (or was already in the history, for memories).
    pub dropped: Vec<i64>,
}

/// Accounting of the whole prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextReport {
    /// Context window less the response reserve.
    pub budget: usize,
    /// Tokens of the assembled prompt, template overhead included.
    pub used: usize,
    /// Tokens kept for the answer.
    pub response_reserve: usize,
    /// System prompt and persona (never cut).
    pub system_tokens: usize,
    /// The new message (never cut).
    pub message_tokens: usize,
    /// Retrieved memories.
    pub memories: PartReport,
    /// Summaries.
    pub summaries: PartReport,
    /// Recent history.
    pub history: PartReport,
    /// The persona: its chunks (memory ids; for a card not stored, minus its position plus
    /// one) when it came in part, nothing listed when it came whole.
    #[serde(default)]
    pub persona: PartReport,
}

/// One chunk of a persona card, in the card's order, scored against the new message.
#[derive(Debug, Clone, Copy)]
pub struct PersonaChunk<'a> {
    /// The persona memory's id (for a card not stored: minus its position, minus one).
    pub id: i64,
    /// The text.
    pub text: &'a str,
    /// Similarity to the message (higher is closer).
    pub score: f32,
}

/// A persona card for the prompt within `budget` tokens: the card's first chunk (its
/// opening, usually the name) and then the chunks most similar to the message, as many as
/// fit, joined in the card's order. Returns the text and what went in and what did not.
pub fn fit_persona(
    chunks: &[PersonaChunk<'_>],
    counter: &dyn TokenCounter,
    budget: usize,
) -> (String, PartReport) {
    let mut report = PartReport {
        budget,
        ..PartReport::default()
    };
    let cost: Vec<usize> = chunks.iter().map(|c| counter.count(c.text) + 1).collect();
    let mut order: Vec<usize> = (1..chunks.len()).collect();
    order.sort_by(|&a, &b| chunks[b].score.total_cmp(&chunks[a].score).then(a.cmp(&b)));
    let mut taken = vec![false; chunks.len()];
    let mut used = 0;
    for i in (!chunks.is_empty()).then_some(0).into_iter().chain(order) {
        if used + cost[i] <= budget {
            used += cost[i];
            taken[i] = true;
        }
    }
    let mut text = Vec::new();
    for (c, &t) in chunks.iter().zip(&taken) {
        if t {
            report.included.push(c.id);
            text.push(c.text);
        } else {
            report.dropped.push(c.id);
        }
    }
    report.tokens = used;
    (text.join("\n"), report)
}

/// The prompt and its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssembledContext {
    /// System message first, then history, then the new user message.
    pub messages: Vec<ChatTurn>,
    /// What went in and what it cost.
    pub report: ContextReport,
}

fn memory_line(r: &Retrieved) -> String {
    format!(
        "- ({}) {}",
        r.memory.created_at.format("%Y-%m-%d"),
        r.memory.content
    )
}

const MEMORIES_HEADING: &str = "Things you remember about this user (may be relevant):";
const SUMMARIES_HEADING: &str = "Summary of the earlier conversation:";

/// Builds the prompt; see the module documentation.
pub fn assemble(
    input: &ContextInput<'_>,
    counter: &dyn TokenCounter,
    budget: &ContextBudget,
) -> Result<AssembledContext> {
    budget.validate()?;
    let total = budget.context_window - budget.response_reserve;
    let overhead = budget.per_message_overhead;
    let base_system: String = [input.system, input.persona]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n\n");
    let system_tokens = counter.count(&base_system);
    let message_tokens = counter.count(input.message);
    // The system message, the new message and the answer's opening.
    let fixed = system_tokens + overhead + message_tokens + overhead + overhead;
    if fixed > total {
        return Err(Error::invalid(format!(
            "the system prompt, persona and message need {fixed} tokens, more than the {total} \
             the model has for its prompt ({} window, {} kept for the answer)",
            budget.context_window, budget.response_reserve
        )));
    }
    let flexible = total - fixed;
    let share = |s: f32| (flexible as f64 * s as f64).floor() as usize;
    // Joining a part to the system message costs a blank line (about two tokens).
    let sep = counter.count("\n\n").max(1);

    // Summaries: newest first within their share, shown oldest first.
    let mut summaries = PartReport {
        budget: share(budget.summary_share),
        ..PartReport::default()
    };
    let mut summary_texts = Vec::new();
    if !input.summaries.is_empty() {
        let mut used = counter.count(SUMMARIES_HEADING) + sep;
        for s in input.summaries.iter().rev() {
            let t = counter.count(&s.content) + 1;
            if used + t <= summaries.budget {
                used += t;
                summaries.included.push(s.id);
                summary_texts.push(s.content.as_str());
            } else {
                summaries.dropped.push(s.id);
            }
        }
        summaries.included.reverse();
        summary_texts.reverse();
        summaries.tokens = if summary_texts.is_empty() { 0 } else { used };
    }

    // Recent history is chosen before memories (it gets the leftovers, but memories that
    // repeat a message already in the history are dropped), so pick it with its own share
    // plus what summaries left, then give memories their share, then top history up.
    let mut memories = PartReport {
        budget: share(budget.memory_share),
        ..PartReport::default()
    };
    let mut history = PartReport {
        budget: share(budget.history_share) + summaries.budget.saturating_sub(summaries.tokens),
        ..PartReport::default()
    };
    let msg_cost = |m: &Message| counter.count(&m.content) + overhead;
    let mut chosen: Vec<usize> = Vec::new();
    let mut used = 0usize;
    let mut stopped_at = input.history.len();
    for (i, m) in input.history.iter().enumerate().rev() {
        let c = msg_cost(m);
        if used + c > history.budget {
            stopped_at = i + 1;
            break;
        }
        used += c;
        chosen.push(i);
        stopped_at = i;
    }
    let in_history: HashSet<i64> = chosen.iter().map(|&i| input.history[i].id).collect();
    // History held by the caller has no stored ids: compare the text too.
    let history_texts: HashSet<&str> = chosen
        .iter()
        .map(|&i| input.history[i].content.trim())
        .collect();

    // A summary already shown under its own heading is not shown again as a memory.
    let shown_summaries: HashSet<&str> = summary_texts.iter().map(|t| t.trim()).collect();

    let mut memory_lines = Vec::new();
    // The messages the included memories show (by id, and by text), which the history
    // top-up below must not bring in again.
    let mut shown_ids: HashSet<i64> = HashSet::new();
    let mut shown_texts: HashSet<&str> = HashSet::new();
    if !input.memories.is_empty() {
        let mut mem_used = counter.count(MEMORIES_HEADING) + sep;
        for r in input.memories {
            if r.memory
                .message_id
                .is_some_and(|id| in_history.contains(&id))
                || history_texts.contains(r.memory.content.trim())
                || r.memory
                    .summary_id
                    .is_some_and(|id| summaries.included.contains(&id))
                || shown_summaries.contains(r.memory.content.trim())
                // The message itself, stored already (a retried turn): shown as the message.
                || r.memory.content.trim() == input.message.trim()
            {
                memories.dropped.push(r.memory.id);
                continue;
            }
            let line = memory_line(r);
            let t = counter.count(&line) + 1;
            if mem_used + t <= memories.budget {
                mem_used += t;
                memories.included.push(r.memory.id);
                memory_lines.push(line);
                shown_ids.extend(r.memory.message_id);
                shown_texts.insert(r.memory.content.trim());
            } else {
                memories.dropped.push(r.memory.id);
            }
        }
        memories.tokens = if memory_lines.is_empty() { 0 } else { mem_used };
    }

    // Top up history with what memories left, continuing towards older messages (and
    // stopping, as history does, at one it cannot take: one a memory already shows).
    let extra = memories.budget.saturating_sub(memories.tokens);
    history.budget += extra;
    if stopped_at > 0 && chosen.len() < input.history.len() {
        for i in (0..stopped_at).rev() {
            let m = &input.history[i];
            let c = msg_cost(m);
            if used + c > history.budget
                || shown_ids.contains(&m.id)
                || shown_texts.contains(m.content.trim())
            {
                break;
            }
            used += c;
            chosen.push(i);
        }
    }
    chosen.sort_unstable();
    history.tokens = used;
    history.included = chosen.iter().map(|&i| input.history[i].id).collect();
    let kept: HashSet<usize> = chosen.iter().copied().collect();
    history.dropped = (0..input.history.len())
        .filter(|i| !kept.contains(i))
        .map(|i| input.history[i].id)
        .collect();

    // The prompt.
    let mut system = base_system;
    if !summary_texts.is_empty() {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(SUMMARIES_HEADING);
        for s in &summary_texts {
            system.push('\n');
            system.push_str(s);
        }
    }
    if !memory_lines.is_empty() {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(MEMORIES_HEADING);
        for l in &memory_lines {
            system.push('\n');
            system.push_str(l);
        }
    }
    let mut messages = Vec::with_capacity(chosen.len() + 2);
    let first_history = usize::from(!system.is_empty());
    if !system.is_empty() {
        messages.push(ChatTurn {
            role: Role::System,
            content: system,
        });
    }
    for &i in &chosen {
        let m = &input.history[i];
        messages.push(ChatTurn {
            role: m.role,
            content: m.content.clone(),
        });
    }
    messages.push(ChatTurn {
        role: Role::User,
        content: input.message.to_owned(),
    });
    let mut used: usize = messages
        .iter()
        .map(|m| counter.count(&m.content) + overhead)
        .sum::<usize>()
        + overhead;
    // The per-part estimates are sums of pieces; the joined text can tokenize a little
    // differently (a piece counted alone and after a newline differ). The oldest history
    // goes until the prompt fits; never hand the model more than it can read.
    while used > total && messages.len() > first_history + 1 {
        let gone = messages.remove(first_history);
        let cost = counter.count(&gone.content) + overhead;
        used -= cost;
        history.tokens = history.tokens.saturating_sub(cost);
        let id = history.included.remove(0);
        history.dropped.push(id);
    }
    if used > total {
        return Err(Error::Internal(format!(
            "assembled prompt has {used} tokens, over the budget of {total}"
        )));
    }
    Ok(AssembledContext {
        messages,
        report: ContextReport {
            budget: total,
            used,
            response_reserve: budget.response_reserve,
            system_tokens,
            message_tokens,
            memories,
            summaries,
            history,
            persona: PartReport::default(),
        },
    })
}

/// Folds old history into a summary. The chat model implements it (see the inference
/// work); anything that can write a faithful summary can.
#[async_trait]
pub trait Summarizer: Send + Sync {
    /// A summary of `messages` (oldest first), which are `user`'s, that also keeps what
    /// `previous` (the summary of what came before them) says.
    async fn summarize(
        &self,
        user: &str,
        previous: Option<&str>,
        messages: &[Message],
    ) -> Result<String>;

    /// The id recorded with the summaries it writes.
    fn model_id(&self) -> &str;

    /// Tokens of input one call takes at most (the previous summary and the messages, as
    /// [`Summarizer::count_tokens`] counts them); longer backlogs are summarised in steps.
    fn max_input_tokens(&self) -> usize {
        usize::MAX
    }

    /// Tokens of a text as the summarizer's model counts them (an estimate of four bytes a
    /// token unless the summarizer knows better).
    fn count_tokens(&self, text: &str) -> usize {
        text.len().div_ceil(4)
    }
}

/// When rolling summaries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SummaryPolicy {
    /// Summarise once this many messages are not yet covered by a summary.
    pub trigger_messages: usize,
    /// The newest messages left out of the summary (they stay in the prompt as they are).
    pub keep_recent: usize,
}

impl Default for SummaryPolicy {
    fn default() -> Self {
        Self {
            trigger_messages: 40,
            keep_recent: 12,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::Value;

    use super::*;
    use crate::types::Signals;
    use crate::types::{Memory, MemoryKind};

    /// One token per whitespace-separated word.
    struct Words;
    impl TokenCounter for Words {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
    }

    fn message(id: i64, words: usize) -> Message {
        Message {
            id,
            session: "s".into(),
            role: if id % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            },
            content: vec![format!("m{id}"); words].join(" "),
            tags: vec![],
            metadata: Value::Null,
            created_at: Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap(),
        }
    }

    fn memory(id: i64, words: usize, message_id: Option<i64>) -> Retrieved {
        let t = Utc.with_ymd_and_hms(2024, 4, 1, 0, 0, 0).unwrap();
        Retrieved {
            memory: Memory {
                id,
                kind: MemoryKind::Message,
                content: vec![format!("r{id}"); words].join(" "),
                session: Some("s".into()),
                message_id,
                summary_id: None,
                role: None,
                tags: vec![],
                metadata: Value::Null,
                importance: 0.5,
                emotion: None,
                created_at: t,
                updated_at: t,
                expires_at: None,
                supersedes: None,
                superseded_by: None,
                superseded_at: None,
                key_for: None,
            },
            score: 1.0,
            signals: Signals::default(),
        }
    }

    fn budget(window: usize) -> ContextBudget {
        ContextBudget {
            context_window: window,
            response_reserve: 10,
            memory_share: 0.3,
            summary_share: 0.2,
            history_share: 0.5,
            per_message_overhead: 1,
            persona_share: 0.25,
        }
    }

    #[test]
    fn everything_fits_when_there_is_room() {
        let history: Vec<Message> = (1..=4).map(|i| message(i, 3)).collect();
        let memories = vec![memory(100, 4, None), memory(101, 4, Some(2))];
        let input = ContextInput {
            system: Some("be kind"),
            persona: Some("you are Ada"),
            memories: &memories,
            summaries: &[],
            history: &history,
            message: "hello there",
        };
        let out = assemble(&input, &Words, &budget(1000)).unwrap();
        assert_eq!(out.report.history.included, vec![1, 2, 3, 4]);
        // Memory 101 repeats message 2, which is in the history.
        assert_eq!(out.report.memories.included, vec![100]);
        assert_eq!(out.report.memories.dropped, vec![101]);
        assert_eq!(out.messages.len(), 6);
        assert_eq!(out.messages[0].role, Role::System);
        assert!(
            out.messages[0]
                .content
                .starts_with("be kind\n\nyou are Ada\n\n")
        );
        assert!(out.messages[0].content.contains("- (2024-04-01) r100"));
        assert_eq!(out.messages.last().unwrap().content, "hello there");
        // Each message and its overhead, and the answer's opening.
        let counted: usize = out
            .messages
            .iter()
            .map(|m| Words.count(&m.content) + 1)
            .sum::<usize>()
            + 1;
        assert_eq!(out.report.used, counted);
        assert!(out.report.used <= out.report.budget);
    }

    #[test]
    fn history_is_newest_first_whole_messages_and_chronological() {
        // Budget 110 - 10 reserve = 100; fixed = 2 + 1 + 2 + 1 + 1 (the answer's opening) = 7;
        // flexible 93. History share 46, + the summaries' unused 18 + the memories' unused
        // 27 = 91.
        let history: Vec<Message> = (1..=12).map(|i| message(i, 9)).collect();
        let input = ContextInput {
            system: Some("sys prompt"),
            persona: None,
            memories: &[],
            summaries: &[],
            history: &history,
            message: "new question",
        };
        let out = assemble(&input, &Words, &budget(110)).unwrap();
        // 10 tokens per message: 9 fit in 91.
        assert_eq!(out.report.history.included, (4..=12).collect::<Vec<_>>());
        assert_eq!(out.report.history.dropped, vec![1, 2, 3]);
        let contents: Vec<&str> = out.messages[1..10]
            .iter()
            .map(|m| m.content.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            contents,
            ["m4", "m5", "m6", "m7", "m8", "m9", "m10", "m11", "m12"]
        );
        assert!(out.report.used <= 100);
    }

    #[test]
    fn memories_respect_their_share_and_rank() {
        let memories: Vec<Retrieved> = (1..=10).map(|i| memory(i, 8, None)).collect();
        let input = ContextInput {
            system: None,
            persona: None,
            memories: &memories,
            summaries: &[],
            history: &[],
            message: "q",
        };
        // total 100 - 10 = 90; fixed 0 + 1 + 1 + 1 + 1 = 4 (the empty system text still
        // counts its template overhead, and the answer's opening counts one); flexible 86;
        // memory share 25: heading (9 words) + 1 separator + lines of 10 words + 1.
        let out = assemble(&input, &Words, &budget(100)).unwrap();
        assert_eq!(out.report.memories.budget, 25);
        assert_eq!(out.report.memories.included, vec![1]);
        assert_eq!(out.report.memories.dropped, (2..=10).collect::<Vec<_>>());
        assert!(out.report.memories.tokens <= out.report.memories.budget);
    }

    #[test]
    fn summaries_keep_the_newest_and_show_oldest_first() {
        let t = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
        let summaries: Vec<Summary> = (1..=3)
            .map(|i| Summary {
                id: i,
                session: "s".into(),
                content: format!("summary{i} a b c d e"),
                first_message_id: None,
                last_message_id: None,
                model: None,
                created_at: t,
            })
            .collect();
        let input = ContextInput {
            system: None,
            persona: None,
            memories: &[],
            summaries: &summaries,
            history: &[],
            message: "q",
        };
        // flexible 87, summary share 17: heading 5 + separator 1 + 7 per summary: the newest.
        let out = assemble(&input, &Words, &budget(100)).unwrap();
        assert_eq!(out.report.summaries.included, vec![3]);
        assert_eq!(out.report.summaries.dropped, vec![2, 1]);
        assert!(out.messages[0].content.contains("summary3"));
    }

    /// A summary already shown under its heading is not shown again as a retrieved memory
    /// (summaries are stored as memories too); one whose summary was left out still can be.
    #[test]
    fn a_summary_shown_is_not_repeated_as_a_memory() {
        let t = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
        let summaries = vec![Summary {
            id: 7,
            session: "s".into(),
            content: "they planned the Lisbon trip".into(),
            first_message_id: None,
            last_message_id: None,
            model: None,
            created_at: t,
        }];
        let mut as_memory = memory(100, 1, None);
        as_memory.memory.kind = MemoryKind::Summary;
        as_memory.memory.summary_id = Some(7);
        as_memory.memory.content = summaries[0].content.clone();
        let other = memory(101, 2, None);
        let memories = vec![as_memory, other];
        let input = ContextInput {
            system: None,
            persona: None,
            memories: &memories,
            summaries: &summaries,
            history: &[],
            message: "q",
        };
        let out = assemble(&input, &Words, &budget(1000)).unwrap();
        assert_eq!(out.report.summaries.included, vec![7]);
        assert_eq!(out.report.memories.included, vec![101]);
        assert_eq!(out.messages[0].content.matches("Lisbon trip").count(), 1);
        // With no room for the summary, the memory that holds it shows it.
        let no_summaries = ContextBudget {
            summary_share: 0.0,
            ..budget(1000)
        };
        let out = assemble(&input, &Words, &no_summaries).unwrap();
        assert_eq!(out.report.summaries.included, Vec::<i64>::new());
        assert!(
            out.report.memories.included.contains(&100),
            "{:?}",
            out.report
        );
    }

    /// A counter for which joined text costs more than its pieces (each newline three
    /// tokens), as SentencePiece's can.
    struct Newlines;
    impl TokenCounter for Newlines {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace().count() + 3 * text.matches('\n').count()
        }
    }

    /// When the joined prompt counts more than its parts did, the oldest history goes until
    /// it fits: the answer is a prompt within the budget, not an error.
    #[test]
    fn a_prompt_that_counts_more_joined_sheds_old_history() {
        let history: Vec<Message> = (1..=20).map(|i| message(i, 9)).collect();
        let memories: Vec<Retrieved> = (100..105).map(|i| memory(i, 4, None)).collect();
        let input = ContextInput {
            system: Some("sys prompt"),
            persona: None,
            memories: &memories,
            summaries: &[],
            history: &history,
            message: "new question",
        };
        let out = assemble(&input, &Newlines, &budget(200)).unwrap();
        assert_eq!(out.report.memories.included.len(), 5);
        let counted: usize = out
            .messages
            .iter()
            .map(|m| Newlines.count(&m.content) + 1)
            .sum::<usize>()
            + 1;
        assert_eq!(out.report.used, counted);
        assert!(out.report.used <= out.report.budget, "{:?}", out.report);
        // The newest history stays, whole and in order.
        let kept = &out.report.history.included;
        assert_eq!(kept.last(), Some(&20));
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        assert_eq!(out.messages.len(), kept.len() + 2);
    }

    /// History topped up with what memories left stops at a message an included memory
    /// already shows, rather than showing it twice.
    #[test]
    fn history_top_up_does_not_repeat_a_memory() {
        let history: Vec<Message> = (1..=12).map(|i| message(i, 9)).collect();
        let memories = vec![memory(100, 4, Some(6))];
        let input = ContextInput {
            system: Some("sys prompt"),
            persona: None,
            memories: &memories,
            summaries: &[],
            history: &history,
            message: "new question",
        };
        let out = assemble(&input, &Words, &budget(110)).unwrap();
        assert_eq!(out.report.memories.included, vec![100]);
        assert!(out.report.history.included.contains(&7));
        // There was room for message 6 (10 tokens), which memory 100 already shows.
        assert!(
            out.report.history.tokens + 10 <= out.report.history.budget,
            "{:?}",
            out.report.history
        );
        assert!(!out.report.history.included.contains(&6));
    }

    #[test]
    fn system_and_message_are_never_cut() {
        let long = vec!["w"; 200].join(" ");
        let input = ContextInput {
            system: Some(&long),
            persona: None,
            memories: &[],
            summaries: &[],
            history: &[],
            message: "q",
        };
        let err = assemble(&input, &Words, &budget(100)).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        // 200 + 1, 1 + 1, and the answer's opening 1.
        assert!(err.to_string().contains("need 204 tokens"), "{err}");
        let bad = ContextBudget {
            memory_share: 0.9,
            ..budget(100)
        };
        assert!(assemble(&input, &Words, &bad).is_err());
    }

    proptest::proptest! {
        /// Whatever the history, memories and window: the prompt fits the budget (or the
        /// call is refused when the fixed part alone does not fit), the new message comes
        /// last and whole, history stays in order, and the report counts what was sent.
        #[test]
        fn the_prompt_always_fits_its_budget(
            window in 20usize..400,
            history_words in proptest::collection::vec(1usize..30, 0..20),
            memory_words in proptest::collection::vec(1usize..30, 0..10),
            message_words in 1usize..15,
            system in proptest::option::of(1usize..10),
        ) {
            let history: Vec<Message> = history_words
                .iter()
                .enumerate()
                .map(|(i, w)| message(i as i64 + 1, *w))
                .collect();
            let memories: Vec<Retrieved> = memory_words
                .iter()
                .enumerate()
                .map(|(i, w)| memory(100 + i as i64, *w, None))
                .collect();
            let sys = system.map(|n| vec!["sys"; n].join(" "));
            let msg = vec!["ask"; message_words].join(" ");
            let input = ContextInput {
                system: sys.as_deref(),
                persona: None,
                memories: &memories,
                summaries: &[],
                history: &history,
                message: &msg,
            };
            let b = budget(window);
            let fixed = system.unwrap_or(0) + 1 + message_words + 1 + 1;
            match assemble(&input, &Words, &b) {
                Err(e) => proptest::prop_assert!(fixed > window - b.response_reserve, "{e}"),
                Ok(out) => {
                    proptest::prop_assert!(out.report.used <= out.report.budget);
                    let counted: usize = out
                        .messages
                        .iter()
                        .map(|m| Words.count(&m.content) + 1)
                        .sum::<usize>()
                        + 1;
                    proptest::prop_assert_eq!(out.report.used, counted);
                    proptest::prop_assert_eq!(&out.messages.last().unwrap().content, &msg);
                    let ids = &out.report.history.included;
                    proptest::prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
                }
            }
        }
    }
}
