//! The native addon of the `deep-recall` npm package: core's engine inside a Node process.
//! Private: the public API is `index.js` (classes, async iterators, error classes). Values
//! cross as JSON text; every rule (limits, roles, modes, chat parameters) is core's. Every
//! call runs on napi's tokio runtime, off the JavaScript thread.
mod chat;
mod engine;
mod error;
mod types;
