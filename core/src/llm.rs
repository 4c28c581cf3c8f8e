//! Local chat models: their tokenizers (what the context assembler counts with), chat
//! templates, and GGUF llama-family models with candle.
pub mod gguf;
pub mod template;
pub mod tokenizer;

pub use gguf::{Completion, FinishReason, GenerationParams, GgufModel, ModelConfig};
pub use template::ChatTemplate;
