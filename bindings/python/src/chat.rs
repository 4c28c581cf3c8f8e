//! `ChatStream`: a streamed chat turn as a Python iterator. Dropping it (or `close()`) stops
//! the generation, as the pipeline promises.
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use recall_core::chat::ChatUpdate;
use tokio::sync::mpsc::Receiver;

use crate::error::{json as json_err, to_py};
use crate::types::result;

/// The updates of one chat turn: `("delta", text)`s, then one `("done", json)`.
#[pyclass(frozen, module = "deep_recall._native")]
pub struct ChatStream {
    updates: Mutex<Option<Receiver<recall_core::Result<ChatUpdate>>>>,
    /// Set by `close`, which must not wait for a `__next__` under way on another thread.
    closed: AtomicBool,
}

impl ChatStream {
    pub fn new(updates: Receiver<recall_core::Result<ChatUpdate>>) -> Self {
        Self {
            updates: Mutex::new(Some(updates)),
            closed: AtomicBool::new(false),
        }
    }
}

#[pymethods]
impl ChatStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<(String, String)> {
        py.detach(|| {
            let mut guard = self.updates.lock().expect("chat stream");
            if self.closed.load(Ordering::SeqCst) {
                guard.take();
            }
            let Some(rx) = guard.as_mut() else {
                return Err(PyStopIteration::new_err(()));
            };
            let next = rx.blocking_recv();
            if self.closed.load(Ordering::SeqCst) {
                // Closed while this waited: the generation stops with the receiver.
                guard.take();
                return Err(PyStopIteration::new_err(()));
            }
            match next {
                Some(Ok(ChatUpdate::Delta { text })) => Ok(("delta".to_owned(), text)),
                Some(Ok(ChatUpdate::Done(r))) => {
                    *guard = None;
                    let text = serde_json::to_string(&result(&r)).map_err(json_err)?;
                    Ok(("done".to_owned(), text))
                }
                Some(Err(e)) => {
                    *guard = None;
                    Err(to_py(e))
                }
                None => {
                    // Ended without its result (the engine that ran it is gone): an error,
                    // not a silent end that looks like a whole answer.
                    *guard = None;
                    Err(to_py(recall_core::Error::unavailable(
                        "the chat ended without an answer (was the Memory closed?)",
                    )))
                }
            }
        })
    }

    /// Stops the generation; the iterator ends. Safe from any thread, and it does not wait:
    /// a `__next__` waiting for the next piece on another thread ends with it.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(mut guard) = self.updates.try_lock() {
            guard.take();
        }
    }
}
