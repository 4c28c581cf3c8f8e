//! Extra keys: text written about a memory after it was stored, that search finds and that
//! brings back the memory it was written for. A message is searchable the moment it is
//! stored; later, when the user has turned keys on, a background job has the local chat model
//! restate each message as a standalone fact (names instead of "I" and "you", the day it was
//! said) and stores that as a memory of kind [`MemoryKind::Key`] pointing at the message
//! (`key_for`). Search treats a key's match as a match of its memory ("K = V + fact" in
//! LongMemEval); keys are the user's own rows, so nothing of another user can reach them.
//!
//! This module holds what the job is told ([`KeyOptions`]), what it reports ([`KeyReport`],
//! [`KeyStatus`]), the prompt and the reading of the model's reply; the engine
//! (`Engine::write_memory_keys`) ties them to the store and the jobs.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::context::ChatTurn;
use crate::error::{Error, Result};
use crate::types::{Memory, MemoryKind, Role};

/// The version of the fact prompt, recorded with each key.
pub const PROMPT_VERSION: u32 = 1;
/// Characters of a key at most.
pub const MAX_KEY_CHARS: usize = 400;
/// Keys written per run at most.
pub const MAX_KEYS_PER_RUN: usize = 100_000;

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
    /// Keys stored.
    pub keys: u64,
    /// Replies with no usable fact.
    pub rejected: u64,
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
    let line = reply.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut fact = line;
    for label in ["Fact:", "fact:", "-", "*", "1."] {
        fact = fact.strip_prefix(label).unwrap_or(fact).trim();
    }
    let fact = fact
        .trim_matches(|c: char| matches!(c, '"' | '\'' | '`'))
        .trim();
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
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
