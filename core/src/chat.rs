//! The chat pipeline every front door uses (GraphQL, REST, bindings): retrieve what the user's
//! memory holds for the new message and assemble the budgeted prompt, store the message, stream
//! the model's answer, store the answer, and fold old history into a summary in the background
//! when one is due.
//!
//! The user's message is stored (and acknowledged with its id) before generation starts, so a
//! crash mid-answer loses nothing the caller was told was kept. An answer whose consumer went
//! away is not stored. A turn tried again after its answer failed or was cut off (the session's
//! last message is this message, unanswered) reuses the stored message: a retry does not store
//! it twice, and the prompt shows it once.
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing::field::Empty;

use crate::context::{ContextReport, Summarizer, SummaryPolicy};
use crate::engine::{ContextOptions, Engine};
use crate::error::{Error, Result};
use crate::llm::{ChatEvent, ChatModel, FinishReason, GenerationParams};
use crate::types::{MemoryKind, NewMessage, Role};

/// `options` with the budget fitted to `model`: the window capped at the model's, the
/// response reserve at most half of it (512 of a 256-token window would leave no prompt) and
/// at least `max_tokens`, which must leave room for a prompt.
pub fn fit_to_model(
    options: &ContextOptions,
    model: &dyn ChatModel,
    max_tokens: usize,
) -> Result<ContextOptions> {
    let mut options = options.clone();
    let window = options.budget.context_window.min(model.context_length());
    if max_tokens >= window {
        return Err(Error::invalid(format!(
            "max_tokens {max_tokens} leaves no room for the prompt in the model's {window}-token context"
        )));
    }
    options.budget.context_window = window;
    options.budget.response_reserve = options
        .budget
        .response_reserve
        .min(window / 2)
        .max(max_tokens)
        .min(window - 1);
    Ok(options)
}

/// One chat turn to answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The session (created on first use).
    pub session: String,
    /// The user's new message.
    pub message: String,
    /// Sampling and limits.
    #[serde(default)]
    pub generation: GenerationParams,
    /// Prompt assembly and retrieval. The budget's window is capped at the model's, its
    /// response reserve at half of that window, then raised to `generation.max_tokens`.
    #[serde(default)]
    pub context: ContextOptions,
}

impl ChatRequest {
    /// A request with default generation and context options.
    pub fn new(session: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            session: session.into(),
            message: message.into(),
            generation: GenerationParams::default(),
            context: ContextOptions::default(),
        }
    }

    /// Checks the request before anything is stored: sampling ranges, stop sequences and the
    /// context budget (the message, session and memory options are checked where they are
    /// used, by the engine's limits). [`ChatPipeline::stream`] calls it; front doors map
    /// fields and let it decide.
    pub fn validate(&self) -> Result<()> {
        self.generation.validate()?;
        self.context.budget.validate()?;
        self.context.retrieve.ranking.validate()
    }
}

/// A memory that was brought into the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextMemory {
    /// The memory's id.
    pub memory_id: i64,
    /// What it is.
    pub kind: MemoryKind,
    /// Its text.
    pub content: String,
    /// The session it came from.
    pub session: Option<String>,
    /// Its retrieval score (higher is better).
    pub score: f32,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// The two together.
    pub total_tokens: usize,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Retrieval and prompt assembly.
    pub retrieval_ms: f64,
    /// From the request to the first piece of the answer.
    pub first_token_ms: f64,
    /// From the request to the end of the answer.
    pub total_ms: f64,
}

/// The whole result of one chat turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResult {
    /// The session.
    pub session: String,
    /// The stored user message.
    pub message_id: i64,
    /// The stored answer.
    pub reply_id: Option<i64>,
    /// The answer.
    pub text: String,
    /// Memories that went into the prompt, best first.
    pub context: Vec<ContextMemory>,
    /// What the prompt was made of.
    pub report: ContextReport,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub latency: Latency,
    /// Mean log-probability of the answer's tokens (0 is certain); NaN when the model did not
    /// report log-probabilities (serialised as null).
    pub confidence: f32,
    /// Why the answer ended.
    pub finish_reason: FinishReason,
    /// The model that answered.
    pub model: String,
}

/// One event of a streamed chat turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatUpdate {
    /// The next piece of the answer.
    Delta {
        /// The text.
        text: String,
    },
    /// The end: the whole result.
    Done(Box<ChatResult>),
}

/// A started chat turn: the stored message's id and the stream of the answer.
#[derive(Debug)]
pub struct ChatStream {
    /// The user message, stored before generation started (or earlier, by the try this one
    /// repeats).
    pub message_id: i64,
    /// Milliseconds spent on retrieval and prompt assembly.
    pub retrieval_ms: f64,
    /// `Delta`s, then one `Done` (or an error). Dropping it cancels the generation.
    pub updates: mpsc::Receiver<Result<ChatUpdate>>,
}

/// The pipeline; cheap to clone.
#[derive(Clone)]
pub struct ChatPipeline {
    engine: Engine,
    model: Arc<dyn ChatModel>,
    summarizer: Option<(Arc<dyn Summarizer>, SummaryPolicy)>,
}

/// Updates buffered between the pipeline and a slow consumer.
const BUFFER: usize = 64;

impl ChatPipeline {
    /// Chats with `model` over `engine`'s memory, without summaries.
    pub fn new(engine: Engine, model: Arc<dyn ChatModel>) -> Self {
        Self {
            engine,
            model,
            summarizer: None,
        }
    }

    /// Folds old history into summaries with `summarizer` when `policy` says so, after
    /// each answer, off the reply path.
    pub fn with_summaries(
        mut self,
        summarizer: Arc<dyn Summarizer>,
        policy: SummaryPolicy,
    ) -> Self {
        self.summarizer = Some((summarizer, policy));
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The chat model.
    pub fn model(&self) -> &Arc<dyn ChatModel> {
        &self.model
    }

    /// Starts a chat turn for `user`; see the module documentation.
    #[tracing::instrument(
        name = "chat",
        level = "info",
        skip_all,
        fields(model = self.model.name(), max_tokens = request.generation.max_tokens)
    )]
    pub async fn stream(&self, user: &str, request: ChatRequest) -> Result<ChatStream> {
        request.validate()?;
        let started = Instant::now();
        let options = fit_to_model(
            &request.context,
            self.model.as_ref(),
            request.generation.max_tokens,
        )?;
        let (assembled, memories) = self
            .engine
            .context_with_memories(
                user,
                &request.session,
                &request.message,
                self.model.token_counter(),
                &options,
            )
            .await?;
        let retrieval_ms = ms(started);
        let included: std::collections::HashSet<i64> =
            assembled.report.memories.included.iter().copied().collect();
        let context: Vec<ContextMemory> = memories
            .into_iter()
            .filter(|r| included.contains(&r.memory.id))
            .map(|r| ContextMemory {
                memory_id: r.memory.id,
                kind: r.memory.kind,
                content: r.memory.content,
                session: r.memory.session,
                score: r.score,
                created_at: r.memory.created_at,
            })
            .collect();

        // A retried turn (its message the session's last, unanswered) keeps its message.
        let retried = self
            .engine
            .unanswered(user, &request.session, &request.message)
            .await?;
        let message_id = match retried {
            Some(m) => m.id,
            None => self
                .engine
                .add_messages(
                    user,
                    vec![NewMessage::new(
                        &request.session,
                        Role::User,
                        &request.message,
                    )],
                )
                .await?
                .first()
                .map(|a| a.message.id)
                .ok_or_else(|| Error::Internal("the store returned no message".into()))?,
        };

        // Generation outlives this call: its span follows the answer to its end.
        let generation = tracing::info_span!(
            "generation",
            model = self.model.name(),
            prompt_messages = assembled.messages.len(),
            prompt_tokens = Empty,
            completion_tokens = Empty,
            first_token_ms = Empty,
            finish_reason = Empty,
        );
        let generation_params = GenerationParams {
            cache_owner: Some(user.to_owned()),
            ..request.generation.clone()
        };
        let mut answer = self
            .model
            .stream(&assembled.messages, &generation_params)
            .instrument(generation.clone())
            .await?;
        let (tx, updates) = mpsc::channel(BUFFER);
        let this = self.clone();
        let user = user.to_owned();
        let report = assembled.report;
        tokio::spawn(
            async move {
                let mut first_token_ms = None;
                loop {
                    // A consumer that goes away while the model is still queued or reading
                    // the prompt stops it too (dropping `answer`), not only at the next piece
                    // of text: otherwise a left request still costs the worker a whole prefill.
                    let event = tokio::select! {
                        biased;
                        event = answer.recv() => event,
                        () = tx.closed() => return,
                    };
                    let Some(event) = event else { break };
                    match event {
                        Ok(ChatEvent::Delta { text }) => {
                            first_token_ms.get_or_insert_with(|| ms(started));
                            if tx.send(Ok(ChatUpdate::Delta { text })).await.is_err() {
                                // The consumer went away: dropping `answer` stops the model.
                                return;
                            }
                        }
                        Ok(ChatEvent::Done { completion }) => {
                            let span = tracing::Span::current();
                            span.record("prompt_tokens", completion.prompt_tokens);
                            span.record("completion_tokens", completion.completion_tokens);
                            span.record("first_token_ms", first_token_ms.unwrap_or(ms(started)));
                            span.record("finish_reason", format!("{:?}", completion.finish_reason));
                            let reply = if completion.text.trim().is_empty() {
                                Ok(None)
                            } else {
                                let mut m = NewMessage::new(
                                    &request.session,
                                    Role::Assistant,
                                    &completion.text,
                                );
                                m.metadata = json!({
                                    "model": this.model.name(),
                                    "finish_reason": completion.finish_reason,
                                    "confidence": completion.confidence,
                                });
                                this.engine
                                    .add_reply(&user, message_id, m)
                                    .await
                                    .map(|a| Some(a.message.id))
                            };
                            let reply_id = match reply {
                                Ok(id) => id,
                                Err(e) => {
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                            };
                            if let Some((summarizer, policy)) = &this.summarizer {
                                this.engine.spawn_summarize_if_due(
                                    &user,
                                    &request.session,
                                    summarizer.clone(),
                                    *policy,
                                );
                            }
                            let total_ms = ms(started);
                            let result = ChatResult {
                                session: request.session.clone(),
                                message_id,
                                reply_id,
                                text: completion.text,
                                context: context.clone(),
                                report: report.clone(),
                                usage: Usage {
                                    prompt_tokens: completion.prompt_tokens,
                                    completion_tokens: completion.completion_tokens,
                                    total_tokens: completion.prompt_tokens
                                        + completion.completion_tokens,
                                },
                                latency: Latency {
                                    retrieval_ms,
                                    first_token_ms: first_token_ms.unwrap_or(total_ms),
                                    total_ms,
                                },
                                confidence: completion.confidence,
                                finish_reason: completion.finish_reason,
                                model: this.model.name().to_owned(),
                            };
                            let _ = tx.send(Ok(ChatUpdate::Done(Box::new(result)))).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                let _ = tx
                    .send(Err(Error::unavailable("the chat model stopped mid-answer")))
                    .await;
            }
            .instrument(generation),
        );
        Ok(ChatStream {
            message_id,
            retrieval_ms,
            updates,
        })
    }

    /// A whole chat turn at once.
    pub async fn chat(&self, user: &str, request: ChatRequest) -> Result<ChatResult> {
        let mut stream = self.stream(user, request).await?;
        while let Some(update) = stream.updates.recv().await {
            if let ChatUpdate::Done(result) = update? {
                return Ok(*result);
            }
        }
        Err(Error::unavailable("the chat pipeline stopped mid-answer"))
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
