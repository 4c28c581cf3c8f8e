//! `deep_recall._native`: the core of Deep Recall inside a Python process. Private: the public
//! API is the `deep_recall` package (python/deep_recall), which gives these functions typed
//! names, dataclasses and an asyncio wrapper. Values cross as JSON text, decoded by the
//! package; every rule (limits, roles, modes, chat parameters) is core's.
mod chat;
mod engine;
mod error;
mod types;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    m.add_class::<chat::ChatStream>()?;
    error::register(m)?;
    Ok(())
}
