//! The `deep-recall` command line and server, run as real processes against both stores (one
//! file per area, shared fixtures in `fixtures`), and the workspace's module layering.
mod auth;
mod chat;
mod cli;
mod cli_memory;
mod conformance;
mod crash;
mod deep_memory;
mod eval;
mod events;
mod faults;
mod fixtures;
mod jobs;
mod layering;
mod limits;
mod load;
mod mcp;
mod memory;
mod memory_keys;
mod ops;
mod remote;
mod rest;
mod telemetry;
mod tls;
