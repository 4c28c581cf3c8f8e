//! Emotion detection: which of seven emotions (Ekman's six plus neutral) a text expresses, with
//! a confidence in [0, 1].
//!
//! [`LexiconDetector`] is the built-in baseline: a hand-made English lexicon (word stems and
//! emoji), with negation ("not happy" does not count as joy) and intensifiers ("so", "really")
//! handled in a small window. A transformer classifier can replace it through the
//! [`EmotionDetector`] trait (see [`crate::rerank::ClassifierEmotionDetector`]).
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::text::{lower_words, stemmer};

/// One of the seven emotions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Emotion {
    /// Happiness, gratitude, love, pride, relief.
    Joy,
    /// Grief, loneliness, disappointment.
    Sadness,
    /// Irritation, rage, frustration.
    Anger,
    /// Worry, anxiety, dread.
    Fear,
    /// Astonishment, shock (good or bad).
    Surprise,
    /// Revulsion, contempt.
    Disgust,
    /// None of the above.
    Neutral,
}

impl Emotion {
    /// Every emotion, neutral last.
    pub const ALL: [Emotion; 7] = [
        Emotion::Joy,
        Emotion::Sadness,
        Emotion::Anger,
        Emotion::Fear,
        Emotion::Surprise,
        Emotion::Disgust,
        Emotion::Neutral,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Emotion::Joy => "joy",
            Emotion::Sadness => "sadness",
            Emotion::Anger => "anger",
            Emotion::Fear => "fear",
            Emotion::Surprise => "surprise",
            Emotion::Disgust => "disgust",
            Emotion::Neutral => "neutral",
        }
    }
}

impl fmt::Display for Emotion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Emotion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let lower = s.trim().to_ascii_lowercase();
        Emotion::ALL
            .into_iter()
            .find(|e| e.as_str() == lower)
            .or(match lower.as_str() {
                // Labels used by common emotion classifiers.
                "happy" | "happiness" | "love" => Some(Emotion::Joy),
                "sad" => Some(Emotion::Sadness),
                "angry" => Some(Emotion::Anger),
                "scared" | "afraid" => Some(Emotion::Fear),
                "surprised" => Some(Emotion::Surprise),
                "disgusted" => Some(Emotion::Disgust),
                _ => None,
            })
            .ok_or_else(|| Error::invalid(format!("unknown emotion {s:?}")))
    }
}

/// What a detector found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmotionScore {
    /// The dominant emotion.
    pub emotion: Emotion,
    /// How sure the detector is, in [0, 1].
    pub confidence: f32,
}

impl EmotionScore {
    /// Neutral with the given confidence.
    pub fn neutral(confidence: f32) -> Self {
        Self {
            emotion: Emotion::Neutral,
            confidence,
        }
    }
}

/// Detects the emotion of texts.
#[async_trait::async_trait]
pub trait EmotionDetector: Send + Sync {
    /// One score per text, in order.
    async fn detect(&self, texts: &[&str]) -> crate::error::Result<Vec<EmotionScore>>;

    /// A short name for reports (`lexicon`, or the model's).
    fn name(&self) -> &str;
}

/// Word stems (Snowball English) and the emotion they signal, with a weight.
const LEXICON: &[(Emotion, f32, &[&str])] = &[
    (
        Emotion::Joy,
        1.0,
        &[
            "happy",
            "happiness",
            "glad",
            "joy",
            "joyful",
            "delighted",
            "thrilled",
            "excited",
            "exciting",
            "love",
            "loved",
            "lovely",
            "wonderful",
            "amazing",
            "awesome",
            "great",
            "fantastic",
            "grateful",
            "thankful",
            "proud",
            "relieved",
            "celebrate",
            "celebrating",
            "yay",
            "hooray",
            "fun",
            "enjoy",
            "enjoyed",
            "beautiful",
            "perfect",
            "best",
            "blessed",
            "cheerful",
            "ecstatic",
            "stoked",
            "smile",
            "smiling",
            "laugh",
            "laughing",
            "brilliant",
            "overjoyed",
            "adore",
            "pleased",
            "win",
            "won",
            "congrats",
            "congratulations",
            "woohoo",
        ],
    ),
    (
        Emotion::Sadness,
        1.0,
        &[
            "sad",
            "sadness",
            "unhappy",
            "depressed",
            "depressing",
            "miserable",
            "heartbroken",
            "grief",
            "grieving",
            "cry",
            "cried",
            "crying",
            "tears",
            "lonely",
            "alone",
            "miss",
            "missed",
            "missing",
            "loss",
            "sorry",
            "hurt",
            "hurts",
            "gloomy",
            "disappointed",
            "disappointing",
            "devastated",
            "died",
            "death",
            "funeral",
            "sorrow",
            "regret",
            "hopeless",
            "upset",
            "breakup",
            "homesick",
            "mourn",
            "mourning",
        ],
    ),
    (
        Emotion::Anger,
        1.0,
        &[
            "angry",
            "anger",
            "furious",
            "mad",
            "annoyed",
            "annoying",
            "irritated",
            "irritating",
            "frustrated",
            "frustrating",
            "rage",
            "outraged",
            "hate",
            "hated",
            "livid",
            "pissed",
            "infuriating",
            "resent",
            "unfair",
            "ridiculous",
            "sick",
            "yelled",
            "shouted",
            "fuming",
            "argument",
            "argued",
            "rude",
            "betrayed",
        ],
    ),
    (
        Emotion::Fear,
        1.0,
        &[
            "afraid",
            "scared",
            "scary",
            "fear",
            "frightened",
            "terrified",
            "terrifying",
            "anxious",
            "anxiety",
            "worried",
            "worry",
            "worrying",
            "nervous",
            "panic",
            "panicked",
            "dread",
            "dreading",
            "uneasy",
            "stressed",
            "stress",
            "stressful",
            "nightmare",
            "threat",
            "danger",
            "dangerous",
            "freaked",
            "petrified",
            "overwhelmed",
        ],
    ),
    (
        Emotion::Surprise,
        1.0,
        &[
            "surprised",
            "surprise",
            "surprising",
            "shocked",
            "shocking",
            "astonished",
            "amazed",
            "unexpected",
            "unexpectedly",
            "suddenly",
            "wow",
            "whoa",
            "omg",
            "unbelievable",
            "stunned",
            "speechless",
            "startled",
            "wtf",
        ],
    ),
    (
        Emotion::Disgust,
        1.0,
        &[
            "disgusting",
            "disgusted",
            "disgust",
            "gross",
            "revolting",
            "nasty",
            "vile",
            "repulsive",
            "yuck",
            "ew",
            "eww",
            "sickening",
            "nauseating",
            "filthy",
            "rotten",
            "creepy",
            "stink",
            "stinks",
            "smelly",
            "repulsed",
            "appalled",
            "moldy",
            "mouldy",
        ],
    ),
];

/// Emoji and the emotion they signal.
const EMOJI: &[(char, Emotion)] = &[
    ('😀', Emotion::Joy),
    ('😃', Emotion::Joy),
    ('😄', Emotion::Joy),
    ('😁', Emotion::Joy),
    ('😊', Emotion::Joy),
    ('😂', Emotion::Joy),
    ('🥰', Emotion::Joy),
    ('😍', Emotion::Joy),
    ('🎉', Emotion::Joy),
    ('❤', Emotion::Joy),
    ('😢', Emotion::Sadness),
    ('😭', Emotion::Sadness),
    ('😞', Emotion::Sadness),
    ('💔', Emotion::Sadness),
    ('😠', Emotion::Anger),
    ('😡', Emotion::Anger),
    ('🤬', Emotion::Anger),
    ('😨', Emotion::Fear),
    ('😰', Emotion::Fear),
    ('😱', Emotion::Fear),
    ('😮', Emotion::Surprise),
    ('😲', Emotion::Surprise),
    ('🤯', Emotion::Surprise),
    ('🤢', Emotion::Disgust),
    ('🤮', Emotion::Disgust),
];

/// Words that negate the emotion words that follow them (within [`NEGATION_WINDOW`]).
const NEGATORS: &[&str] = &[
    "not", "no", "never", "nothing", "hardly", "barely", "without", "dont", "don't", "didnt",
    "didn't", "isnt", "isn't", "wasnt", "wasn't", "arent", "aren't", "cant", "can't", "wont",
    "won't", "aint", "ain't", "neither", "nor",
];
const NEGATION_WINDOW: usize = 3;

/// Words that strengthen the next emotion word.
const INTENSIFIERS: &[&str] = &[
    "so",
    "very",
    "really",
    "extremely",
    "super",
    "incredibly",
    "totally",
    "absolutely",
    "truly",
    "utterly",
    "completely",
    "deeply",
];

fn lexicon() -> &'static HashMap<String, (Emotion, f32)> {
    static MAP: OnceLock<HashMap<String, (Emotion, f32)>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::new();
        for (emotion, weight, words) in LEXICON {
            for w in *words {
                map.entry(stemmer().stem(w).into_owned())
                    .or_insert((*emotion, *weight));
            }
        }
        map
    })
}

/// The built-in lexicon detector. Confidence is the winning emotion's share of the evidence,
/// shrunk towards zero when there is little of it: one plain emotion word gives 0.67, two 0.8.
/// A text with no emotion words is neutral with confidence 0.5.
#[derive(Debug, Default, Clone, Copy)]
pub struct LexiconDetector;

impl LexiconDetector {
    /// The score of one text.
    pub fn score(&self, text: &str) -> EmotionScore {
        let mut totals: HashMap<Emotion, f32> = HashMap::new();
        for c in text.chars() {
            if let Some((_, e)) = EMOJI.iter().find(|(ch, _)| *ch == c) {
                *totals.entry(*e).or_default() += 1.0;
            }
        }
        let lower = crate::text::lower_text(text);
        let words = lower_words(&lower);
        let mut negated_until = 0usize;
        let mut boost = 1.0f32;
        for (i, w) in words.iter().enumerate() {
            if NEGATORS.contains(w) {
                negated_until = i + 1 + NEGATION_WINDOW;
                continue;
            }
            if INTENSIFIERS.contains(w) {
                boost = 1.5;
                continue;
            }
            if let Some((emotion, weight)) = lexicon().get(stemmer().stem(w).as_ref()) {
                if i >= negated_until {
                    *totals.entry(*emotion).or_default() += weight * boost;
                }
                negated_until = 0;
            }
            boost = 1.0;
        }
        let total: f32 = totals.values().sum();
        let best = totals
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        match best {
            Some((emotion, score)) if total > 0.0 => EmotionScore {
                emotion,
                confidence: (score / (total + 0.5)).min(1.0),
            },
            _ => EmotionScore::neutral(0.5),
        }
    }
}

#[async_trait::async_trait]
impl EmotionDetector for LexiconDetector {
    async fn detect(&self, texts: &[&str]) -> crate::error::Result<Vec<EmotionScore>> {
        Ok(texts.iter().map(|t| self.score(t)).collect())
    }

    fn name(&self) -> &str {
        "lexicon"
    }
}

/// How well a memory's emotion matches the query's, in [0, 1]: the product of both
/// confidences when they name the same non-neutral emotion, else 0.
pub fn emotion_match(query: EmotionScore, memory: Option<(Emotion, f32)>) -> f32 {
    match memory {
        Some((e, c)) if e == query.emotion && e != Emotion::Neutral => query.confidence * c,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(text: &str) -> Emotion {
        LexiconDetector.score(text).emotion
    }

    #[test]
    fn detects_each_emotion() {
        assert_eq!(top("I'm so happy, we got the flat!"), Emotion::Joy);
        assert_eq!(top("I cried all night after the funeral"), Emotion::Sadness);
        assert_eq!(top("I'm furious, they cancelled again"), Emotion::Anger);
        assert_eq!(top("I'm terrified of the surgery tomorrow"), Emotion::Fear);
        assert_eq!(
            top("Wow, I did not see that coming, totally unexpected"),
            Emotion::Surprise
        );
        assert_eq!(
            top("The fridge smelled disgusting, mouldy cheese everywhere"),
            Emotion::Disgust
        );
        assert_eq!(top("The meeting is at 10 in room 4"), Emotion::Neutral);
        assert_eq!(top("that was 😭"), Emotion::Sadness);
    }

    #[test]
    fn negation_cancels_the_emotion_word() {
        assert_eq!(top("I'm not happy about it"), Emotion::Neutral);
        assert_eq!(top("I wasn't scared at all"), Emotion::Neutral);
        // Typed on a phone, with typographic apostrophes: the same negation, and "won’t" is
        // not a win.
        assert_eq!(top("I wasn\u{2019}t happy"), Emotion::Neutral);
        assert_eq!(
            top("I won\u{2019}t go back, the whole thing, I\u{2019}m furious"),
            Emotion::Anger
        );
        // The window ends: a later emotion word counts.
        assert_eq!(
            top("not that it matters much, but I'm thrilled"),
            Emotion::Joy
        );
    }

    #[test]
    fn confidence_grows_with_evidence_and_falls_with_mixture() {
        let one = LexiconDetector.score("I'm glad").confidence;
        let two = LexiconDetector.score("I'm glad and proud").confidence;
        let mixed = LexiconDetector.score("I'm glad but also sad").confidence;
        let intense = LexiconDetector.score("I'm so glad").confidence;
        assert!(two > one && one > mixed, "{one} {two} {mixed}");
        assert!(intense > one, "{intense} {one}");
        assert!((one - 1.0 / 1.5).abs() < 1e-6);
        assert_eq!(LexiconDetector.score("nothing here").confidence, 0.5);
    }

    #[test]
    fn names_parse_including_classifier_aliases() {
        for e in Emotion::ALL {
            assert_eq!(e.as_str().parse::<Emotion>().unwrap(), e);
        }
        assert_eq!("Happy".parse::<Emotion>().unwrap(), Emotion::Joy);
        assert!("meh".parse::<Emotion>().is_err());
    }

    #[test]
    fn match_needs_the_same_non_neutral_emotion() {
        let q = EmotionScore {
            emotion: Emotion::Fear,
            confidence: 0.8,
        };
        assert!((emotion_match(q, Some((Emotion::Fear, 0.5))) - 0.4).abs() < 1e-6);
        assert_eq!(emotion_match(q, Some((Emotion::Joy, 0.9))), 0.0);
        assert_eq!(emotion_match(q, None), 0.0);
        assert_eq!(
            emotion_match(EmotionScore::neutral(0.9), Some((Emotion::Neutral, 0.9))),
            0.0
        );
    }
}
