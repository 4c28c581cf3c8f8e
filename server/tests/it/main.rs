//! The `deep-recall` command line and server, run as real processes against both stores, and
//! the workspace's module layering.
mod cli;
mod layering;
mod rest;
mod server;
