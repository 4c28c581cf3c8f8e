//! Local chat models: their tokenizers (what the context assembler counts with), chat
//! templates, GGUF llama-family models with candle, and the async service around them.
pub mod gguf;
pub mod llama;
pub mod remote;
pub mod service;
pub mod template;
pub mod tokenizer;

pub use gguf::{Completion, FinishReason, GenerationParams, GgufModel, ModelConfig};
pub use remote::{RemoteChat, RemoteConfig};
pub use service::{ChatEvent, ChatService, ChatSummarizer};
pub use template::ChatTemplate;
