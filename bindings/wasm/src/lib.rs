//! Deep Recall in WebAssembly (npm package `deep-recall-wasm`): a private memory that lives in
//! the page. `Embedder` runs the embedding model (the caller supplies its files: nothing is
//! fetched at run time) and `MemoryIndex` keeps memories per user and ranks them with the
//! core's retrieval (BM25 + vector fusion, the same signals); the index can be saved as bytes.
//! `PromptBuilder` assembles the prompt for a reply from it within a chat model's token
//! budget. Thin: every rule is the core's.
mod embed;
mod error;
mod index;
mod prompt;

pub use embed::Embedder;
pub use index::MemoryIndex;
pub use prompt::PromptBuilder;
