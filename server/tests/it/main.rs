//! The `deep-recall` command line and server, run as real processes against both stores.
mod cli;
mod rest;
mod server;
