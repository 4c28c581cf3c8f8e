//! The retrieval evaluation harness: conversation benchmarks in the LoCoMo JSON format.
//!
//! Each sample's conversation is ingested as one user (every turn a message, stamped with its
//! session's date), each question with evidence is asked, and the ranks of the evidence turns
//! give recall@k (share of evidence turns in the top k), hit@k (any evidence turn in the top k),
//! nDCG@k (evidence turns as relevant, binary gains) and MRR (reciprocal rank of the first
//! evidence turn), overall, per category and per sample, with a bootstrap interval of each
//! overall figure.
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::retrieval::RetrieveOptions;
use crate::types::{NewMessage, Role, Signals};

mod answers;
mod metrics;
pub use answers::{AnswerOptions, answer_f1, evaluate_answers, normalize_answer};
pub use metrics::BOOTSTRAP_RESAMPLES;
use metrics::{Totals, interval95};

/// One conversation and its questions.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `sample_id`, or the position in the file.
    pub id: String,
    /// The turns, in order.
    pub turns: Vec<Turn>,
    /// The questions.
    pub questions: Vec<Question>,
}

/// One turn of a conversation.
#[derive(Debug, Clone)]
pub struct Turn {
    /// `session_N`.
    pub session: String,
    /// The turn id (`D1:3`).
    pub dia_id: String,
    /// Who spoke.
    pub speaker: String,
    /// `speaker_a` speaks as the user, `speaker_b` as the assistant.
    pub role: Role,
    /// What was said (with an image caption appended when the turn shared one).
    pub text: String,
    /// The session's date (plus the turn's position in seconds, to keep order).
    pub at: Option<DateTime<Utc>>,
}

/// One question.
#[derive(Debug, Clone)]
pub struct Question {
    /// The question.
    pub question: String,
    /// The category, as a string key (`"1"` … `"5"` in LoCoMo).
    pub category: String,
    /// Evidence turn ids that exist in the conversation.
    pub evidence: Vec<String>,
    /// The reference answer, when the dataset gives one.
    pub answer: Option<String>,
}

/// Problems found while reading a dataset that did not stop it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatasetWarnings {
    /// Evidence ids that are malformed or name no turn: `sample: id`.
    pub bad_evidence: Vec<String>,
    /// Questions skipped for having no usable evidence.
    pub skipped_questions: usize,
    /// Sessions whose date is missing or unreadable, `sample: session_N`: their turns are
    /// stamped when they are stored (recency and time questions read them as new).
    pub undated_sessions: Vec<String>,
}

fn turn_time(date: Option<&str>) -> Option<DateTime<Utc>> {
    let s = date?.trim();
    // "1:56 pm on 8 May, 2023"
    let normalized = s.replace(" on ", " ").replace(',', "").to_uppercase();
    NaiveDateTime::parse_from_str(&normalized, "%I:%M %p %d %B %Y")
        .ok()
        // "8 May, 2023": a day without its time, taken at noon.
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(&normalized, "%d %B %Y")
                .ok()
                .and_then(|d| d.and_hms_opt(12, 0, 0))
        })
        .map(|t| t.and_utc())
}

fn valid_dia_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix('D') else {
        return false;
    };
    let mut parts = rest.split(':');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(a), Some(b), None)
            if !a.is_empty() && !b.is_empty()
                && a.chars().all(|c| c.is_ascii_digit())
                && b.chars().all(|c| c.is_ascii_digit())
    )
}

/// The turn an evidence id names, if the conversation has it: as written, or with its
/// numbers' leading zeros dropped ("D3:07" → "D3:7").
fn known_dia_id(id: &str, known: &std::collections::HashSet<&str>) -> Option<String> {
    if !valid_dia_id(id) {
        return None;
    }
    if known.contains(id) {
        return Some(id.to_owned());
    }
    let (a, b) = id[1..].split_once(':')?;
    let plain = format!("D{}:{}", a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
    known.contains(plain.as_str()).then_some(plain)
}

fn session_number(key: &str) -> Option<u32> {
    key.strip_prefix("session_")?.parse().ok()
}

/// Reads a LoCoMo-format dataset. Structural problems (not a list, a sample without
/// `conversation`, a turn without text) are errors; bad evidence ids are collected as
/// warnings and skipped.
pub fn parse_locomo(text: &str) -> Result<(Vec<Sample>, DatasetWarnings)> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| Error::invalid(format!("dataset is not valid JSON: {e}")))?;
    let list = root
        .as_array()
        .ok_or_else(|| Error::invalid("dataset must be a JSON list of samples"))?;
    let mut warnings = DatasetWarnings::default();
    let mut samples = Vec::with_capacity(list.len());
    // Each sample is its own user in a run: two with one id would be one user's data.
    let mut ids = HashSet::new();
    for (i, s) in list.iter().enumerate() {
        let id = s
            .get("sample_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sample-{}", i + 1));
        if !ids.insert(id.clone()) {
            return Err(Error::invalid(format!(
                "two samples have the id {id:?}: each must have its own"
            )));
        }
        let conv: &Map<String, Value> = s
            .get("conversation")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::invalid(format!("{id}: missing \"conversation\" object")))?;
        let speaker_a = conv.get("speaker_a").and_then(Value::as_str).unwrap_or("");
        let mut sessions: Vec<(u32, &str, &Vec<Value>)> = conv
            .iter()
            .filter_map(|(k, v)| Some((session_number(k)?, k.as_str(), v.as_array()?)))
            .collect();
        sessions.sort_by_key(|(n, _, _)| *n);
        let mut turns = Vec::new();
        for (n, key, list) in sessions {
            let date = conv
                .get(&format!("session_{n}_date_time"))
                .and_then(Value::as_str);
            let base = turn_time(date);
            if base.is_none() {
                warnings.undated_sessions.push(format!("{id}: {key}"));
            }
            for (j, t) in list.iter().enumerate() {
                let field = |name: &str| t.get(name).and_then(Value::as_str);
                let dia_id = field("dia_id").ok_or_else(|| {
                    Error::invalid(format!("{id}: {key} turn {} has no dia_id", j + 1))
                })?;
                let speaker = field("speaker").unwrap_or("");
                let mut text = field("text")
                    .ok_or_else(|| Error::invalid(format!("{id}: turn {dia_id} has no text")))?
                    .to_owned();
                if let Some(caption) = field("blip_caption") {
                    text = format!("{text} [shares a photo: {caption}]");
                }
                turns.push(Turn {
                    session: key.to_owned(),
                    dia_id: dia_id.to_owned(),
                    speaker: speaker.to_owned(),
                    role: if speaker == speaker_a {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    text,
                    at: base.map(|b| b + Duration::seconds(j as i64)),
                });
            }
        }
        let known: std::collections::HashSet<&str> =
            turns.iter().map(|t| t.dia_id.as_str()).collect();
        let mut questions = Vec::new();
        for q in s.get("qa").and_then(Value::as_array).into_iter().flatten() {
            let Some(question) = q.get("question").and_then(Value::as_str) else {
                warnings.skipped_questions += 1;
                continue;
            };
            let category = match q.get("category") {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => "unknown".to_owned(),
            };
            let mut evidence = Vec::new();
            for e in q
                .get("evidence")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(e) = e.as_str() else {
                    warnings.bad_evidence.push(format!("{id}: {e}"));
                    continue;
                };
                // A few entries hold two ids in one string ("D8:6; D9:17"): each counts.
                for part in e.split([';', ',', ' ']).filter(|p| !p.is_empty()) {
                    match known_dia_id(part, &known) {
                        Some(d) if !evidence.contains(&d) => evidence.push(d),
                        Some(_) => {}
                        None => warnings.bad_evidence.push(format!("{id}: {part}")),
                    }
                }
            }
            if evidence.is_empty() {
                warnings.skipped_questions += 1;
                continue;
            }
            let answer = match q.get("answer") {
                Some(Value::String(a)) => Some(a.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            questions.push(Question {
                question: question.to_owned(),
                category,
                evidence,
                answer,
            });
        }
        samples.push(Sample {
            id,
            turns,
            questions,
        });
    }
    Ok((samples, warnings))
}

/// The `q` quantile of sorted values (nearest rank; 0 when there are none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0)
}

/// Turns at the top of each question's ranking whose signals `details` reports by default
/// (with every evidence turn's).
pub const DETAILED_TURNS: usize = 5;

/// A turn as a question ranked it: its id, final score and signals.
struct RankedTurn {
    id: String,
    score: f32,
    signals: Signals,
}

/// The ranked turns for each question of a sample, best first (chunks of one turn count
/// once, at their best rank).
async fn rank_sample(
    engine: &Engine,
    user: &str,
    questions: &[Question],
    by_message: &HashMap<i64, String>,
    options: &RetrieveOptions,
    latencies: &mut Vec<f64>,
) -> Result<Vec<Vec<RankedTurn>>> {
    let mut out = Vec::with_capacity(questions.len());
    for q in questions {
        let started = std::time::Instant::now();
        let hits = engine.retrieve(user, &q.question, options).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let mut ranked: Vec<RankedTurn> = Vec::with_capacity(hits.len());
        for h in hits {
            if let Some(d) = h.memory.message_id.and_then(|id| by_message.get(&id))
                && !ranked.iter().any(|r| &r.id == d)
            {
                ranked.push(RankedTurn {
                    id: d.clone(),
                    score: h.score,
                    signals: h.signals,
                });
            }
        }
        out.push(ranked);
    }
    Ok(out)
}

/// A sample ingested for evaluation.
pub struct Ingested {
    /// The user it was stored under.
    pub user: String,
    /// Message id → turn id.
    pub by_message: HashMap<i64, String>,
    /// When the conversation ended (questions are asked a day later).
    pub end: Option<DateTime<Utc>>,
}

/// Stores a sample's turns as the messages of `user`.
pub async fn ingest_sample(engine: &Engine, user: &str, sample: &Sample) -> Result<Ingested> {
    let messages: Vec<NewMessage> = sample
        .turns
        .iter()
        .map(|t| NewMessage {
            created_at: t.at,
            ..NewMessage::new(
                t.session.clone(),
                t.role,
                format!("{}: {}", t.speaker, t.text),
            )
        })
        .collect();
    let written = engine.add_messages(user, messages).await?;
    let by_message = written
        .iter()
        .zip(&sample.turns)
        .map(|(w, t)| (w.message.id, t.dia_id.clone()))
        .collect();
    Ok(Ingested {
        user: user.to_owned(),
        by_message,
        end: sample.turns.iter().filter_map(|t| t.at).max(),
    })
}

/// What [`evaluate`] measures.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The cut-offs (the retrieval's `top_k` is raised to the largest).
    pub ks: Vec<usize>,
    /// Only questions of these categories (all when empty).
    pub categories: Vec<String>,
    /// Add each question's ranked turn ids and evidence ranks to the report (`details`).
    pub details: bool,
    /// How many of the top turns `details` gives the signals of (besides the evidence's):
    /// all of them re-score a ranking offline.
    pub detail_turns: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            ks: vec![1, 5, 10],
            categories: vec![],
            details: false,
            detail_turns: DETAILED_TURNS,
        }
    }
}

/// Evaluates already ingested samples with one set of retrieval options. Returns the report:
/// `{"questions", "overall": {...}, "interval95": {"hit@10": [low, high], ...}, "by_category":
/// {"1": {...}, ...}, "by_sample": {"conv-26": {...}, ...}, "search_ms": {"p50", "p95"}}`
/// (plus `details`, one entry per question, when asked for). `interval95` is a percentile
/// bootstrap over the questions, each sample's resampled within it. The latencies are of
/// whole retrievals, query embedding included.
pub async fn evaluate(
    engine: &Engine,
    samples: &[(Sample, Ingested)],
    eval: &EvalOptions,
    options: &RetrieveOptions,
) -> Result<Value> {
    let ks = &eval.ks;
    let max_k = ks.iter().copied().max().unwrap_or(10);
    let mut overall = Totals::new(ks);
    let mut by_category: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_sample: Vec<(String, Totals)> = Vec::new();
    let mut details = Vec::new();
    let mut latencies = Vec::new();
    for (sample, ingested) in samples {
        let opts = RetrieveOptions {
            top_k: max_k,
            now: options.now.or(ingested.end.map(|e| e + Duration::days(1))),
            ..options.clone()
        };
        let questions: Vec<Question> = sample
            .questions
            .iter()
            .filter(|q| eval.categories.is_empty() || eval.categories.contains(&q.category))
            .cloned()
            .collect();
        let ranked = rank_sample(
            engine,
            &ingested.user,
            &questions,
            &ingested.by_message,
            &opts,
            &mut latencies,
        )
        .await?;
        let mut this_sample = Totals::new(ks);
        for (q, turns) in questions.iter().zip(&ranked) {
            let r: Vec<String> = turns.iter().map(|t| t.id.clone()).collect();
            let r = &r;
            overall.add(r, &q.evidence);
            this_sample.add(r, &q.evidence);
            by_category
                .entry(q.category.clone())
                .or_insert_with(|| Totals::new(ks))
                .add(r, &q.evidence);
            if eval.details {
                let ranks: Vec<Option<usize>> = q
                    .evidence
                    .iter()
                    .map(|e| r.iter().position(|x| x == e).map(|p| p + 1))
                    .collect();
                // Why the first few and the evidence ranked where they did.
                let signals: Vec<Value> = turns
                    .iter()
                    .enumerate()
                    .filter(|(i, t)| *i < eval.detail_turns || q.evidence.contains(&t.id))
                    .map(|(i, t)| {
                        json!({"rank": i + 1, "id": t.id, "score": t.score, "signals": t.signals})
                    })
                    .collect();
                details.push(json!({
                    "sample": sample.id,
                    "category": q.category,
                    "question": q.question,
                    "evidence": q.evidence,
                    "evidence_ranks": ranks,
                    "ranked": r,
                    "signals": signals,
                }));
            }
        }
        // A sample none of whose questions is of the categories asked for has no figures.
        match by_sample.iter_mut().find(|(id, _)| *id == sample.id) {
            Some((_, t)) => t.extend(this_sample),
            None if !questions.is_empty() => by_sample.push((sample.id.clone(), this_sample)),
            None => {}
        }
    }
    let mut cats = Map::new();
    for (c, t) in &by_category {
        cats.insert(c.clone(), t.report());
    }
    let mut samples_report = Map::new();
    for (id, t) in &by_sample {
        samples_report.insert(id.clone(), t.report());
    }
    let groups: Vec<&Totals> = by_sample.iter().map(|(_, t)| t).collect();
    latencies.sort_by(f64::total_cmp);
    let overall = overall.report();
    let mut report = json!({
        "questions": overall["questions"],
        "overall": overall,
        "interval95": interval95(&groups),
        "by_category": cats,
        "by_sample": samples_report,
        "search_ms": {"p50": quantile(&latencies, 0.5), "p95": quantile(&latencies, 0.95)},
    });
    if eval.details {
        report["details"] = Value::Array(details);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locomo_dates() {
        let t = turn_time(Some("1:56 pm on 8 May, 2023")).unwrap();
        assert_eq!(t.to_rfc3339(), "2023-05-08T13:56:00+00:00");
        let t = turn_time(Some("10:37 am on 27 June, 2023")).unwrap();
        assert_eq!(t.to_rfc3339(), "2023-06-27T10:37:00+00:00");
        assert!(turn_time(Some("sometime")).is_none());
        // A day without its time is taken at noon.
        let t = turn_time(Some("8 May, 2023")).unwrap();
        assert_eq!(t.to_rfc3339(), "2023-05-08T12:00:00+00:00");
    }

    /// A session without a readable date is named in the warnings (its turns would be
    /// stamped when stored, and read as new by recency and time questions).
    #[test]
    fn undated_sessions_are_reported() {
        let data = json!([{
            "sample_id": "x",
            "conversation": {
                "speaker_a": "A", "speaker_b": "B",
                "session_1_date_time": "1:00 pm on 1 May, 2023",
                "session_1": [{"speaker": "A", "dia_id": "D1:1", "text": "hello"}],
                "session_2_date_time": "the day after",
                "session_2": [{"speaker": "B", "dia_id": "D2:1", "text": "hi"}],
                "session_3": [{"speaker": "A", "dia_id": "D3:1", "text": "bye"}]
            },
            "qa": [{"question": "q", "answer": "a", "evidence": ["D1:1"], "category": 4}]
        }])
        .to_string();
        let (samples, w) = parse_locomo(&data).unwrap();
        assert_eq!(w.undated_sessions, ["x: session_2", "x: session_3"]);
        assert!(samples[0].turns[0].at.is_some());
        assert!(samples[0].turns[1].at.is_none());
    }

    #[test]
    fn dia_ids() {
        assert!(valid_dia_id("D1:3"));
        assert!(valid_dia_id("D12:140"));
        for bad in ["D1", "1:3", "D1:3:4", "D:3", "D1:x", "D8:6; D9:17", ""] {
            assert!(!valid_dia_id(bad), "{bad}");
        }
    }

    /// Each sample is one user of the run: two samples with one id (or a numbered fallback
    /// that meets a real id) would be scored against each other's turns.
    #[test]
    fn sample_ids_are_unique() {
        let sample = |id: Option<&str>| {
            let mut s = json!({
                "conversation": {
                    "speaker_a": "A", "speaker_b": "B",
                    "session_1_date_time": "1:00 pm on 1 May, 2023",
                    "session_1": [{"speaker": "A", "dia_id": "D1:1", "text": "hello"}]
                },
                "qa": []
            });
            if let Some(id) = id {
                s["sample_id"] = json!(id);
            }
            s
        };
        let ok = json!([sample(Some("x")), sample(Some("y")), sample(None)]).to_string();
        let (samples, _) = parse_locomo(&ok).unwrap();
        let ids: Vec<&str> = samples.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["x", "y", "sample-3"]);
        for bad in [
            json!([sample(Some("x")), sample(Some("x"))]),
            json!([sample(None), sample(Some("sample-1"))]),
        ] {
            let e = parse_locomo(&bad.to_string()).unwrap_err();
            assert!(e.to_string().contains("two samples"), "{e}");
        }
    }

    #[test]
    fn bad_evidence_is_reported_and_skipped() {
        let data = json!([{
            "sample_id": "x",
            "conversation": {
                "speaker_a": "A", "speaker_b": "B",
                "session_1_date_time": "1:00 pm on 1 May, 2023",
                "session_1": [
                    {"speaker": "A", "dia_id": "D1:1", "text": "hello"},
                    {"speaker": "B", "dia_id": "D1:2", "text": "hi", "blip_caption": "a dog"}
                ]
            },
            "qa": [
                {"question": "q1", "answer": "a", "evidence": ["D1:1", "D9:9", "D1"], "category": 4},
                {"question": "q2", "answer": "a", "evidence": ["bad"], "category": 2},
                {"question": "q4", "answer": "a", "evidence": ["D1:02; D1:1", "D1:1", "D1:2;x"], "category": 1},
                {"question": "q3", "answer": "a", "evidence": [], "category": 5}
            ]
        }])
        .to_string();
        let (samples, w) = parse_locomo(&data).unwrap();
        assert_eq!(samples[0].questions.len(), 2);
        assert_eq!(samples[0].questions[0].evidence, vec!["D1:1"]);
        // Two ids in one string both count, leading zeros dropped, each turn once.
        assert_eq!(samples[0].questions[1].evidence, vec!["D1:2", "D1:1"]);
        assert_eq!(w.bad_evidence, vec!["x: D9:9", "x: D1", "x: bad", "x: x"]);
        assert_eq!(w.skipped_questions, 2);
        assert!(w.undated_sessions.is_empty());
        assert_eq!(samples[0].turns[1].role, Role::Assistant);
        assert!(
            samples[0].turns[1]
                .text
                .ends_with("[shares a photo: a dog]")
        );
        assert_eq!(
            samples[0].turns[1].at.unwrap().to_rfc3339(),
            "2023-05-01T13:00:01+00:00"
        );
    }

    #[test]
    fn structural_errors_are_errors() {
        assert!(parse_locomo("{}").is_err());
        assert!(parse_locomo("[{\"qa\": []}]").is_err());
        assert!(parse_locomo("not json").is_err());
    }
}
