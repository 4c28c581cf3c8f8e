//! # recall-server
//!
//! The `deep-recall` binary: the command line over [`recall_core`] and the server — GraphQL
//! (queries, mutations, subscriptions over graphql-ws), OpenAI-compatible REST on axum and the
//! Model Context Protocol (stdio and streamable HTTP), with authentication, rate limits and
//! metrics.
//!
//! Modules depend one way, from the bottom up: [`settings`] and [`error`]; [`auth`],
//! [`limits`], [`metrics`], [`proxy`]; [`state`] (what every front door shares); the front doors
//! [`graphql`], [`rest`] and [`mcp`], and the web UI's assets ([`web`]); [`router`] (HTTP and WebSocket, over [`tls`] when configured); [`startup`] (the whole server as
//! a library function); [`cli`].
pub mod auth;
pub mod cli;
pub mod error;
pub mod graphql;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod proxy;
pub mod rest;
pub mod router;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod web;
