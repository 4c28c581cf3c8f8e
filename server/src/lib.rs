//! # recall-server
//!
//! The `deep-recall` binary: the command line over [`recall_core`] (and, later, the GraphQL
//! server).
pub mod cli;
