//! Integration tests of recall-core against real databases and real model weights.
mod backend_specific;
mod backup;
mod chat_tokenizer;
mod classifier;
mod context;
mod embeddings;
mod encryption;
mod fixtures;
mod jobs;
mod llm;
mod migrations;
mod remote;
mod retrieval;
mod store_conformance;
mod summaries;
mod tiny_models;
mod vectors;
