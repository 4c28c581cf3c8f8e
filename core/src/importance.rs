//! Importance: how much a message is worth remembering, in [0, 1], from cheap textual cues.
//!
//! Self-disclosure ("I", "my"), concrete details (numbers, dates, names), life events and
//! preferences ("allergic", "moved", "my daughter", "favourite"), commitments ("remember",
//! "promise") and strong emotion raise it; phatic messages ("ok", "thanks", "lol") and bare
//! questions lower it. Users can also set importance explicitly on any memory.
use std::collections::HashSet;
use std::sync::OnceLock;

use crate::emotion::{Emotion, EmotionScore};
use crate::text::{lower_words, stemmer};

/// The importance of a memory nobody scored.
pub const DEFAULT_IMPORTANCE: f32 = 0.5;

const FIRST_PERSON: &[&str] = &[
    "i", "i'm", "im", "i've", "ive", "i'd", "i'll", "me", "my", "mine", "myself", "we", "our", "us",
];

/// Stems of words about lasting personal facts, life events, relations and preferences.
const SALIENT: &[&str] = &[
    "allergic",
    "allergy",
    "birthday",
    "born",
    "married",
    "marry",
    "wedding",
    "divorce",
    "divorced",
    "engaged",
    "pregnant",
    "baby",
    "daughter",
    "son",
    "wife",
    "husband",
    "partner",
    "girlfriend",
    "boyfriend",
    "mother",
    "mom",
    "mum",
    "father",
    "dad",
    "sister",
    "brother",
    "grandma",
    "grandmother",
    "grandpa",
    "grandfather",
    "kid",
    "children",
    "dog",
    "cat",
    "pet",
    "job",
    "work",
    "hired",
    "fired",
    "promoted",
    "promotion",
    "quit",
    "retired",
    "career",
    "moved",
    "move",
    "moving",
    "live",
    "apartment",
    "house",
    "city",
    "diagnosed",
    "surgery",
    "hospital",
    "sick",
    "illness",
    "died",
    "funeral",
    "graduated",
    "degree",
    "school",
    "university",
    "favourite",
    "favorite",
    "love",
    "hate",
    "prefer",
    "vegetarian",
    "vegan",
    "name",
    "called",
    "always",
    "never",
    "remember",
    "forget",
    "promise",
    "plan",
    "planning",
    "goal",
    "dream",
    "afraid",
    "phobia",
    "medication",
    "address",
    "phone",
    "email",
];

const PHATIC: &[&str] = &[
    "ok", "okay", "k", "thanks", "thank", "thx", "ty", "lol", "haha", "hahaha", "hehe", "yes",
    "yeah", "yep", "no", "nope", "sure", "cool", "nice", "great", "bye", "hi", "hello", "hey",
    "good", "night", "morning", "you", "too", "np", "welcome", "alright", "right", "hmm", "wow",
    "omg", "same", "agreed", "indeed", "exactly",
];

fn salient_stems() -> &'static HashSet<String> {
    static STEMS: OnceLock<HashSet<String>> = OnceLock::new();
    STEMS.get_or_init(|| {
        SALIENT
            .iter()
            .map(|w| stemmer().stem(w).into_owned())
            .collect()
    })
}

/// The importance of a text, in [0, 1]; `emotion` (when known) adds for strong feeling.
pub fn importance(text: &str, emotion: Option<EmotionScore>) -> f32 {
    let lower = crate::text::lower_text(text);
    let words = lower_words(&lower);
    if words.is_empty() {
        return 0.0;
    }
    let mut score = 0.3f32;
    if words.iter().all(|w| PHATIC.contains(w)) {
        return 0.05;
    }
    if words.iter().any(|w| FIRST_PERSON.contains(w)) {
        score += 0.15;
    }
    // Each word stemmed once (stemming is most of this function's time at ingest).
    let salient = words
        .iter()
        .filter(|w| salient_stems().contains(stemmer().stem(w).as_ref()))
        .count();
    score += (0.12 * salient as f32).min(0.25);
    // Concrete details: numbers, dates, and capitalised words that do not start a sentence.
    let numbers = words
        .iter()
        .any(|w| w.chars().any(|c| c.is_ascii_digit()) || crate::when::is_calendar_word(w));
    if numbers {
        score += 0.1;
    }
    let names = text
        .split_whitespace()
        .zip(std::iter::once("").chain(text.split_whitespace()))
        .filter(|(w, prev)| {
            !prev.is_empty()
                && !prev.ends_with(['.', '!', '?'])
                && *w != "I"
                && !w.starts_with("I'")
                && !w.starts_with("I\u{2019}")
                && w.chars().next().is_some_and(char::is_uppercase)
        })
        .count();
    score += (0.05 * names as f32).min(0.1);
    if let Some(e) = emotion
        && e.emotion != Emotion::Neutral
    {
        score += 0.1 * e.confidence;
    }
    // Length: very short messages carry little; long ones more, with diminishing returns.
    score += match words.len() {
        0..=3 => -0.1,
        4..=7 => 0.0,
        8..=20 => 0.05,
        _ => 0.08,
    };
    if text.trim_end().ends_with('?') && !words.iter().any(|w| FIRST_PERSON.contains(w)) {
        score -= 0.1;
    }
    score.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emotion::LexiconDetector;

    fn imp(t: &str) -> f32 {
        importance(t, Some(LexiconDetector.score(t)))
    }

    #[test]
    fn personal_facts_outrank_small_talk() {
        let ordered = [
            "My daughter Lily was born on 3 May 2019 and she is allergic to peanuts.",
            "I moved to Lisbon last month for a new job.",
            "The weather was fine today, went for a walk.",
            "what time is it?",
            "haha ok",
        ];
        let scores: Vec<f32> = ordered.iter().map(|t| imp(t)).collect();
        for w in scores.windows(2) {
            assert!(w[0] > w[1], "{ordered:?} scored {scores:?}");
        }
    }

    #[test]
    fn bounds_and_extremes() {
        assert_eq!(imp(""), 0.0);
        assert_eq!(imp("ok thanks!"), 0.05);
        for t in [
            "I",
            "My wife, my son and my dog moved with me to Porto on 1 June, I love it!",
        ] {
            let s = imp(t);
            assert!((0.0..=1.0).contains(&s), "{t}: {s}");
        }
    }

    /// A typographic apostrophe (’) reads as a plain one: "I’m" is not a name.
    #[test]
    fn typographic_apostrophes_read_as_plain_ones() {
        assert_eq!(
            imp("yes and I\u{2019}m glad we met"),
            imp("yes and I'm glad we met")
        );
    }

    #[test]
    fn strong_emotion_adds() {
        let t = "I told them about the results";
        let calm = importance(t, Some(EmotionScore::neutral(0.9)));
        let moved = importance(
            t,
            Some(EmotionScore {
                emotion: Emotion::Fear,
                confidence: 0.9,
            }),
        );
        assert!(moved > calm);
    }
}
