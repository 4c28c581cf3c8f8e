//! What a retrieval is asked for: the mode, the fusion, the ranking's signals and weights
//! ([`RankingConfig`]), and the options every front door passes ([`RetrieveOptions`]).
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::Filter;

/// Which retrievers produce candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Embedding similarity only; the relevance is the raw similarity (cosine by default).
    Vector,
    /// Full-text (BM25) only.
    Text,
    /// Both, fused.
    #[default]
    Hybrid,
}

impl SearchMode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Vector => "vector",
            SearchMode::Text => "text",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for SearchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SearchMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vector" => Ok(SearchMode::Vector),
            "text" => Ok(SearchMode::Text),
            "hybrid" => Ok(SearchMode::Hybrid),
            _ => Err(Error::invalid(format!(
                "unknown search mode {s:?} (vector, text or hybrid)"
            ))),
        }
    }
}

/// How hybrid search fuses its two candidate lists.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Fusion {
    /// Reciprocal rank fusion: `Σ 1 / (k + rank)`, normalised so that first in both lists
    /// scores 1.
    Rrf {
        /// The rank offset (60 in the original paper).
        k: f32,
    },
    /// A convex combination of scores: `alpha · similarity + (1 - alpha) · bm25 / max bm25`.
    /// Every candidate's similarity is computed from its stored vector, so text-only
    /// candidates are not penalised for missing from the vector list.
    Weighted {
        /// Weight of the vector similarity, in [0, 1].
        alpha: f32,
    },
}

/// Weighted fusion with alpha 0.7: on the evaluation harness it beat RRF, which let the weaker
/// text list drag strong vector matches down (docs/benchmarks.md has the figures).
impl Default for Fusion {
    fn default() -> Self {
        Fusion::Weighted {
            alpha: Fusion::WEIGHTED_ALPHA,
        }
    }
}

impl Fusion {
    /// Weighted fusion's alpha when none is given.
    pub const WEIGHTED_ALPHA: f32 = 0.7;
    /// RRF's k when none is given (the original paper's).
    pub const RRF_K: f32 = 60.0;

    /// The same method with its parameter set (RRF's k, or weighted fusion's alpha).
    pub fn with_param(self, param: f32) -> Self {
        match self {
            Fusion::Rrf { .. } => Fusion::Rrf { k: param },
            Fusion::Weighted { .. } => Fusion::Weighted { alpha: param },
        }
    }
}

/// Re-ranking signals and their weights; a weight of 0 (or `None`) switches a signal off.
///
/// The final score is
/// `relevance + recency_weight · recency + importance_weight · importance + emotion_weight ·
/// emotion_match + time_weight · time + entity_weight · entity + speaker_weight · speaker −
/// question_penalty · question + content_weight · content + time_answer_weight · time_answer +
/// neighbour_weight · neighbour`,
/// where relevance comes from the mode (similarity, BM25 share, or fusion), recency is
/// `0.5^(age / half-life)`, and the other signals are in [0, 1] (see
/// [`crate::types::Signals`]). A cross-encoder, when configured, then blends its probability
/// into the top candidates; MMR picks the final order. The defaults of the time, entity,
/// speaker, question, content and neighbourhood signals come from the LoCoMo dev set
/// (docs/benchmarks.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RankingConfig {
    /// Candidates taken from each retriever.
    pub candidates: usize,
    /// Hybrid fusion.
    pub fusion: Fusion,
    /// Half-life of the recency signal in days.
    pub recency_half_life_days: f32,
    /// Weight of recency.
    pub recency_weight: f32,
    /// Weight of the memory's importance.
    pub importance_weight: f32,
    /// Weight of the emotional match between query and memory.
    pub emotion_weight: f32,
    /// MMR trade-off between relevance (1.0) and diversity (0.0); `None` keeps score order.
    pub mmr_lambda: Option<f32>,
    /// Drop results whose final score is below this (in vector mode with no other signal,
    /// this is a similarity threshold).
    pub min_score: Option<f32>,
    /// Candidates re-scored by the cross-encoder (when one is configured).
    pub cross_encoder_top_n: usize,
    /// Weight of the cross-encoder's probability against the score so far, in [0, 1].
    pub cross_encoder_weight: f32,
    /// Weight of the time signal: the query names a window of time ("in May 2023", "last
    /// week") and the memory was written in it. Such a query also searches inside its
    /// windows for candidates.
    pub time_weight: f32,
    /// Weight of the entity signal: the share of the query's names and quoted phrases that
    /// the memory mentions. Off by default: at the other defaults BM25 (a name is a rare
    /// term) and the speaker signal already read the names, and on the LoCoMo dev set and the
    /// hand-written set this adds nothing (docs/benchmarks.md, "Each technique taken out").
    pub entity_weight: f32,
    /// Weight of the speaker signal: the memory was said by someone the query names (its
    /// text starts with their label, "Melanie: …"; [`crate::text::said_by_named`]). A
    /// question about a person is mostly answered by what they said, not by the turns that
    /// address them.
    pub speaker_weight: f32,
    /// Subtracted from the score of a memory that ends with a question: a question asks
    /// rather than tells, and in a conversation the answer is usually the next turn (which
    /// the neighbourhood signal still lifts through the question's relevance).
    pub question_penalty: f32,
    /// Weight of the content signal: how much a memory says (its content words on a log
    /// scale). A short closing ("Nate: Take care!") matches any question that names its
    /// speaker, and rarely answers one.
    pub content_weight: f32,
    /// Weight of the time-answer signal: the query asks for a time ("When did…", "How long
    /// has…": [`crate::when::asks_time`]) and the memory names one ("yesterday", "for 3
    /// years": [`crate::when::names_time`]) — the answer type of the question.
    pub time_answer_weight: f32,
    /// Turns on each side of the best candidates read as their neighbourhood (0 to
    /// [`MAX_NEIGHBOURS`]): the neighbours join the candidates, and each candidate's score
    /// gains `neighbour_weight` × the best relevance next to it (a question often names
    /// the turn before its answer).
    pub neighbours: usize,
    /// Weight of the neighbourhood signal.
    pub neighbour_weight: f32,
}

/// The widest neighbourhood (turns on each side).
pub const MAX_NEIGHBOURS: usize = 5;

/// How many of the best candidates have their neighbourhood read.
pub const NEIGHBOURHOOD_CENTRES: usize = 20;

impl Default for RankingConfig {
    fn default() -> Self {
        Self {
            candidates: 50,
            fusion: Fusion::default(),
            recency_half_life_days: 30.0,
            recency_weight: 0.02,
            importance_weight: 0.02,
            emotion_weight: 0.02,
            mmr_lambda: Some(0.85),
            min_score: None,
            cross_encoder_top_n: 20,
            cross_encoder_weight: 0.5,
            time_weight: 0.2,
            entity_weight: 0.0,
            speaker_weight: 0.1,
            question_penalty: 0.1,
            content_weight: 0.3,
            time_answer_weight: 0.15,
            neighbours: 2,
            neighbour_weight: 0.5,
        }
    }
}

impl RankingConfig {
    /// The ranking a mode means when the caller chooses none: hybrid retrieval with the
    /// re-ranking signals ([`RankingConfig::default`]); vector and text search by relevance
    /// alone ([`RankingConfig::plain`]), so that a vector search scores by raw similarity.
    pub fn for_mode(mode: SearchMode) -> Self {
        match mode {
            SearchMode::Hybrid => Self::default(),
            SearchMode::Vector | SearchMode::Text => Self::plain(),
        }
    }

    /// Relevance only: no recency, importance, emotion, time, entities, neighbourhood, MMR
    /// or cross-encoder.
    pub fn plain() -> Self {
        Self {
            recency_weight: 0.0,
            importance_weight: 0.0,
            emotion_weight: 0.0,
            mmr_lambda: None,
            cross_encoder_weight: 0.0,
            time_weight: 0.0,
            entity_weight: 0.0,
            speaker_weight: 0.0,
            question_penalty: 0.0,
            content_weight: 0.0,
            time_answer_weight: 0.0,
            neighbours: 0,
            neighbour_weight: 0.0,
            ..Self::default()
        }
    }

    /// Whether the neighbourhood is read.
    pub fn uses_neighbours(&self) -> bool {
        self.neighbours > 0 && self.neighbour_weight > 0.0
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let finite = [
            self.recency_half_life_days,
            self.recency_weight,
            self.importance_weight,
            self.emotion_weight,
            self.cross_encoder_weight,
            self.time_weight,
            self.entity_weight,
            self.speaker_weight,
            self.question_penalty,
            self.content_weight,
            self.time_answer_weight,
            self.neighbour_weight,
        ];
        if finite.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(Error::invalid(
                "ranking weights and half-life must be finite and not negative",
            ));
        }
        if self.candidates == 0 {
            return Err(Error::invalid("candidates must be at least 1"));
        }
        if self.neighbours > MAX_NEIGHBOURS {
            return Err(Error::invalid(format!(
                "neighbours must be at most {MAX_NEIGHBOURS}"
            )));
        }
        if self.recency_half_life_days == 0.0 && self.recency_weight > 0.0 {
            return Err(Error::invalid("recency half-life must be positive"));
        }
        if let Some(l) = self.mmr_lambda
            && !(0.0..=1.0).contains(&l)
        {
            return Err(Error::invalid("mmr lambda must be in [0, 1]"));
        }
        if self.cross_encoder_weight > 1.0 {
            return Err(Error::invalid("cross-encoder weight must be in [0, 1]"));
        }
        match self.fusion {
            Fusion::Rrf { k } if !(k.is_finite() && k >= 0.0) => {
                Err(Error::invalid("rrf k must be finite and not negative"))
            }
            Fusion::Weighted { alpha } if !(0.0..=1.0).contains(&alpha) => {
                Err(Error::invalid("fusion alpha must be in [0, 1]"))
            }
            _ => match self.min_score {
                Some(s) if !s.is_finite() => Err(Error::invalid("min_score must be finite")),
                _ => Ok(()),
            },
        }
    }
}

/// Options of a retrieval (the engine's `retrieve`, the in-memory index's `search`). Read
/// from data without a `ranking`, it is ranked the way its mode means
/// ([`RetrieveOptions::for_mode`]), as every front door ranks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RetrieveData")]
pub struct RetrieveOptions {
    /// Results wanted.
    pub top_k: usize,
    /// Which retrievers run.
    pub mode: SearchMode,
    /// Narrowing.
    pub filter: Filter,
    /// Re-ranking.
    pub ranking: RankingConfig,
    /// "Now" for recency (the current time when absent).
    pub now: Option<DateTime<Utc>>,
}

impl RetrieveOptions {
    /// `top_k` results in `mode`, ranked the way the mode means by default
    /// ([`RankingConfig::for_mode`]); every front door starts from this.
    pub fn for_mode(mode: SearchMode, top_k: usize) -> Self {
        Self {
            top_k,
            mode,
            ranking: RankingConfig::for_mode(mode),
            ..Self::default()
        }
    }
}

/// [`RetrieveOptions`] as data: what is absent keeps its default, and an absent ranking is
/// the mode's.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RetrieveData {
    top_k: usize,
    mode: SearchMode,
    filter: Filter,
    ranking: Option<RankingConfig>,
    now: Option<DateTime<Utc>>,
}

impl Default for RetrieveData {
    fn default() -> Self {
        let d = RetrieveOptions::default();
        Self {
            top_k: d.top_k,
            mode: d.mode,
            filter: d.filter,
            ranking: None,
            now: d.now,
        }
    }
}

impl From<RetrieveData> for RetrieveOptions {
    fn from(d: RetrieveData) -> Self {
        Self {
            filter: d.filter,
            now: d.now,
            ranking: d.ranking.unwrap_or_else(|| RankingConfig::for_mode(d.mode)),
            ..Self::for_mode(d.mode, d.top_k)
        }
    }
}

impl Default for RetrieveOptions {
    fn default() -> Self {
        Self {
            top_k: 10,
            mode: SearchMode::Hybrid,
            filter: Filter::default(),
            ranking: RankingConfig::default(),
            now: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_as_data_are_ranked_as_their_mode() {
        let read = |json: &str| serde_json::from_str::<RetrieveOptions>(json).unwrap();
        assert_eq!(read("{}"), RetrieveOptions::default());
        for mode in [SearchMode::Hybrid, SearchMode::Vector, SearchMode::Text] {
            let json = format!(r#"{{"mode": "{}", "top_k": 3}}"#, mode.as_str());
            assert_eq!(read(&json), RetrieveOptions::for_mode(mode, 3), "{mode:?}");
        }
        assert_ne!(
            RankingConfig::for_mode(SearchMode::Vector),
            RankingConfig::for_mode(SearchMode::Hybrid),
            "the test tells the modes' rankings apart"
        );
        // A ranking given is kept, and a round trip changes nothing.
        let mut given = RetrieveOptions::for_mode(SearchMode::Vector, 7);
        given.ranking.mmr_lambda = Some(0.25);
        given.filter.tags = vec!["home".into()];
        let back = read(&serde_json::to_string(&given).unwrap());
        assert_eq!(back, given);
        // A misspelt option is an error, not a default.
        assert!(serde_json::from_str::<RetrieveOptions>(r#"{"topk": 3}"#).is_err());
    }
}
