//! The `deep-recall` command line, run as a real process against both stores.
mod cli;
