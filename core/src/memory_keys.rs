//! Extra keys: text written about a memory after it was stored, that search finds and that
//! brings back the memory it was written for. A message is searchable the moment it is
//! stored; later, when the user has keys on (the server's default for new users,
//! `StoreConfig::memory_keys_for_new_users`), a background job has the local chat model
//! restate each message as a standalone fact (names instead of "I" and "you", the day it was
//! said) and stores that as a memory of kind [`MemoryKind::Key`] pointing at the message
//! (`key_for`). Search treats a key's match as a match of its memory ("K = V + fact" in
//! LongMemEval); keys are the user's own rows, so nothing of another user can reach them.
//!
//! Before asking the model anything, the job writes context keys, which need no model: each
//! turn of a session gets a key holding the turn before it, its own text and, once it exists,
//! the turn after when that goes on with them ([`reply_continues`]), so that a question that
//! joins them ("what did she paint after the trip?" when the trip is in the turn before) matches
//! the turn as one piece; an answer's key starts with what its question was about, and an
//! answer has a second key, the exchange alone ([`EXCHANGE_VIEW`]). On the dev data these
//! keys alone raised recall@10 by 0.03 (docs/benchmarks.md).
//!
//! The job also writes session keys: the model reads a stretch of a session (a window of a
//! few turns) and says in a sentence what it is about, with the names of the people, things
//! and events; each turn of the window gets a key with that topic before its own text, so that
//! a question about what a conversation covered finds turns that never name it ("That's
//! great, what made you pick that one?"). A window is the turns of a session the job has not
//! seen yet, at most [`KeyOptions::session_turns`] of them.
//!
//! This module holds what the job is told ([`KeyOptions`]), what it reports ([`KeyReport`],
//! [`KeyStatus`]), the prompt and the reading of the model's reply; the engine
//! (`Engine::write_memory_keys`) ties them to the store and the jobs.
use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::context::ChatTurn;
use crate::error::{Error, Result};
use crate::types::{Memory, MemoryKind, Role};

/// The version of the fact and topic prompts, recorded with each key.
pub const PROMPT_VERSION: u32 = 1;
/// A key's source (its metadata's `key`): a fact the model read in its memory.
pub const FACT_KEY: &str = "fact";
/// A key's source: the topic of the stretch of the session its memory belongs to.
pub const SESSION_KEY: &str = "session";
/// A key's source: the turn before the memory in its session, then the memory's own text.
pub const CONTEXT_KEY: &str = "context";
/// Characters of the turn before that a context key holds at most (its end: what the turn
/// answers is usually said last), so that the memory's own text fits the embedder's window.
pub const CONTEXT_CHARS: usize = 400;
/// What the key job reads memories for; each has its own watermark (the last memory read,
/// [`crate::types::User::memory_keys_through`] and `memory_sessions_through`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPass {
    /// A fact for each message and fact.
    Facts,
    /// A topic for each stretch of a session.
    Sessions,
}

/// Characters of a key at most.
pub const MAX_KEY_CHARS: usize = 400;
/// Keys written per run at most.
pub const MAX_KEYS_PER_RUN: usize = 100_000;
/// Memories the key job reads at a time: it holds one range of them (and the references of
/// the keys after its first watermark) in memory, whatever the user's size.
pub const KEY_RANGE: usize = 1000;

/// The kinds of memory that get keys: what people said and the facts stored about them.
pub const KEYED_KINDS: [MemoryKind; 2] = [MemoryKind::Message, MemoryKind::Fact];

/// How the key job runs (`Engine::write_memory_keys`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyOptions {
    /// Keys written in this run at most (the rest wait for the next run).
    pub max_keys: usize,
    /// Memories asked about at once (a local model decodes them in one batch).
    pub concurrency: usize,
    /// Pause after each group, leaving the model to live chat (a rate limit).
    pub pause_ms: u64,
    /// Tokens per fact at most.
    pub max_tokens: usize,
    /// Memories shorter than this (characters) get no key.
    pub min_memory_chars: usize,
    /// A key holds the memory's own text after the fact ("K = V + fact" in LongMemEval), so
    /// that it matches about as well as the memory where the fact is off the mark (on by
    /// default: on the dev data fact-only keys written by the packaged model lowered recall).
    pub with_text: bool,
    /// Facts: a key for each message and fact, from what the model reads in it alone (off by
    /// default: on the dev data the packaged model's facts left recall@10 where it was,
    /// 0.769 → 0.766; a better chat model may do better, `eval --keys --keys-facts`).
    pub facts: bool,
    /// Session keys: a key for each turn of a session, from the topic of its window (off by
    /// default: on the dev data the packaged model's topics lowered recall@10 by 0.03, most
    /// of them generic and rejected, the rest lifting whole windows alike).
    pub sessions: bool,
    /// Turns of a session the model reads at once for a topic, at most.
    pub session_turns: usize,
    /// Context keys: a key for each turn of a session, holding the turn before it, its own
    /// text and the turn after when it goes on with them; written without the model (on by default: on the dev data they raised
    /// recall@10 from 0.781 to 0.801).
    pub context: bool,
}

impl Default for KeyOptions {
    fn default() -> Self {
        Self {
            max_keys: 10_000,
            concurrency: 8,
            pause_ms: 0,
            max_tokens: 48,
            min_memory_chars: 20,
            with_text: true,
            facts: false,
            sessions: false,
            session_turns: 8,
            context: true,
        }
    }
}

impl KeyOptions {
    /// Refuses options out of range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_KEYS_PER_RUN).contains(&self.max_keys) {
            return Err(Error::invalid(format!(
                "max keys must be 1 to {MAX_KEYS_PER_RUN}"
            )));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(Error::invalid("concurrency must be 1 to 64"));
        }
        if self.pause_ms > 60_000 {
            return Err(Error::invalid("the pause is at most 60000 ms"));
        }
        if !(8..=200).contains(&self.max_tokens) {
            return Err(Error::invalid("max tokens per key must be 8 to 200"));
        }
        if self.min_memory_chars > 10_000 {
            return Err(Error::invalid("min memory chars is at most 10000"));
        }
        if !(2..=32).contains(&self.session_turns) {
            return Err(Error::invalid("session turns must be 2 to 32"));
        }
        if !self.facts && !self.sessions && !self.context {
            return Err(Error::invalid(
                "keys from facts, sessions or context: at least one",
            ));
        }
        Ok(())
    }
}

/// What a run of the key job did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyReport {
    /// Memories the model was asked about.
    pub memories: u64,
    /// Memories left alone: they have a key (an earlier run), are too short or are not of a
    /// keyed kind.
    pub skipped: u64,
    /// Keys stored (facts and session keys).
    pub keys: u64,
    /// Of those, session keys.
    pub session_keys: u64,
    /// Of those, context keys.
    pub context_keys: u64,
    /// Replies with no usable fact.
    pub rejected: u64,
    /// Session windows the model was asked about.
    pub windows: u64,
    /// Of those, replies with no usable topic.
    pub rejected_windows: u64,
    /// Memories still without a key when the run stopped at `max_keys` (or keys were turned
    /// off while it ran).
    pub left: u64,
    /// The model that wrote them.
    pub model: String,
    /// Seconds taken.
    pub seconds: f64,
}

/// Whether a user's keys are on, and how many they have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// The job writes keys for the user's memories, and search uses them.
    pub enabled: bool,
    /// Keys stored.
    pub keys: u64,
}

/// Characters of the turn after that a context key holds at most (its start).
pub const REPLY_CHARS: usize = 400;

/// Whether a reply goes on with what a context key holds: it shares a term
/// ([`crate::text::terms`]: stemmed, not a stop word) with the turn or the turn before,
/// speaker labels aside. Lexical cohesion, the rule TextTiling finds topics by: a reply that
/// says again what the turn was about ("Wow, Jon, you must be so excited!" after "I'm
/// excited!") describes it in other words; one that moves on would lend it another topic.
pub fn reply_continues(previous: &Memory, memory: &Memory, next: &Memory) -> bool {
    let terms = |m: &Memory| {
        let text = m.content.trim();
        let text = match crate::text::speaker_label(text) {
            Some(label) => &text[label.len() + 1..],
            None => text,
        };
        crate::text::terms(text)
    };
    let said: HashSet<String> = terms(previous).into_iter().chain(terms(memory)).collect();
    terms(next).iter().any(|t| said.contains(t))
}

/// Characters of the turn before a question that the key of its answer holds at most (its
/// end).
pub const ASKED_ABOUT_CHARS: usize = 200;

/// `metadata.view` of an answer's second context key: the exchange alone (the question's
/// turn, the answer and its reply), without the turn before the question that the first
/// key starts with. A question that names what was asked about ("What is Joanna's third
/// screenplay about?") finds the first; one that asks what the question asked ("What is
/// Nate's favourite game?" for "So what's your favourite game?") the second, undiluted; the
/// answer ranks by the better of the two.
pub const EXCHANGE_VIEW: &str = "exchange";

/// Whether `memory` answers `previous`: the turn before it [asks a
/// question](crate::text::asks_question) (anywhere in it: "Wow! What's it about? Glad it's
/// done!") and someone else asked it (another speaker label, or, without labels, another
/// role).
pub fn answers(previous: &Memory, memory: &Memory) -> bool {
    use crate::text::speaker_label;
    let other = match (
        speaker_label(previous.content.trim()),
        speaker_label(memory.content.trim()),
    ) {
        (Some(a), Some(b)) => a != b,
        _ => matches!((previous.role, memory.role), (Some(a), Some(b)) if a != b),
    };
    other && crate::text::asks_question(&previous.content)
}

/// The end of a text, at most `max` characters, from a word's start.
fn tail(text: &str, max: usize) -> &str {
    let count = text.chars().count();
    if count <= max {
        return text;
    }
    let (start, _) = text.char_indices().nth(count - max).unwrap_or((0, ' '));
    let tail = &text[start..];
    match tail.find(char::is_whitespace) {
        Some(i) if i + 1 < tail.len() => tail[i..].trim_start(),
        _ => tail,
    }
}

/// A context key's text: the end of the turn before (at most [`CONTEXT_CHARS`], from a word's
/// start), then the memory's own text, then the start of the turn after (at most
/// [`REPLY_CHARS`]) when there is one and it [goes on](reply_continues) with them. When the
/// memory [answers](answers) the turn before, the end of the turn before that question
/// (`asked_about`, at most [`ASKED_ABOUT_CHARS`]) comes first: a question ("What's it
/// about?") often names its subject only in the turn it asks about ("I finished my first
/// screenplay"), and the answer ("A mix of drama and romance!") in neither.
pub fn context_key_text(
    previous: &Memory,
    memory: &Memory,
    next: Option<&Memory>,
    asked_about: Option<&Memory>,
) -> String {
    let before = tail(previous.content.trim(), CONTEXT_CHARS);
    let mut text = match asked_about.filter(|_| answers(previous, memory)) {
        Some(a) => format!("{}\n", tail(a.content.trim(), ASKED_ABOUT_CHARS)),
        None => String::new(),
    };
    text.push_str(before);
    text.push('\n');
    text.push_str(&memory.content);
    if let Some(n) = next.filter(|n| reply_continues(previous, memory, n)) {
        text.push('\n');
        text.push_str(clip(n.content.trim(), REPLY_CHARS));
    }
    text
}

/// The day a memory was written, as a fact states it: "Monday, 8 May 2023".
pub fn day(t: DateTime<Utc>) -> String {
    t.format("%A, %-d %B %Y").to_string()
}

/// The prompt that asks for the fact in `memory`, with the turn before it (`previous`, same
/// session) as context for what it refers to.
pub fn fact_prompt(memory: &Memory, previous: Option<&Memory>) -> Vec<ChatTurn> {
    let mut text = String::new();
    if let Some(p) = previous {
        text += &format!("Earlier: {}\n", clip(&p.content, 600));
    }
    text += &format!(
        "Message (written on {}): {}\n\nRestate what this message says as one short sentence of \
         fact. Use people's names instead of I, me or you, and exact dates instead of words \
         like yesterday or last week.\nFact:",
        day(memory.created_at),
        clip(&memory.content, 1_500)
    );
    vec![
        ChatTurn {
            role: Role::System,
            content: "You turn chat messages into short standalone facts for a search index. \
                      Reply with the fact only."
                .into(),
        },
        ChatTurn {
            role: Role::User,
            content: text,
        },
    ]
}

/// A session's turns (in the order they were said) split into windows of at most `size`
/// turns, as even as they can be (seventeen turns are windows of six, six and five).
pub fn session_windows<'a>(turns: &[&'a Memory], size: usize) -> Vec<Vec<&'a Memory>> {
    let size = size.max(1);
    let windows = turns.len().div_ceil(size);
    let mut out = Vec::with_capacity(windows);
    let mut start = 0;
    for w in 0..windows {
        let end = start + (turns.len() - start).div_ceil(windows - w);
        out.push(turns[start..end].to_vec());
        start = end;
    }
    out
}

/// The prompt that asks what a window of a session is about.
pub fn topic_prompt(window: &[&Memory]) -> Vec<ChatTurn> {
    let day = window
        .first()
        .map(|m| day(m.created_at))
        .unwrap_or_default();
    let mut text = format!("Conversation on {day}:\n");
    for m in window {
        text += &format!("- {}\n", clip(&m.content, 400));
    }
    text += "\nIn one sentence, say what this part of the conversation is about. Name the \
             people and the things, places and events they talk about.\nTopic:";
    vec![
        ChatTurn {
            role: Role::System,
            content: "You write one-line topics of conversations for a search index. Reply \
                      with the topic only."
                .into(),
        },
        ChatTurn {
            role: Role::User,
            content: text,
        },
    ]
}

/// The topic of `window` from a model's reply: its first non-empty line without labels and
/// quotes. `None` when the reply holds no topic: too short or too long, one of the turns
/// again, or not grounded in the window — fewer than two of its content words, or fewer than
/// half, are the window's (a small model writes generic lines like "Love, Support,
/// Happiness…" or "a conversation between two friends who support each other", which match
/// every window alike).
pub fn parse_topic(reply: &str, window: &[&Memory]) -> Option<String> {
    let topic = first_line(reply, &["Topic:", "topic:"])?;
    let words = topic.split_whitespace().count();
    if words < 3 || topic.chars().count() > MAX_KEY_CHARS - 40 {
        return None;
    }
    if window.iter().any(|m| same_words(topic, &m.content)) {
        return None;
    }
    let said: String = window
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let own = content_words(topic);
    let shared = shared_words(topic, &said);
    (shared >= 2 && 2 * shared >= own.len()).then(|| topic.to_owned())
}

/// A session key's text: the topic of the turn's window, the day, and the turn's own text
/// (always: every turn of a window has the same topic, which alone would not tell them
/// apart).
pub fn session_key_text(topic: &str, memory: &Memory) -> String {
    format!(
        "{topic} (conversation of {})\n{}",
        day(memory.created_at),
        memory.content
    )
}

/// A reply's first non-empty line without the given labels, list marks and quotes.
fn first_line<'a>(reply: &'a str, labels: &[&str]) -> Option<&'a str> {
    let mut line = reply.lines().map(str::trim).find(|l| !l.is_empty())?;
    for label in labels.iter().chain(&["-", "*", "1."]) {
        line = line.strip_prefix(label).unwrap_or(line).trim();
    }
    Some(
        line.trim_matches(|c: char| matches!(c, '"' | '\'' | '`'))
            .trim(),
    )
}

fn clip(s: &str, chars: usize) -> &str {
    match s.char_indices().nth(chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The key for `memory` from a model's reply: its first non-empty line without labels and
/// quotes, followed by the day the memory was written. `None` when the reply holds no fact
/// about the memory: too short, too long, the memory's own words again, no word of the memory
/// (an invention), or more words of the turn before (`previous`, given to the model as
/// context) than of the memory — a small model often restates the context instead.
pub fn parse_fact(reply: &str, memory: &Memory, previous: Option<&Memory>) -> Option<String> {
    let fact = first_line(reply, &["Fact:", "fact:"])?;
    let words = fact.split_whitespace().count();
    if words < 3 || fact.chars().count() > MAX_KEY_CHARS - 40 {
        return None;
    }
    if same_words(fact, &memory.content) {
        return None;
    }
    let own = shared_words(fact, &memory.content);
    if own == 0 || previous.is_some_and(|p| shared_words(fact, &p.content) > own) {
        return None;
    }
    Some(format!("{fact} (said on {})", day(memory.created_at)))
}

/// Words that carry content: four letters or more, lower case, a few common ones aside.
fn content_words(s: &str) -> std::collections::HashSet<String> {
    const COMMON: [&str; 24] = [
        "that", "this", "with", "have", "from", "they", "them", "their", "there", "what", "when",
        "were", "been", "your", "yours", "about", "just", "really", "would", "could", "will",
        "said", "also", "into",
    ];
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 4)
        .map(str::to_lowercase)
        .filter(|w| !COMMON.contains(&w.as_str()))
        .collect()
}

/// How many content words two texts share.
fn shared_words(a: &str, b: &str) -> usize {
    let b = content_words(b);
    content_words(a).intersection(&b).count()
}

/// A key's text: the fact, and the memory's own text after it when `with_text`.
pub fn key_text(fact: &str, memory: &Memory, with_text: bool) -> String {
    if with_text {
        format!("{fact}\n{}", memory.content)
    } else {
        fact.to_owned()
    }
}

/// Whether two texts hold the same words (case, punctuation and a leading "Name:" aside).
fn same_words(a: &str, b: &str) -> bool {
    let words = |s: &str| -> Vec<String> {
        let s = match s.split_once(": ") {
            Some((name, rest)) if name.split_whitespace().count() <= 3 => rest,
            _ => s,
        };
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    words(a) == words(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn memory(content: &str) -> Memory {
        let t = Utc.with_ymd_and_hms(2023, 5, 8, 13, 56, 0).unwrap();
        Memory {
            id: 7,
            kind: MemoryKind::Message,
            content: content.into(),
            session: Some("s".into()),
            message_id: Some(7),
            summary_id: None,
            role: Some(Role::User),
            tags: vec![],
            metadata: serde_json::Value::Null,
            importance: 0.5,
            emotion: None,
            created_at: t,
            updated_at: t,
            expires_at: None,
            supersedes: None,
            superseded_by: None,
            superseded_at: None,
            key_for: None,
        }
    }

    #[test]
    fn a_fact_is_the_first_line_with_the_day_it_was_said() {
        let m = memory("Caroline: I went to a LGBTQ support group yesterday.");
        assert_eq!(
            parse_fact(
                "Fact: \"Caroline went to an LGBTQ support group on 7 May 2023.\"\nMore text",
                &m,
                None
            )
            .as_deref(),
            Some(
                "Caroline went to an LGBTQ support group on 7 May 2023. \
                 (said on Monday, 8 May 2023)"
            )
        );
    }

    #[test]
    fn replies_without_a_fact_are_refused() {
        let m = memory("Caroline: I went to a LGBTQ support group yesterday.");
        let parse = |reply: &str| parse_fact(reply, &m, None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("\n  \n"), None);
        assert_eq!(parse("Sure."), None);
        // The message again, with or without its speaker.
        assert_eq!(parse("I went to a LGBTQ support group yesterday"), None);
        assert_eq!(
            parse("caroline: I went to a LGBTQ support group, yesterday!"),
            None
        );
        assert_eq!(parse(&"word ".repeat(200)), None);
        // Nothing of the message: an invention.
        assert_eq!(parse("Melanie bought a new blue bicycle."), None);
        // The turn before, restated.
        let before = memory("Melanie: Glad you had support. Being yourself is great!");
        assert_eq!(
            parse_fact("Melanie is glad Caroline had support.", &m, Some(&before)),
            None
        );
        assert!(
            parse_fact(
                "Caroline went to a support group on 7 May.",
                &m,
                Some(&before)
            )
            .is_some()
        );
    }

    #[test]
    fn the_prompt_names_the_day_and_the_turn_before() {
        let m = memory("Caroline: I went to a LGBTQ support group yesterday.");
        let p = memory("Melanie: What did you do this weekend?");
        let turns = fact_prompt(&m, Some(&p));
        assert_eq!(turns.len(), 2);
        let text = &turns[1].content;
        assert!(text.contains("Monday, 8 May 2023"), "{text}");
        assert!(text.contains("Earlier: Melanie: What did you do"), "{text}");
        assert!(text.ends_with("Fact:"), "{text}");
        assert!(!fact_prompt(&m, None)[1].content.contains("Earlier"));
    }

    #[test]
    fn sessions_split_into_even_windows() {
        let turns: Vec<Memory> = (0..17)
            .map(|i| Memory {
                id: i,
                ..memory("x")
            })
            .collect();
        let refs: Vec<&Memory> = turns.iter().collect();
        let sizes = |n: usize, size: usize| -> Vec<usize> {
            session_windows(&refs[..n], size)
                .iter()
                .map(Vec::len)
                .collect()
        };
        assert_eq!(sizes(17, 8), [6, 6, 5]);
        assert_eq!(sizes(16, 8), [8, 8]);
        assert_eq!(sizes(3, 8), [3]);
        assert_eq!(sizes(9, 8), [5, 4]);
        assert!(sizes(0, 8).is_empty());
        // In order, each turn once.
        let ids: Vec<i64> = session_windows(&refs, 4)
            .concat()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, (0..17).collect::<Vec<_>>());
    }

    #[test]
    fn a_topic_names_what_the_window_is_about() {
        let a = memory("Caroline: I went to a LGBTQ support group yesterday.");
        let b = memory("Melanie: That's great! How did it feel?");
        let window = [&a, &b];
        let turns = topic_prompt(&window);
        let text = &turns[1].content;
        assert!(
            text.starts_with("Conversation on Monday, 8 May 2023:"),
            "{text}"
        );
        assert!(text.contains("- Melanie: That's great!"), "{text}");
        assert!(text.ends_with("Topic:"), "{text}");
        assert_eq!(
            parse_topic(
                "Topic: Caroline tells Melanie about the LGBTQ support group.\nMore",
                &window
            )
            .as_deref(),
            Some("Caroline tells Melanie about the LGBTQ support group.")
        );
        // No topic: too short, a turn again, or nothing of the window.
        assert_eq!(parse_topic("Support.", &window), None);
        assert_eq!(
            parse_topic("Melanie: That's great! How did it feel?", &window),
            None
        );
        assert_eq!(parse_topic("A trip to the mountains.", &window), None);
        assert_eq!(
            session_key_text("Caroline and the support group", &a),
            "Caroline and the support group (conversation of Monday, 8 May 2023)\n\
             Caroline: I went to a LGBTQ support group yesterday."
        );
    }

    #[test]
    fn options_out_of_range_are_refused() {
        assert!(KeyOptions::default().validate().is_ok());
        for bad in [
            KeyOptions {
                max_keys: 0,
                ..KeyOptions::default()
            },
            KeyOptions {
                concurrency: 65,
                ..KeyOptions::default()
            },
            KeyOptions {
                pause_ms: 60_001,
                ..KeyOptions::default()
            },
            KeyOptions {
                max_tokens: 4,
                ..KeyOptions::default()
            },
            KeyOptions {
                session_turns: 1,
                ..KeyOptions::default()
            },
            KeyOptions {
                facts: false,
                sessions: false,
                context: false,
                ..KeyOptions::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        // Context keys alone need no model and are enough.
        assert!(
            KeyOptions {
                facts: false,
                sessions: false,
                ..KeyOptions::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn a_context_key_holds_the_end_of_the_turn_before_then_the_turn() {
        let before = memory("Melanie: We went camping at the lake last weekend.");
        let turn = memory("Caroline: Did you paint it afterwards?");
        assert_eq!(
            context_key_text(&before, &turn, None, None),
            "Melanie: We went camping at the lake last weekend.\n\
             Caroline: Did you paint it afterwards?"
        );
        // A long turn before is cut to its end, at a word's start; the turn stays whole.
        let long = memory(&format!(
            "Melanie: {} the lake was calm.",
            "so ".repeat(300)
        ));
        let key = context_key_text(&long, &turn, None, None);
        let (head, tail) = key.split_once('\n').unwrap();
        assert!(head.chars().count() <= CONTEXT_CHARS, "{head}");
        assert!(
            head.ends_with("the lake was calm.") && head.starts_with("so "),
            "{head}"
        );
        assert_eq!(tail, turn.content);
    }

    #[test]
    fn a_context_key_takes_the_reply_that_goes_on_with_it() {
        let before = memory("Gina: The studio looks amazing! How do you feel about tomorrow?");
        let turn = memory("Jon: Thanks, Gina! I'm excited! It's been a wild ride.");
        // Shares a stemmed term with the turn ("excited"): the reply joins the key, its
        // start at most.
        let reply = memory("Gina: Wow, Jon, you must be so excited! Tomorrow will be a blast!");
        assert!(reply_continues(&before, &turn, &reply));
        assert_eq!(
            context_key_text(&before, &turn, Some(&reply), None),
            format!("{}\n{}\n{}", before.content, turn.content, reply.content)
        );
        // With the turn before ("tomorrow"), speaker labels aside: still the same topic.
        let about_tomorrow = memory("Gina: Can't wait for tomorrow!");
        assert!(reply_continues(&before, &turn, &about_tomorrow));
        // Nothing in common but the names and stop words: another topic, left out.
        let elsewhere = memory("Jon: By the way, did you watch the game?");
        assert!(!reply_continues(&before, &turn, &elsewhere));
        assert_eq!(
            context_key_text(&before, &turn, Some(&elsewhere), None),
            context_key_text(&before, &turn, None, None)
        );
        let long = memory(&format!("Gina: excited {}", "very ".repeat(200)));
        let key = context_key_text(&before, &turn, Some(&long), None);
        let tail = key.rsplit_once('\n').unwrap().1;
        assert_eq!(tail.chars().count(), REPLY_CHARS, "{tail}");
    }

    #[test]
    fn the_key_of_an_answer_starts_with_what_the_question_was_about() {
        let about = memory("Joanna: I finally finished my first full screenplay last Friday!");
        let question = memory("Nate: Congrats! What's it about?");
        let answer = memory("Joanna: Thanks, Nate! It's a mix of drama and romance!");
        assert!(answers(&question, &answer));
        assert_eq!(
            context_key_text(&question, &answer, None, Some(&about)),
            format!(
                "{}\n{}\n{}",
                about.content, question.content, answer.content
            )
        );
        // Not an answer: the turn before asks nothing, or the same speaker asked it.
        let statement = memory("Nate: Congrats, that is a big step.");
        assert!(!answers(&statement, &answer));
        assert_eq!(
            context_key_text(&statement, &answer, None, Some(&about)),
            context_key_text(&statement, &answer, None, None)
        );
        let own = memory("Joanna: Guess what it is about?");
        assert!(!answers(&own, &answer));
        // A question in the middle of the turn before counts too.
        let middle = memory("Nate: Wow, that sounds awesome! What's it about? Glad it's done!");
        assert!(answers(&middle, &answer));
        // Without speaker labels, the roles tell the speakers apart.
        let mut asked = memory("What did you cook?");
        asked.role = Some(Role::User);
        let mut reply = memory("A coconut curry.");
        reply.role = Some(Role::Assistant);
        assert!(answers(&asked, &reply));
        reply.role = Some(Role::User);
        assert!(!answers(&asked, &reply));
        // A long turn before the question is cut to its end.
        let long = memory(&format!("Joanna: {} my screenplay.", "well ".repeat(100)));
        let key = context_key_text(&question, &answer, None, Some(&long));
        let first = key.split('\n').next().unwrap();
        assert!(first.chars().count() <= ASKED_ABOUT_CHARS, "{first}");
        assert!(first.ends_with("my screenplay."), "{first}");
    }
}
