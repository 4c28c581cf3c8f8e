//! Answers, not only rankings: each question is put to the chat model with the prompt the
//! chat pipeline would build (system prompt, the memories retrieved for it, no history), and
//! the answer is scored against the dataset's reference the way LoCoMo scores it (token F1
//! after normalisation), plus whether the reference appears in the answer and whether any
//! evidence turn made it into the prompt (so a wrong answer can be told apart: not found, or
//! found and not read).
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use chrono::Duration;
use serde_json::{Map, Value, json};

use super::{Ingested, Sample, quantile};
use crate::chat::fit_to_model;
use crate::engine::{ContextOptions, Engine};
use crate::error::Result;
use crate::llm::{ChatModel, GenerationParams};

/// What [`evaluate_answers`] asks and how.
#[derive(Debug, Clone)]
pub struct AnswerOptions {
    /// Only questions of these categories (all when empty).
    pub categories: Vec<String>,
    /// Questions per category and sample at most (the first ones in the dataset's order).
    pub per_category: usize,
    /// The prompt's system text, retrieval and budget (history is left out).
    pub context: ContextOptions,
    /// Sampling: greedy and short by default.
    pub generation: GenerationParams,
    /// Add every question's answer to the report (`details`).
    pub details: bool,
}

/// The instruction the answers are asked with.
pub const ANSWER_SYSTEM: &str = "You answer questions about the user's past conversations. \
    Use the memories below. Answer in a few words, with names and dates as written in the \
    memories.";

impl Default for AnswerOptions {
    fn default() -> Self {
        Self {
            categories: vec![],
            per_category: usize::MAX,
            context: ContextOptions {
                system: Some(ANSWER_SYSTEM.to_owned()),
                ..ContextOptions::default()
            },
            generation: GenerationParams {
                max_tokens: 48,
                temperature: 0.0,
                ..GenerationParams::default()
            },
            details: false,
        }
    }
}

/// Lowercase words without punctuation and English articles (SQuAD's and LoCoMo's
/// normalisation).
pub fn normalize_answer(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the" | "and"))
        .map(str::to_owned)
        .collect()
}

/// Token F1 of a prediction against a reference, after [`normalize_answer`].
pub fn answer_f1(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (normalize_answer(prediction), normalize_answer(reference));
    if p.is_empty() || r.is_empty() {
        return f64::from(u8::from(p == r));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &r {
        *counts.entry(w.as_str()).or_default() += 1;
    }
    let mut common = 0usize;
    for w in &p {
        if let Some(c) = counts.get_mut(w.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[derive(Default)]
struct Scores {
    questions: usize,
    f1: f64,
    contains: usize,
    evidence_in_prompt: usize,
}

impl Scores {
    fn add(&mut self, f1: f64, contains: bool, evidence: bool) {
        self.questions += 1;
        self.f1 += f1;
        self.contains += usize::from(contains);
        self.evidence_in_prompt += usize::from(evidence);
    }

    fn report(&self) -> Value {
        let n = self.questions.max(1) as f64;
        json!({
            "questions": self.questions,
            "f1": self.f1 / n,
            "contains": self.contains as f64 / n,
            "evidence_in_prompt": self.evidence_in_prompt as f64 / n,
        })
    }
}

/// Asks `model` every chosen question of the ingested samples with the prompt the chat
/// pipeline builds (nothing is stored). Returns `{"model", "questions", "overall": {"f1",
/// "contains", "evidence_in_prompt"}, "by_category": {...}, "answer_ms": {"p50", "p95"}}`
/// (plus `details` when asked for). Questions without a reference answer are left out.
pub async fn evaluate_answers(
    engine: &Engine,
    model: &dyn ChatModel,
    samples: &[(Sample, Ingested)],
    options: &AnswerOptions,
) -> Result<Value> {
    let context = fit_to_model(&options.context, model, options.generation.max_tokens)?;
    let mut overall = Scores::default();
    let mut by_category: BTreeMap<String, Scores> = BTreeMap::new();
    let mut details = Vec::new();
    let mut latencies = Vec::new();
    for (sample, ingested) in samples {
        let mut context = context.clone();
        context.conversation = Some(Vec::new());
        context.max_history = 0;
        context.retrieve.now = context
            .retrieve
            .now
            .or(ingested.end.map(|e| e + Duration::days(1)));
        let turn_of: HashMap<i64, &str> = ingested
            .by_message
            .iter()
            .map(|(m, t)| (*m, t.as_str()))
            .collect();
        let mut asked: HashMap<&str, usize> = HashMap::new();
        for q in &sample.questions {
            let Some(reference) = &q.answer else {
                continue;
            };
            if !options.categories.is_empty() && !options.categories.contains(&q.category) {
                continue;
            }
            let n = asked.entry(q.category.as_str()).or_default();
            if *n >= options.per_category {
                continue;
            }
            *n += 1;
            let started = Instant::now();
            let (assembled, memories) = engine
                .context_with_memories(
                    &ingested.user,
                    "eval-answers",
                    &q.question,
                    model.token_counter(),
                    &context,
                )
                .await?;
            let completion = model
                .complete(&assembled.messages, &options.generation)
                .await?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            let included: std::collections::HashSet<i64> =
                assembled.report.memories.included.iter().copied().collect();
            let evidence = memories.iter().any(|r| {
                included.contains(&r.memory.id)
                    && r.memory
                        .message_id
                        .and_then(|m| turn_of.get(&m))
                        .is_some_and(|t| q.evidence.iter().any(|e| e == t))
            });
            let answer = completion.text.trim();
            let f1 = answer_f1(answer, reference);
            let wanted = normalize_answer(reference).join(" ");
            let contains =
                !wanted.is_empty() && normalize_answer(answer).join(" ").contains(&wanted);
            overall.add(f1, contains, evidence);
            by_category
                .entry(q.category.clone())
                .or_default()
                .add(f1, contains, evidence);
            if options.details {
                details.push(json!({
                    "sample": sample.id,
                    "category": q.category,
                    "question": q.question,
                    "reference": reference,
                    "answer": answer,
                    "f1": f1,
                    "evidence_in_prompt": evidence,
                }));
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let mut cats = Map::new();
    for (c, s) in &by_category {
        cats.insert(c.clone(), s.report());
    }
    let mut report = json!({
        "model": model.name(),
        "questions": overall.questions,
        "overall": overall.report(),
        "by_category": cats,
        "answer_ms": {"p50": quantile(&latencies, 0.5), "p95": quantile(&latencies, 0.95)},
    });
    if options.details {
        report["details"] = json!(details);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_and_normalisation_as_locomo_scores_them() {
        assert_eq!(
            normalize_answer("The Eiffel-Tower, Paris!"),
            ["eiffel", "tower", "paris"]
        );
        assert_eq!(answer_f1("7 May 2023", "7 May 2023"), 1.0);
        assert!((answer_f1("It was on 7 May, 2023.", "7 May 2023") - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(answer_f1("Paris", "Lisbon"), 0.0);
        assert_eq!(answer_f1("", ""), 1.0);
        assert_eq!(answer_f1("", "Porto"), 0.0);
        // Repeated words count once per occurrence in the reference.
        let f = answer_f1("red red red", "red blue");
        assert!((f - 0.4).abs() < 1e-9, "{f}");
    }
}
