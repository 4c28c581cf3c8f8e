//! Changes to users' memories as they happen, for subscribers (the server's `memoryEvents`
//! subscription). One broadcast channel carries every user's events; a subscription is made
//! for one user and only ever yields that user's events.
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::types::{Memory, MemoryKind};

/// What happened to a memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryAction {
    /// It was written (with a message, by `add_memory`, or as a summary).
    Added,
    /// Its text, tags, metadata or importance changed.
    Updated,
    /// It was deleted.
    Deleted,
}

/// One change to one memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEvent {
    /// Whose memory.
    pub user: String,
    /// What happened.
    pub action: MemoryAction,
    /// The memory's id.
    pub memory_id: i64,
    /// Its kind, when known.
    pub kind: Option<MemoryKind>,
    /// The memory after the change (absent for deletions).
    pub memory: Option<Memory>,
}

/// Events buffered per subscriber; a subscriber that falls further behind skips ahead (and
/// is told how many it missed).
const CAPACITY: usize = 1024;

/// The publishing side, shared by the engine's clones.
#[derive(Debug, Clone)]
pub struct MemoryEvents {
    tx: broadcast::Sender<MemoryEvent>,
}

impl Default for MemoryEvents {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl MemoryEvents {
    /// Publishes an event (a no-op without subscribers).
    pub fn publish(&self, event: MemoryEvent) {
        let _ = self.tx.send(event);
    }

    /// Events of `user` from now on.
    pub fn subscribe(&self, user: &str) -> MemorySubscription {
        MemorySubscription {
            user: user.to_owned(),
            rx: self.tx.subscribe(),
        }
    }

    /// Open subscriptions.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// One user's events.
#[derive(Debug)]
pub struct MemorySubscription {
    user: String,
    rx: broadcast::Receiver<MemoryEvent>,
}

/// What [`MemorySubscription::next`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// The next event.
    Event(Box<MemoryEvent>),
    /// The subscriber fell behind and this many events (of all users) were skipped.
    Lagged(u64),
}

impl MemorySubscription {
    /// The next event of the user; `None` once the publisher is gone.
    pub async fn next(&mut self) -> Option<Received> {
        loop {
            match self.rx.recv().await {
                Ok(e) if e.user == self.user => return Some(Received::Event(Box::new(e))),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Received::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
