//! The chat model behind an async interface: a dedicated worker thread (never the async
//! runtime) takes requests from a bounded queue — callers wait when it is full — and streams
//! decoded text back. A request whose consumer has gone away stops at the next token.
//!
//! Requests are served one at a time; sharing decode steps between concurrent requests
//! (continuous batching) is not built yet.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use async_trait::async_trait;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use super::gguf::{Completion, GenerationParams, GgufModel, ModelConfig};
use super::template::ChatTemplate;
use crate::context::{ChatTurn, Summarizer};
use crate::error::{Error, Result};
use crate::types::{Message, Role};

/// One event of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// The next piece of text.
    Delta {
        /// The text.
        text: String,
    },
    /// The end, with the whole answer.
    Done {
        /// The finished generation.
        completion: Completion,
    },
}

struct Job {
    prompt: Vec<u32>,
    params: GenerationParams,
    events: mpsc::Sender<Result<ChatEvent>>,
}

/// See the module documentation.
pub struct ChatService {
    queue: mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    context_length: usize,
    name: String,
}

/// Events buffered per stream before the worker waits for the consumer.
const STREAM_BUFFER: usize = 64;

impl ChatService {
    /// Loads the model (blocking: call it at start-up or through `spawn_blocking`) and starts
    /// the worker.
    pub fn start(config: &ModelConfig, device: &Device, queue_capacity: usize) -> Result<Self> {
        let model = GgufModel::load(config, device)?;
        let tokenizer = model.tokenizer().clone();
        let template = model.template();
        let context_length = model.context_length();
        let name = model.name().to_owned();
        let (tx, rx) = mpsc::channel::<Job>(queue_capacity.max(1));
        let waiting = Arc::new(AtomicUsize::new(0));
        let counter = waiting.clone();
        thread::Builder::new()
            .name("deep-recall-chat".into())
            .spawn(move || worker(model, rx, counter))
            .map_err(|e| Error::Internal(format!("spawn chat worker: {e}")))?;
        Ok(Self {
            queue: tx,
            waiting,
            tokenizer,
            template,
            context_length,
            name,
        })
    }

    /// The model's tokenizer (a [`crate::context::TokenCounter`]).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model's context window.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests waiting for the worker or being served.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Streams the assistant's answer to a conversation: `Delta`s, then `Done`. Dropping
    /// the receiver cancels the generation.
    pub async fn stream(
        &self,
        turns: &[ChatTurn],
        params: &GenerationParams,
    ) -> Result<mpsc::Receiver<Result<ChatEvent>>> {
        let text = self.template.render(turns);
        let prompt = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Internal(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec();
        if prompt.len() >= self.context_length {
            return Err(Error::invalid(format!(
                "the prompt has {} tokens; the model's context is {}",
                prompt.len(),
                self.context_length
            )));
        }
        let (events, rx) = mpsc::channel(STREAM_BUFFER);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .queue
            .send(Job {
                prompt,
                params: params.clone(),
                events,
            })
            .await;
        if sent.is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::unavailable("the chat worker has stopped"));
        }
        Ok(rx)
    }

    /// The whole answer at once.
    pub async fn complete(
        &self,
        turns: &[ChatTurn],
        params: &GenerationParams,
    ) -> Result<Completion> {
        let mut rx = self.stream(turns, params).await?;
        while let Some(event) = rx.recv().await {
            if let ChatEvent::Done { completion } = event? {
                return Ok(completion);
            }
        }
        Err(Error::unavailable("the chat worker stopped mid-answer"))
    }
}

fn worker(mut model: GgufModel, mut rx: mpsc::Receiver<Job>, waiting: Arc<AtomicUsize>) {
    while let Some(job) = rx.blocking_recv() {
        if !job.events.is_closed() {
            let events = job.events.clone();
            let result = model.generate(&job.prompt, &job.params, &mut |piece| {
                events
                    .blocking_send(Ok(ChatEvent::Delta {
                        text: piece.to_owned(),
                    }))
                    .is_ok()
            });
            let last = result.map(|completion| ChatEvent::Done { completion });
            let _ = job.events.blocking_send(last);
        }
        waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A [`Summarizer`] that asks the chat model for a bounded summary.
pub struct ChatSummarizer {
    chat: Arc<ChatService>,
    /// Tokens of summary at most.
    pub max_tokens: usize,
}

impl ChatSummarizer {
    /// Summaries of at most `max_tokens` tokens from `chat`.
    pub fn new(chat: Arc<ChatService>, max_tokens: usize) -> Self {
        Self { chat, max_tokens }
    }
}

#[async_trait]
impl Summarizer for ChatSummarizer {
    async fn summarize(&self, previous: Option<&str>, messages: &[Message]) -> Result<String> {
        let mut transcript = String::new();
        if let Some(p) = previous {
            transcript += &format!("Summary so far: {p}\n\n");
        }
        for m in messages {
            let who = match m.role {
                Role::User => "User",
                Role::Assistant => "Assistant",
                Role::System => "System",
            };
            transcript += &format!("{who}: {}\n", m.content);
        }
        let turns = [
            ChatTurn {
                role: Role::System,
                content: "You write short, factual summaries of conversations. Keep names, \
                          dates, preferences and facts about the user; leave out small talk."
                    .into(),
            },
            ChatTurn {
                role: Role::User,
                content: format!(
                    "{transcript}\nSummarize the conversation above in a few sentences."
                ),
            },
        ];
        let params = GenerationParams {
            max_tokens: self.max_tokens,
            ..GenerationParams::default()
        };
        Ok(self
            .chat
            .complete(&turns, &params)
            .await?
            .text
            .trim()
            .to_owned())
    }

    fn model_id(&self) -> &str {
        self.chat.name()
    }
}
