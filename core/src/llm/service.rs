//! The chat model behind an async interface: a dedicated worker thread (never the async
//! runtime) takes requests from a bounded queue — callers wait when it is full — and streams
//! decoded text back. A request whose consumer has gone away stops at the next token.
//!
//! Continuous batching: concurrent requests share decode steps — each step runs the next token
//! of every active sequence through the weights together, with one KV cache per sequence —
//! and new requests join between steps, up to `max_sequences` at once.
//!
//! Chunked prefill: a new prompt is read [`WorkerLimits::prefill_chunk`] tokens at a time, one
//! chunk between two decode steps, so a long prompt never freezes the streams already running
//! for more than one chunk. Prompts waiting to be read take their turns in arrival order.
//!
//! Prefix reuse: the caches of the last finished sequences are kept ([`super::prefix`],
//! [`WorkerLimits::prefix_cache_bytes`]); a new prompt that begins with one's tokens is read
//! from where they part (a conversation's next turn reads only the new messages).
//!
//! Slow consumers: the worker never waits for one. Each stream has a bounded buffer; a
//! sequence whose buffer is nearly full sits out decode steps (the others go on) until its
//! consumer reads, and one that stays stuck longer than [`WorkerLimits::stall_limit`] is
//! cancelled, freeing its slot and its KV cache.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use super::ChatModel;
use super::decoder::KvCache;
use super::local::{Completion, FinishReason, GenerationParams, LocalModel, ModelConfig, Sequence};
use super::prefix::PrefixCache;
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

#[derive(Default)]
struct Counters {
    /// Requests queued or being generated.
    waiting: AtomicUsize,
    /// Sequences in the current batch.
    active: AtomicUsize,
    /// Prompt tokens taken from held caches instead of read, since the start.
    reused: AtomicUsize,
}

/// See the module documentation.
pub struct ChatService {
    queue: mpsc::Sender<Job>,
    stream_buffer: usize,
    counters: Arc<Counters>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    context_length: usize,
    name: String,
}

/// How the worker treats streams whose consumers fall behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Events buffered per stream.
    pub stream_buffer: usize,
    /// How long a sequence may wait for its consumer to read before it is cancelled.
    pub stall_limit: Duration,
    /// Prompt tokens read between two decode steps while other streams are running.
    pub prefill_chunk: usize,
    /// Bytes of finished sequences' attention caches kept for prompts that begin with the
    /// same tokens ([`super::prefix`]; 0: none).
    pub prefix_cache_bytes: usize,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            stream_buffer: 256,
            stall_limit: Duration::from_secs(30),
            // About a tenth of a second of prefill for SmolLM2-135M on two cores.
            prefill_chunk: 48,
            // ~2,800 tokens of SmolLM2-135M (23 KB a token, keys and values in F16).
            prefix_cache_bytes: 64 << 20,
        }
    }
}

impl WorkerLimits {
    /// The defaults for a model on `device`: on a GPU prompts are read 512 tokens at a time
    /// (a chunk there costs about what a decode step does, where 48 tokens made a 500-token
    /// prompt wait through ten decode steps), on the CPU 48.
    pub fn for_device(device: &Device) -> Self {
        Self {
            prefill_chunk: if device.is_cpu() { 48 } else { 512 },
            ..Self::default()
        }
    }
}

/// Free buffer slots a sequence needs to take part in a decode step (one token can flush
/// several pieces of text).
const STEP_ROOM: usize = 4;

impl ChatService {
    /// Loads the model (blocking: call it at start-up or through `spawn_blocking`) and starts
    /// the worker.
    pub fn start(
        config: &ModelConfig,
        device: &Device,
        queue_capacity: usize,
        max_sequences: usize,
    ) -> Result<Self> {
        Self::start_with_limits(
            config,
            device,
            queue_capacity,
            max_sequences,
            WorkerLimits::for_device(device),
        )
    }

    /// [`ChatService::start`] with explicit limits for slow consumers.
    pub fn start_with_limits(
        config: &ModelConfig,
        device: &Device,
        queue_capacity: usize,
        max_sequences: usize,
        limits: WorkerLimits,
    ) -> Result<Self> {
        let model = LocalModel::load(config, device)?;
        let tokenizer = model.tokenizer().clone();
        let template = model.template();
        let context_length = model.context_length();
        let name = model.name().to_owned();
        let (tx, rx) = mpsc::channel::<Job>(queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        thread::Builder::new()
            .name("deep-recall-chat".into())
            .spawn(move || {
                // A panic ends the worker (its queue closes: every later request, and the
                // server's readiness, say so); it is logged with its message first.
                let run = std::panic::AssertUnwindSafe(|| {
                    worker(model, rx, c, max_sequences, limits);
                });
                if let Err(panic) = std::panic::catch_unwind(run) {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %why, "the chat worker stopped");
                }
            })
            .map_err(|e| Error::Internal(format!("spawn chat worker: {e}")))?;
        Ok(Self {
            queue: tx,
            stream_buffer: limits.stream_buffer.max(STEP_ROOM),
            counters,
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

    /// Fails when the worker has stopped (after a panic): no request can be answered.
    pub fn check_ready(&self) -> Result<()> {
        if self.queue.is_closed() {
            return Err(Error::unavailable("the chat worker has stopped"));
        }
        Ok(())
    }

    /// Requests waiting for the worker or being served.
    pub fn queue_depth(&self) -> usize {
        self.counters.waiting.load(Ordering::Relaxed)
    }

    /// Sequences in the current decode batch.
    pub fn active_sequences(&self) -> usize {
        self.counters.active.load(Ordering::Relaxed)
    }

    /// Prompt tokens taken from the caches of earlier sequences instead of read (prefix
    /// reuse), since the start.
    pub fn prefix_tokens_reused(&self) -> usize {
        self.counters.reused.load(Ordering::Relaxed)
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
        let (events, rx) = mpsc::channel(self.stream_buffer);
        // Counted from here; until the worker has the job, the count is this call's to take
        // back: a caller that goes away while the queue is full (a client that left, a
        // request past its time limit) drops this future before the job is sent.
        let unsent = Unsent::count(&self.counters.waiting);
        let sent = self
            .queue
            .send(Job {
                prompt,
                params: params.clone(),
                events,
            })
            .await;
        if sent.is_err() {
            return Err(Error::unavailable("the chat worker has stopped"));
        }
        unsent.handed_over();
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

struct Active {
    seq: Sequence,
    events: mpsc::Sender<Result<ChatEvent>>,
    next: u32,
    /// Since when the consumer has left no room for the next step.
    stalled_since: Option<Instant>,
}

/// A request whose prompt is being read, chunk by chunk.
struct Prefilling {
    seq: Sequence,
    events: mpsc::Sender<Result<ChatEvent>>,
    prompt: Vec<u32>,
    /// Prompt tokens read so far.
    done: usize,
}

/// Hands text to the consumer without ever waiting: a full buffer (the consumer is gone or
/// too far behind) ends the sequence.
fn delta_sender(events: &mpsc::Sender<Result<ChatEvent>>) -> impl FnMut(&str) -> bool + '_ {
    move |piece: &str| {
        events
            .try_send(Ok(ChatEvent::Delta {
                text: piece.to_owned(),
            }))
            .is_ok()
    }
}

/// One request counted as waiting that has not reached the worker yet: the count is taken
/// back when it is dropped before [`Unsent::handed_over`] (then the worker owns it).
struct Unsent<'a>(Option<&'a AtomicUsize>);

impl<'a> Unsent<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Self(Some(waiting))
    }

    fn handed_over(mut self) {
        self.0 = None;
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = self.0 {
            waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The scheduler: admits waiting requests between decode steps (up to `max_active`
/// sequences), reads one chunk of the oldest unread prompt, then runs one decode step for
/// every active sequence together. A sequence leaves when it finishes or its consumer goes
/// away.
fn worker(
    model: LocalModel,
    mut rx: mpsc::Receiver<Job>,
    counters: Arc<Counters>,
    max_active: usize,
    limits: WorkerLimits,
) {
    let mut active: Vec<Active> = Vec::new();
    let mut reading: std::collections::VecDeque<Prefilling> = Default::default();
    let mut prefixes = PrefixCache::new(limits.prefix_cache_bytes);
    let chunk = limits.prefill_chunk.max(1);
    // The last event fits: a sequence only steps with room to spare.
    let done = |seq: &Sequence, events: &mpsc::Sender<Result<ChatEvent>>| {
        counters.waiting.fetch_sub(1, Ordering::Relaxed);
        let completion = seq.completion();
        if completion.finish_reason != FinishReason::Cancelled {
            let _ = events.try_send(Ok(ChatEvent::Done { completion }));
        }
    };
    let failed = |e: Error, events: &mpsc::Sender<Result<ChatEvent>>| {
        counters.waiting.fetch_sub(1, Ordering::Relaxed);
        let _ = events.try_send(Err(e));
    };
    loop {
        if active.is_empty() && reading.is_empty() {
            match rx.blocking_recv() {
                Some(job) => reading.extend(admit(&model, job, &counters, &failed)),
                None => return,
            }
        }
        while active.len() + reading.len() < max_active.max(1) {
            match rx.try_recv() {
                Ok(job) => reading.extend(admit(&model, job, &counters, &failed)),
                Err(_) => break,
            }
        }
        // One chunk of the oldest prompt (all of it when nothing else is running).
        if let Some(mut p) = reading.pop_front() {
            // A prompt not read yet starts from a held cache of its first tokens.
            if p.done == 0
                && let Some((n, cache)) = prefixes.fork(p.seq.cache_owner(), &p.prompt)
            {
                p.seq.cache = cache;
                p.done = n;
                counters.reused.fetch_add(n, Ordering::Relaxed);
            }
            let budget = if active.is_empty() { usize::MAX } else { chunk };
            let end = p.prompt.len().min(p.done.saturating_add(budget));
            if p.events.is_closed() {
                counters.waiting.fetch_sub(1, Ordering::Relaxed);
            } else {
                let read = model
                    .decoder()
                    .prefill(&p.prompt[p.done..end], &mut p.seq.cache);
                match read {
                    Err(e) => failed(e, &p.events),
                    Ok(_) if end < p.prompt.len() => {
                        p.done = end;
                        reading.push_front(p);
                    }
                    Ok(logits) => {
                        let accepted = p.seq.accept(&model, &logits, &mut delta_sender(&p.events));
                        match accepted {
                            Ok(Some(next)) => active.push(Active {
                                seq: p.seq,
                                events: p.events,
                                next,
                                stalled_since: None,
                            }),
                            Ok(None) => {
                                done(&p.seq, &p.events);
                                let (owner, tokens, cache) = p.seq.into_cached();
                                prefixes.keep(owner, tokens, cache);
                            }
                            Err(e) => failed(e, &p.events),
                        }
                    }
                }
            }
        }
        // Sequences whose consumers left no room sit this step out; one stuck too long, or
        // whose consumer is gone, is cancelled.
        let now = Instant::now();
        let mut ready = Vec::with_capacity(active.len());
        let mut waiting = Vec::new();
        for mut a in active.drain(..) {
            if a.events.is_closed() {
                counters.waiting.fetch_sub(1, Ordering::Relaxed);
            } else if a.events.capacity() >= STEP_ROOM {
                a.stalled_since = None;
                ready.push(a);
            } else if now.duration_since(*a.stalled_since.get_or_insert(now)) > limits.stall_limit {
                tracing::warn!("a chat stream's consumer stopped reading: cancelled");
                counters.waiting.fetch_sub(1, Ordering::Relaxed);
            } else {
                waiting.push(a);
            }
        }
        counters
            .active
            .store(ready.len() + waiting.len(), Ordering::Relaxed);
        if ready.is_empty() {
            active = waiting;
            if !active.is_empty() && reading.is_empty() {
                thread::sleep(Duration::from_millis(5));
            }
            continue;
        }
        let tokens: Vec<u32> = ready.iter().map(|a| a.next).collect();
        let step = {
            let mut caches: Vec<&mut KvCache> =
                ready.iter_mut().map(|a| &mut a.seq.cache).collect();
            model.decoder().decode(&tokens, &mut caches)
        };
        // All the step's logits leave the device in one copy.
        let logits =
            step.and_then(|l| Ok(l.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?));
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                let message = e.to_string();
                for a in ready.drain(..) {
                    failed(
                        Error::Internal(format!("decode step: {message}")),
                        &a.events,
                    );
                }
                active = waiting;
                continue;
            }
        };
        let mut still = waiting;
        for (mut a, row) in ready.drain(..).zip(logits) {
            let accepted = a.seq.accept_host(&model, row, &mut delta_sender(&a.events));
            match accepted {
                Ok(Some(next)) => {
                    a.next = next;
                    still.push(a);
                }
                Ok(None) => {
                    done(&a.seq, &a.events);
                    let (owner, tokens, cache) = a.seq.into_cached();
                    prefixes.keep(owner, tokens, cache);
                }
                Err(e) => failed(e, &a.events),
            }
        }
        active = still;
        counters.active.store(active.len(), Ordering::Relaxed);
    }
}

/// A new request: its sequence, ready for its prompt to be read (`None` when its consumer has
/// already gone or the request is refused, which `failed` reports).
fn admit(
    model: &LocalModel,
    job: Job,
    counters: &Counters,
    failed: &dyn Fn(Error, &mpsc::Sender<Result<ChatEvent>>),
) -> Option<Prefilling> {
    if job.events.is_closed() {
        counters.waiting.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    match Sequence::new(model, &job.prompt, &job.params) {
        Ok(seq) => Some(Prefilling {
            seq,
            events: job.events,
            prompt: job.prompt,
            done: 0,
        }),
        Err(e) => {
            failed(e, &job.events);
            None
        }
    }
}

/// A [`Summarizer`] that asks the chat model for a bounded summary.
pub struct ChatSummarizer {
    chat: Arc<dyn ChatModel>,
    /// Tokens of summary at most.
    pub max_tokens: usize,
}

impl ChatSummarizer {
    /// Summaries of at most `max_tokens` tokens from `chat`.
    pub fn new(chat: Arc<dyn ChatModel>, max_tokens: usize) -> Self {
        Self { chat, max_tokens }
    }
}

#[async_trait]
impl Summarizer for ChatSummarizer {
    async fn summarize(
        &self,
        user: &str,
        previous: Option<&str>,
        messages: &[Message],
    ) -> Result<String> {
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
            cache_owner: Some(user.to_owned()),
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

    fn max_input_tokens(&self) -> usize {
        // The window less the summary itself and the instructions around the transcript.
        self.chat
            .context_length()
            .saturating_sub(self.max_tokens + INSTRUCTION_TOKENS)
            .max(1)
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.chat.token_counter().count(text)
    }
}

/// Tokens of the summarizer's instructions and chat template around the transcript, with a
/// margin.
const INSTRUCTION_TOKENS: usize = 96;
