//! Schema migrations for Deep Recall's stores (Postgres + pgvector, and the embedded SQLite
//! store). The schema changes only through these migrations; each one has an `up` and a `down`.
//!
//! Both backends share one set of migrations: a migration branches on
//! [`SchemaManager::get_database_backend`] where Postgres has features SQLite lacks (the
//! `vector` column type, generated `tsvector` columns, GIN and HNSW indexes).
pub use sea_orm_migration::prelude::*;

/// Every migration runs in one transaction, on SQLite too (sea-orm's default is Postgres
/// only): one that fails part-way (a full disk, a kill) leaves nothing behind, and runs again
/// whole, where its first statements, done again, would fail ("duplicate column") and the
/// store would never open. Used inside each `impl MigrationTrait`.
macro_rules! in_one_transaction {
    () => {
        fn use_transaction(&self) -> Option<bool> {
            Some(true)
        }
    };
}
pub(crate) use in_one_transaction;

mod m20261122_000001_create_memory_tables;
mod m20261123_000001_create_jobs;
mod m20261130_000001_add_session_watermark;
mod m20261130_000002_memory_neighbours_index;
mod m20261201_000001_encryption_at_rest;
mod m20261201_000002_user_embedding_model;
mod m20261201_000003_deep_memory;
mod m20261201_000004_memory_updated_index;
mod m20261201_000005_memory_validity;
mod m20261202_000001_memory_keys;
mod m20261202_000002_session_keys_watermark;
mod m20261204_000001_context_keys_watermark;

/// The embedding dimension of the default model (all-MiniLM-L6-v2). Postgres gets an HNSW index
/// for it in the first migration; indexes for other dimensions and metrics are created by the
/// store when it is opened with such a model (see `recall_core::store::pg`).
pub const DEFAULT_EMBEDDING_DIMS: u32 = 384;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_memory_tables::Migration),
            Box::new(m20261123_000001_create_jobs::Migration),
            Box::new(m20261130_000001_add_session_watermark::Migration),
            Box::new(m20261130_000002_memory_neighbours_index::Migration),
            Box::new(m20261201_000001_encryption_at_rest::Migration),
            Box::new(m20261201_000002_user_embedding_model::Migration),
            Box::new(m20261201_000003_deep_memory::Migration),
            Box::new(m20261201_000004_memory_updated_index::Migration),
            Box::new(m20261201_000005_memory_validity::Migration),
            Box::new(m20261202_000001_memory_keys::Migration),
            Box::new(m20261202_000002_session_keys_watermark::Migration),
            Box::new(m20261204_000001_context_keys_watermark::Migration),
        ]
    }
}
