//! sea-orm entities of the SQL stores. They stay inside the store: the rest of the crate (and
//! every API) sees the types of [`crate::types`]. `memory_embeddings` has no entity: its vector
//! column differs per backend and is read and written by the vector index code.
pub mod audit_log;
pub mod job;
pub mod memory;
pub mod message;
pub mod session;
pub mod summary;
pub mod user;
pub mod user_setting;
