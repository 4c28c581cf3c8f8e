//! Local chat models: their tokenizers (what the context assembler counts with), chat
//! templates, GGUF and safetensors models (Llama, Mistral, Qwen2/3, Phi-3) with candle, and the async service around them.
//!
//! Everything that answers a conversation — the local [`ChatService`] and the
//! [`RemoteChat`] provider — is a [`ChatModel`]; the chat pipeline, the summarizer and the
//! server only see that trait.
pub mod decoder;
pub mod local;
pub mod prefix;
pub mod remote;
pub mod service;
pub mod template;
pub mod tokenizer;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use local::{
    Completion, DEFAULT_MAX_CONTEXT, FinishReason, GenerationParams, LocalModel, ModelConfig,
    Precision,
};
pub use remote::{RemoteChat, RemoteConfig};
pub use service::{ChatEvent, ChatService, ChatSummarizer, WorkerLimits};
pub use template::ChatTemplate;

use crate::context::{ChatTurn, TokenCounter};
use crate::error::{Error, Result};

/// A model that answers conversations, streamed.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// The model's name (reported with answers and by `/v1/models`).
    fn name(&self) -> &str;

    /// Tokens the model sees at most (prompt and answer).
    fn context_length(&self) -> usize;

    /// Counts tokens the way the model does (or a close estimate, for remote models).
    fn token_counter(&self) -> &dyn TokenCounter;

    /// Requests waiting or being served.
    fn queue_depth(&self) -> usize {
        0
    }

    /// Whether it can answer at all now (a server's readiness asks): a local model whose
    /// worker has stopped cannot, and says why.
    fn check_ready(&self) -> Result<()> {
        Ok(())
    }

    /// Streams the assistant's answer: [`ChatEvent::Delta`]s, then one [`ChatEvent::Done`].
    /// Dropping the receiver cancels the generation.
    async fn stream(
        &self,
        turns: &[ChatTurn],
        params: &GenerationParams,
    ) -> Result<mpsc::Receiver<Result<ChatEvent>>>;

    /// The whole answer at once.
    async fn complete(&self, turns: &[ChatTurn], params: &GenerationParams) -> Result<Completion> {
        let mut rx = self.stream(turns, params).await?;
        while let Some(event) = rx.recv().await {
            if let ChatEvent::Done { completion } = event? {
                return Ok(completion);
            }
        }
        Err(Error::unavailable("the chat model stopped mid-answer"))
    }
}

pub use crate::context::ApproxCounter;

#[async_trait]
impl ChatModel for ChatService {
    fn name(&self) -> &str {
        ChatService::name(self)
    }
    fn context_length(&self) -> usize {
        ChatService::context_length(self)
    }
    fn token_counter(&self) -> &dyn TokenCounter {
        self.tokenizer()
    }
    fn queue_depth(&self) -> usize {
        ChatService::queue_depth(self)
    }
    fn check_ready(&self) -> Result<()> {
        ChatService::check_ready(self)
    }
    async fn stream(
        &self,
        turns: &[ChatTurn],
        params: &GenerationParams,
    ) -> Result<mpsc::Receiver<Result<ChatEvent>>> {
        ChatService::stream(self, turns, params).await
    }
}

#[async_trait]
impl ChatModel for RemoteChat {
    fn name(&self) -> &str {
        &self.config().model
    }
    fn context_length(&self) -> usize {
        self.config().context_length
    }
    fn token_counter(&self) -> &dyn TokenCounter {
        &ApproxCounter
    }
    async fn stream(
        &self,
        turns: &[ChatTurn],
        params: &GenerationParams,
    ) -> Result<mpsc::Receiver<Result<ChatEvent>>> {
        RemoteChat::stream(self, turns, params).await
    }
    async fn complete(&self, turns: &[ChatTurn], params: &GenerationParams) -> Result<Completion> {
        RemoteChat::complete(self, turns, params).await
    }
}
