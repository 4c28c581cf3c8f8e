//! Retrieval: from a query to the memories worth putting in front of the model.
//!
//! Candidates come from vector search, full-text search (BM25), or both (`hybrid`); they are
//! fused, re-ranked with configurable signals (recency, importance, emotional match, optional
//! cross-encoder), thresholded, and diversified (MMR). Every stage is a plain function over
//! [`Candidate`]s, so that orderings can be tested without a store; [`crate::Engine::retrieve`]
//! runs them against a store.
use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::emotion::{Emotion, EmotionScore, emotion_match};
use crate::types::{Memory, Retrieved, Signals};
use crate::when::TimeWindow;

/// Metadata key under which the emotion detector's confidence is stored on a memory.
pub const EMOTION_CONFIDENCE_KEY: &str = "emotion_confidence";

mod event_time;
pub use event_time::{EVENT_WINDOWS_KEY, event_windows, in_windows, set_event_windows};

mod config;
pub use config::{
    Fusion, MAX_NEIGHBOURS, NEIGHBOURHOOD_CENTRES, RankingConfig, RetrieveOptions, SearchMode,
};

/// One candidate moving through the pipeline.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The memory.
    pub memory: Memory,
    /// Its stored vector, when loaded (for fusion and MMR).
    pub vector: Option<Vec<f32>>,
    /// Signals so far.
    pub signals: Signals,
    /// The score so far.
    pub score: f32,
}

/// Merges vector hits `(memory, similarity)` and text hits `(memory, bm25)`, each best first,
/// into candidates keyed by memory id, in first-seen order.
pub fn merge(vector: Vec<(Memory, f32)>, text: Vec<(Memory, f32)>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::with_capacity(vector.len() + text.len());
    let mut index: HashMap<i64, usize> = HashMap::new();
    for (rank, (memory, sim)) in vector.into_iter().enumerate() {
        index.insert(memory.id, out.len());
        out.push(Candidate {
            memory,
            vector: None,
            signals: Signals {
                similarity: Some(sim),
                vector_rank: Some(rank + 1),
                ..Signals::default()
            },
            score: 0.0,
        });
    }
    for (rank, (memory, bm25)) in text.into_iter().enumerate() {
        match index.get(&memory.id) {
            Some(&i) => {
                out[i].signals.bm25 = Some(bm25);
                out[i].signals.text_rank = Some(rank + 1);
            }
            None => {
                index.insert(memory.id, out.len());
                out.push(Candidate {
                    memory,
                    vector: None,
                    signals: Signals {
                        bm25: Some(bm25),
                        text_rank: Some(rank + 1),
                        ..Signals::default()
                    },
                    score: 0.0,
                });
            }
        }
    }
    out
}

/// Adds memories found another way (inside a time window, next to a hit) as candidates with
/// what is known of them, `(memory, similarity, bm25)`; for those already present, only what
/// they lacked is filled in.
pub fn add_candidates(
    candidates: &mut Vec<Candidate>,
    found: impl IntoIterator<Item = (Memory, Option<f32>, Option<f32>)>,
) {
    let mut at: HashMap<i64, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (c.memory.id, i))
        .collect();
    for (memory, similarity, bm25) in found {
        match at.get(&memory.id) {
            Some(&i) => {
                let s = &mut candidates[i].signals;
                s.similarity = s.similarity.or(similarity);
                s.bm25 = s.bm25.or(bm25);
            }
            None => {
                at.insert(memory.id, candidates.len());
                candidates.push(Candidate {
                    memory,
                    vector: None,
                    signals: Signals {
                        similarity,
                        bm25,
                        ..Signals::default()
                    },
                    score: 0.0,
                });
            }
        }
    }
}

/// Sets every candidate's relevance (and score) from the mode and fusion.
pub fn relevance(candidates: &mut [Candidate], mode: SearchMode, fusion: Fusion) {
    let max_bm25 = candidates
        .iter()
        .filter_map(|c| c.signals.bm25)
        .fold(0f32, f32::max);
    let bm25_share = |c: &Candidate| match c.signals.bm25 {
        Some(b) if max_bm25 > 0.0 => b / max_bm25,
        _ => 0.0,
    };
    for c in candidates.iter_mut() {
        let r = match mode {
            SearchMode::Vector => c.signals.similarity.unwrap_or(0.0),
            SearchMode::Text => bm25_share(c),
            SearchMode::Hybrid => match fusion {
                Fusion::Rrf { k } => {
                    let part = |rank: Option<usize>| rank.map_or(0.0, |r| 1.0 / (k + r as f32));
                    (part(c.signals.vector_rank) + part(c.signals.text_rank)) * (k + 1.0) / 2.0
                }
                Fusion::Weighted { alpha } => {
                    alpha * c.signals.similarity.unwrap_or(0.0) + (1.0 - alpha) * bm25_share(c)
                }
            },
        };
        c.signals.relevance = r;
        c.score = r;
    }
}

/// The emotion and its confidence stored on a memory, if any.
pub fn memory_emotion(m: &Memory) -> Option<(Emotion, f32)> {
    let e: Emotion = m.emotion.as_deref()?.parse().ok()?;
    let c = m
        .metadata
        .get(EMOTION_CONFIDENCE_KEY)
        .and_then(|v| v.as_f64())
        .unwrap_or(1.0) as f32;
    Some((e, c))
}

/// What a query says beyond its words: the windows of time and the names it mentions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryCues {
    /// Windows of time ([`crate::when::windows`]).
    pub windows: Vec<TimeWindow>,
    /// Names and quoted phrases ([`crate::text::query_entities`]).
    pub entities: Vec<String>,
    /// The query's emotion, when the emotion signal is on.
    pub emotion: Option<EmotionScore>,
    /// The query asks for a time ([`crate::when::asks_time`]), when the time-answer signal
    /// is on.
    pub asks_time: bool,
}

impl QueryCues {
    /// Reads the cues the configuration uses (the others stay empty).
    pub fn read(query: &str, now: DateTime<Utc>, config: &RankingConfig) -> Self {
        Self {
            windows: if config.time_weight > 0.0 {
                crate::when::windows(query, now)
            } else {
                vec![]
            },
            entities: if config.entity_weight > 0.0 || config.speaker_weight > 0.0 {
                crate::text::query_entities(query)
            } else {
                vec![]
            },
            emotion: None,
            asks_time: config.time_answer_weight > 0.0 && crate::when::asks_time(query),
        }
    }
}

/// Adds recency, importance, emotional match, time, entities, the speaker, a question's
/// penalty, content and the time answer to every candidate's score.
pub fn apply_signals(
    candidates: &mut [Candidate],
    config: &RankingConfig,
    now: DateTime<Utc>,
    cues: &QueryCues,
) {
    let query_emotion = cues.emotion;
    for c in candidates.iter_mut() {
        let age_days = (now - c.memory.created_at).num_seconds().max(0) as f32 / 86_400.0;
        c.signals.recency = if config.recency_half_life_days > 0.0 {
            0.5f32.powf(age_days / config.recency_half_life_days)
        } else {
            0.0
        };
        c.signals.importance = c.memory.importance;
        c.signals.emotion = query_emotion
            .map(|q| emotion_match(q, memory_emotion(&c.memory)))
            .unwrap_or(0.0);
        c.signals.time = if in_windows(&c.memory, &cues.windows) {
            1.0
        } else {
            0.0
        };
        c.signals.entity = crate::text::entity_share(&cues.entities, &c.memory.content);
        c.signals.speaker = if crate::text::said_by_named(&cues.entities, &c.memory.content) {
            1.0
        } else {
            0.0
        };
        c.signals.question = if crate::text::ends_with_question(&c.memory.content) {
            1.0
        } else {
            0.0
        };
        c.signals.content = if config.content_weight > 0.0 {
            crate::text::content_signal(&c.memory.content)
        } else {
            0.0
        };
        c.signals.time_answer = if cues.asks_time && crate::when::names_time(&c.memory.content) {
            1.0
        } else {
            0.0
        };
        c.score = c.signals.relevance - config.question_penalty * c.signals.question
            + config.content_weight * c.signals.content
            + config.time_answer_weight * c.signals.time_answer
            + config.recency_weight * c.signals.recency
            + config.importance_weight * c.signals.importance
            + config.emotion_weight * c.signals.emotion
            + config.time_weight * c.signals.time
            + config.entity_weight * c.signals.entity
            + config.speaker_weight * c.signals.speaker;
    }
}

/// The neighbourhood signal: for each link `(a, b)` between two candidates that are next to
/// each other in a session, each gets the other's relevance when it is the best next to it;
/// its score gains `weight` × that. Links to memories that are not candidates are ignored.
pub fn apply_neighbours(candidates: &mut [Candidate], links: &[(i64, i64)], weight: f32) {
    let at: HashMap<i64, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (c.memory.id, i))
        .collect();
    let mut best = vec![0f32; candidates.len()];
    for (a, b) in links {
        if let (Some(&i), Some(&j)) = (at.get(a), at.get(b))
            && i != j
        {
            best[i] = best[i].max(candidates[j].signals.relevance);
            best[j] = best[j].max(candidates[i].signals.relevance);
        }
    }
    for (c, b) in candidates.iter_mut().zip(best) {
        c.signals.neighbour = b;
        c.score += weight * b;
    }
}

/// Relevance and signals for merged candidates: the similarity of candidates found by text
/// alone (from their vector, when they carry one), the mode's relevance, then recency,
/// importance and emotional match. What comes before (candidates) and after (a cross-encoder,
/// [`finish`]) is the caller's; the engine and the in-memory index both score through this.
pub fn score(
    candidates: &mut [Candidate],
    query_vector: Option<&[f32]>,
    mode: SearchMode,
    config: &RankingConfig,
    now: DateTime<Utc>,
    cues: &QueryCues,
) {
    if let Some(q) = query_vector {
        for c in candidates.iter_mut() {
            if c.signals.similarity.is_none()
                && let Some(v) = &c.vector
            {
                c.signals.similarity = Some(crate::embed::cosine(q, v));
            }
        }
    }
    relevance(candidates, mode, config.fusion);
    apply_signals(candidates, config, now, cues);
}

/// Whether ranking with `config` in `mode` needs the candidates' stored vectors (for MMR, or
/// for the similarity of text-only candidates under weighted fusion).
pub fn needs_vectors(mode: SearchMode, config: &RankingConfig) -> bool {
    config.mmr_lambda.is_some_and(|l| l < 1.0)
        || (mode == SearchMode::Hybrid && matches!(config.fusion, Fusion::Weighted { .. }))
}

/// What a memory is given at ingest from its text, detected emotion and the time it was
/// written: an importance in [0, 1], the emotion's name, and metadata recording the
/// detector's confidence and the times the text names ([`EVENT_WINDOWS_KEY`]).
pub fn ingest_signals(
    text: &str,
    emotion: EmotionScore,
    said_at: DateTime<Utc>,
) -> (f32, String, serde_json::Value) {
    let mut metadata = serde_json::json!({
        EMOTION_CONFIDENCE_KEY: (emotion.confidence * 1000.0).round() / 1000.0
    });
    set_event_windows(&mut metadata, text, said_at);
    (
        crate::importance::importance(text, Some(emotion)),
        emotion.emotion.as_str().to_owned(),
        metadata,
    )
}

/// Blends cross-encoder probabilities (`scores[i]` for `candidates[i]`, as logits) into the
/// scores: `(1 - weight) · score + weight · sigmoid(logit)`.
pub fn apply_cross_encoder(candidates: &mut [Candidate], logits: &[f32], weight: f32) {
    for (c, &l) in candidates.iter_mut().zip(logits) {
        let p = 1.0 / (1.0 + (-l).exp());
        c.signals.cross_encoder = Some(p);
        c.score = (1.0 - weight) * c.score + weight * p;
    }
}

/// Sorts best first (ties by newer, then by id).
pub fn sort(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.memory.created_at.cmp(&a.memory.created_at))
            .then(a.memory.id.cmp(&b.memory.id))
    });
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    crate::embed::cosine(a, b)
}

/// Maximal marginal relevance: picks `k` candidates one by one, each maximising
/// `lambda · score' - (1 - lambda) · max similarity to those already picked`, where `score'` is
/// the score min-max normalised over the candidates. Candidates without a vector are never
/// considered similar to anything. Expects `candidates` sorted best first.
pub fn mmr(candidates: Vec<Candidate>, k: usize, lambda: f32) -> Vec<Candidate> {
    if candidates.len() <= 1 {
        return candidates.into_iter().take(k).collect();
    }
    let (lo, hi) = candidates.iter().fold((f32::MAX, f32::MIN), |(lo, hi), c| {
        (lo.min(c.score), hi.max(c.score))
    });
    let norm = |s: f32| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
    let mut left: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
    let mut max_sim = vec![0f32; left.len()];
    let mut picked = Vec::with_capacity(k);
    while picked.len() < k {
        let best = left
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.as_ref()
                    .map(|c| (i, lambda * norm(c.score) - (1.0 - lambda) * max_sim[i]))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some((i, _)) = best else { break };
        let chosen = left[i].take().expect("present");
        if let Some(v) = &chosen.vector {
            for (j, c) in left.iter().enumerate() {
                if let Some(Candidate {
                    vector: Some(w), ..
                }) = c
                {
                    max_sim[j] = max_sim[j].max(cos(v, w));
                }
            }
        }
        picked.push(chosen);
    }
    picked
}

/// The final stage: threshold, then MMR or plain truncation to `k`.
pub fn finish(mut candidates: Vec<Candidate>, k: usize, config: &RankingConfig) -> Vec<Retrieved> {
    sort(&mut candidates);
    if let Some(min) = config.min_score {
        candidates.retain(|c| c.score >= min);
    }
    let chosen = match config.mmr_lambda {
        Some(l) if l < 1.0 => mmr(candidates, k, l),
        _ => {
            candidates.truncate(k);
            candidates
        }
    };
    chosen
        .into_iter()
        .map(|c| Retrieved {
            memory: c.memory,
            score: c.score,
            signals: c.signals,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use serde_json::json;

    use super::*;
    use crate::types::MemoryKind;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000, 0).unwrap()
    }

    fn memory(id: i64, days_ago: i64, importance: f32, emotion: Option<&str>) -> Memory {
        let t = now() - Duration::days(days_ago);
        Memory {
            id,
            kind: MemoryKind::Message,
            content: format!("memory {id}"),
            session: Some("s".into()),
            message_id: Some(id),
            summary_id: None,
            role: None,
            tags: vec![],
            metadata: json!({ EMOTION_CONFIDENCE_KEY: 0.8 }),
            importance,
            emotion: emotion.map(str::to_owned),
            created_at: t,
            updated_at: t,
            expires_at: None,
            supersedes: None,
            superseded_by: None,
            superseded_at: None,
            key_for: None,
        }
    }

    /// A memory saying `text`, written now.
    fn said(id: i64, text: &str) -> Memory {
        Memory {
            content: text.to_owned(),
            ..memory(id, 0, 0.5, None)
        }
    }

    fn ids(r: &[Retrieved]) -> Vec<i64> {
        r.iter().map(|r| r.memory.id).collect()
    }

    #[test]
    fn rrf_rewards_agreement_between_lists() {
        let m = |id| memory(id, 0, 0.5, None);
        let mut c = merge(
            vec![(m(1), 0.9), (m(2), 0.8), (m(3), 0.7)],
            vec![(m(3), 9.0), (m(4), 5.0), (m(1), 1.0)],
        );
        relevance(&mut c, SearchMode::Hybrid, Fusion::Rrf { k: 60.0 });
        let out = finish(c, 4, &RankingConfig::plain());
        // 1: 1/61 + 1/63; 3: 1/63 + 1/61 (tie, broken by id); 2: 1/62; 4: 1/62.
        assert_eq!(ids(&out), vec![1, 3, 2, 4]);
        let top = &out[0].signals;
        assert_eq!((top.vector_rank, top.text_rank), (Some(1), Some(3)));
        // First in both lists would score exactly 1.
        let mut both = merge(vec![(m(9), 0.5)], vec![(m(9), 3.0)]);
        relevance(&mut both, SearchMode::Hybrid, Fusion::Rrf { k: 60.0 });
        assert!((both[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn modes_use_their_own_relevance() {
        let m = |id| memory(id, 0, 0.5, None);
        let build = || {
            merge(
                vec![(m(1), 0.9), (m(2), 0.3)],
                vec![(m(2), 8.0), (m(3), 4.0)],
            )
        };
        let mut v = build();
        relevance(&mut v, SearchMode::Vector, Fusion::default());
        assert_eq!(ids(&finish(v, 3, &RankingConfig::plain())), vec![1, 2, 3]);
        let mut t = build();
        relevance(&mut t, SearchMode::Text, Fusion::default());
        let out = finish(t, 3, &RankingConfig::plain());
        assert_eq!(ids(&out), vec![2, 3, 1]);
        assert_eq!(out[1].score, 0.5);
        // Weighted: 0.5·sim + 0.5·share → 1: 0.45, 2: 0.65, 3: 0.25.
        let mut w = build();
        relevance(&mut w, SearchMode::Hybrid, Fusion::Weighted { alpha: 0.5 });
        assert_eq!(ids(&finish(w, 3, &RankingConfig::plain())), vec![2, 1, 3]);
    }

    #[test]
    fn vector_mode_reports_raw_similarity() {
        let mut c = merge(vec![(memory(1, 0, 0.5, None), 0.7312)], vec![]);
        relevance(&mut c, SearchMode::Vector, Fusion::default());
        let out = finish(c, 1, &RankingConfig::plain());
        assert_eq!(out[0].score, 0.7312);
        assert_eq!(out[0].signals.similarity, Some(0.7312));
    }

    fn ranked(
        config: &RankingConfig,
        emotion: Option<EmotionScore>,
        c: Vec<Candidate>,
    ) -> Vec<i64> {
        let mut c = c;
        relevance(&mut c, SearchMode::Vector, Fusion::default());
        let cues = QueryCues {
            emotion,
            ..QueryCues::default()
        };
        apply_signals(&mut c, config, now(), &cues);
        ids(&finish(c, 10, config))
    }

    #[test]
    fn recency_breaks_near_ties_towards_newer_and_can_be_switched_off() {
        let c = merge(
            vec![
                (memory(1, 300, 0.5, None), 0.80),
                (memory(2, 1, 0.5, None), 0.79),
            ],
            vec![],
        );
        let on = RankingConfig {
            recency_weight: 0.1,
            ..RankingConfig::plain()
        };
        assert_eq!(ranked(&on, None, c.clone()), vec![2, 1]);
        assert_eq!(ranked(&RankingConfig::plain(), None, c), vec![1, 2]);
    }

    #[test]
    fn content_lifts_a_turn_that_says_something_over_a_closing() {
        // A closing whose vector is mostly its speaker's name matches a question naming them
        // a little better than the turn that answers it.
        let c = merge(
            vec![
                (said(1, "Nate: Take care!"), 0.55),
                (
                    said(
                        2,
                        "Nate: I got a Nintendo Switch last month, I play it every night.",
                    ),
                    0.50,
                ),
            ],
            vec![],
        );
        let on = RankingConfig {
            content_weight: 0.3,
            ..RankingConfig::plain()
        };
        assert_eq!(ranked(&RankingConfig::plain(), None, c.clone()), vec![1, 2]);
        assert_eq!(ranked(&on, None, c.clone()), vec![2, 1]);
        let mut scored = c;
        relevance(&mut scored, SearchMode::Vector, Fusion::default());
        apply_signals(&mut scored, &on, now(), &QueryCues::default());
        for s in &scored {
            let content = crate::text::content_signal(&s.memory.content);
            assert_eq!(s.signals.content, content);
            let want = s.signals.relevance + 0.3 * content;
            assert!((s.score - want).abs() < 1e-6, "{s:?}");
        }
        assert!(scored[0].signals.content < scored[1].signals.content);
    }

    #[test]
    fn a_question_that_asks_when_lifts_turns_that_name_a_time() {
        let c = merge(
            vec![
                (said(1, "Nate: The turtles love their new tank."), 0.52),
                (said(2, "Nate: I got the turtles three years ago."), 0.50),
            ],
            vec![],
        );
        let on = RankingConfig {
            time_answer_weight: 0.1,
            ..RankingConfig::plain()
        };
        let scored = |query: &str| {
            let mut c = c.clone();
            relevance(&mut c, SearchMode::Vector, Fusion::default());
            apply_signals(&mut c, &on, now(), &QueryCues::read(query, now(), &on));
            sort(&mut c);
            c
        };
        let when = scored("When did Nate get his turtles?");
        assert_eq!(when.iter().map(|c| c.memory.id).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(
            when.iter()
                .map(|c| c.signals.time_answer)
                .collect::<Vec<_>>(),
            [1.0, 0.0]
        );
        assert!((when[0].score - (0.50 + 0.1)).abs() < 1e-6);
        // A question that does not ask for a time, or a ranking without the signal, reads
        // no answer type.
        let what = scored("What does Nate keep his turtles in?");
        assert_eq!(what.iter().map(|c| c.memory.id).collect::<Vec<_>>(), [1, 2]);
        assert!(what.iter().all(|c| c.signals.time_answer == 0.0));
        assert!(
            !QueryCues::read(
                "When did Nate get his turtles?",
                now(),
                &RankingConfig::plain()
            )
            .asks_time
        );
    }

    #[test]
    fn recency_halves_every_half_life() {
        let mut c = merge(vec![(memory(1, 30, 0.5, None), 0.5)], vec![]);
        relevance(&mut c, SearchMode::Vector, Fusion::default());
        apply_signals(
            &mut c,
            &RankingConfig::default(),
            now(),
            &QueryCues::default(),
        );
        assert!(
            (c[0].signals.recency - 0.5).abs() < 0.01,
            "{}",
            c[0].signals.recency
        );
    }

    #[test]
    fn importance_lifts_important_memories() {
        let c = merge(
            vec![
                (memory(1, 0, 0.1, None), 0.80),
                (memory(2, 0, 0.9, None), 0.78),
            ],
            vec![],
        );
        let on = RankingConfig {
            importance_weight: 0.1,
            ..RankingConfig::plain()
        };
        assert_eq!(ranked(&on, None, c.clone()), vec![2, 1]);
        assert_eq!(ranked(&RankingConfig::plain(), None, c), vec![1, 2]);
    }

    #[test]
    fn emotional_match_lifts_memories_with_the_query_emotion() {
        let c = merge(
            vec![
                (memory(1, 0, 0.5, Some("joy")), 0.80),
                (memory(2, 0, 0.5, Some("fear")), 0.78),
                (memory(3, 0, 0.5, None), 0.79),
            ],
            vec![],
        );
        let on = RankingConfig {
            emotion_weight: 0.1,
            ..RankingConfig::plain()
        };
        let fear = EmotionScore {
            emotion: Emotion::Fear,
            confidence: 0.9,
        };
        assert_eq!(ranked(&on, Some(fear), c.clone()), vec![2, 1, 3]);
        assert_eq!(
            ranked(&on, Some(EmotionScore::neutral(0.9)), c),
            vec![1, 3, 2]
        );
    }

    #[test]
    fn mmr_skips_near_duplicates() {
        let mut c = merge(
            vec![
                (memory(1, 0, 0.5, None), 0.90),
                (memory(2, 0, 0.5, None), 0.89),
                (memory(3, 0, 0.5, None), 0.80),
            ],
            vec![],
        );
        c[0].vector = Some(vec![1.0, 0.0]);
        c[1].vector = Some(vec![0.999, 0.04]);
        c[2].vector = Some(vec![0.0, 1.0]);
        relevance(&mut c, SearchMode::Vector, Fusion::default());
        let diverse = RankingConfig {
            mmr_lambda: Some(0.5),
            ..RankingConfig::plain()
        };
        assert_eq!(ids(&finish(c.clone(), 3, &diverse)), vec![1, 3, 2]);
        assert_eq!(ids(&finish(c, 3, &RankingConfig::plain())), vec![1, 2, 3]);
    }

    #[test]
    fn threshold_drops_weak_results() {
        let mut c = merge(
            vec![
                (memory(1, 0, 0.5, None), 0.9),
                (memory(2, 0, 0.5, None), 0.2),
            ],
            vec![],
        );
        relevance(&mut c, SearchMode::Vector, Fusion::default());
        let cfg = RankingConfig {
            min_score: Some(0.5),
            ..RankingConfig::plain()
        };
        assert_eq!(ids(&finish(c, 10, &cfg)), vec![1]);
    }

    #[test]
    fn cross_encoder_reorders_the_candidates_it_scores() {
        let mut c = merge(
            vec![
                (memory(1, 0, 0.5, None), 0.8),
                (memory(2, 0, 0.5, None), 0.7),
            ],
            vec![],
        );
        relevance(&mut c, SearchMode::Vector, Fusion::default());
        apply_cross_encoder(&mut c, &[-4.0, 4.0], 0.5);
        assert_eq!(ids(&finish(c, 2, &RankingConfig::plain())), vec![2, 1]);
    }

    #[test]
    fn config_validation() {
        assert!(RankingConfig::default().validate().is_ok());
        let bad = [
            RankingConfig {
                recency_weight: -1.0,
                ..RankingConfig::default()
            },
            RankingConfig {
                mmr_lambda: Some(1.5),
                ..RankingConfig::default()
            },
            RankingConfig {
                fusion: Fusion::Weighted { alpha: 2.0 },
                ..RankingConfig::default()
            },
            RankingConfig {
                candidates: 0,
                ..RankingConfig::default()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
        assert_eq!("hybrid".parse::<SearchMode>().unwrap(), SearchMode::Hybrid);
        assert!("fuzzy".parse::<SearchMode>().is_err());
    }

    #[test]
    fn neighbours_lend_their_relevance_both_ways() {
        let m = |id| memory(id, 0, 0.5, None);
        let mut c = merge(vec![(m(1), 0.9), (m(2), 0.2), (m(3), 0.5)], vec![]);
        add_candidates(
            &mut c,
            [(m(4), Some(0.1), None), (m(1), Some(0.0), Some(2.0))],
        );
        assert_eq!(c.len(), 4, "a memory already present is not added twice");
        assert_eq!(c[0].signals.similarity, Some(0.9), "what was known stays");
        assert_eq!(
            c[0].signals.bm25,
            Some(2.0),
            "what was missing is filled in"
        );
        c[0].signals.bm25 = None;
        relevance(&mut c, SearchMode::Vector, Fusion::default());
        // 1–2 are next to each other, and 2–4; 3 has a neighbour that is not a candidate.
        apply_neighbours(&mut c, &[(1, 2), (2, 4), (3, 99)], 0.5);
        let n: Vec<f32> = c.iter().map(|c| c.signals.neighbour).collect();
        assert_eq!(n, vec![0.2, 0.9, 0.0, 0.2]);
        let out = finish(c, 4, &RankingConfig::plain());
        // 2: 0.2 + 0.45 = 0.65 now beats 3 (0.5).
        assert_eq!(ids(&out), vec![1, 2, 3, 4]);
        assert!((out[1].score - 0.65).abs() < 1e-6);
    }

    #[test]
    fn time_and_entity_signals() {
        let m = memory(1, 3, 0.5, None);
        let at = m.created_at;
        let mut c = merge(vec![(m, 0.5)], vec![]);
        relevance(&mut c, SearchMode::Vector, Fusion::default());
        let cues = QueryCues {
            windows: vec![TimeWindow {
                since: at - chrono::Duration::days(1),
                until: at + chrono::Duration::days(1),
            }],
            entities: vec!["memory".into(), "zeta".into()],
            emotion: None,
            asks_time: false,
        };
        let config = RankingConfig {
            time_weight: 0.2,
            entity_weight: 0.1,
            ..RankingConfig::plain()
        };
        apply_signals(&mut c, &config, now(), &cues);
        assert_eq!((c[0].signals.time, c[0].signals.entity), (1.0, 0.5));
        assert!((c[0].score - (0.5 + 0.2 + 0.05)).abs() < 1e-6);
        // Plain ranking reads no cues.
        let none = QueryCues::read(
            "what did Zeta say on 1 May 2023?",
            now(),
            &RankingConfig::plain(),
        );
        assert_eq!(none, QueryCues::default());
        let some = QueryCues::read(
            "what did Zeta say on 1 May 2023?",
            now(),
            &RankingConfig::default(),
        );
        assert_eq!(
            (some.windows.len(), some.entities),
            (1, vec!["zeta".to_owned()])
        );
    }
}
