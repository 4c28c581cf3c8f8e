//! # recall-server
//!
//! The `deep-recall` binary: the command line over [`recall_core`] and the server — GraphQL
//! (queries, mutations, subscriptions over graphql-ws) and OpenAI-compatible REST on axum, with
//! authentication, rate limits and metrics.
pub mod app;
pub mod auth;
pub mod cli;
pub mod graphql;
pub mod limits;
pub mod metrics;
pub mod rest;
pub mod settings;
