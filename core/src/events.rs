//! Changes as they happen, for subscribers (the server's `memoryEvents` and `jobProgress`
//! subscriptions). One broadcast channel carries every user's events; a subscription is made
//! for one user and only ever yields that user's events.
//!
//! Several server replicas over one Postgres database see each other's events through a
//! [`Fanout`] (Postgres `LISTEN`/`NOTIFY`, see [`crate::store::pg::PgFanout`]): started with
//! [`crate::Engine::start_fanout`], every event published here is also sent to the other
//! replicas, and theirs are published here. The wire carries ids, never content: a replica
//! reads the memory or job from the store (scoped to the event's user) before publishing it.
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use tokio::sync::{broadcast, mpsc};

use crate::error::Result;
use crate::jobs::Job;
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

/// Anything a subscriber may hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A memory changed.
    Memory(Box<MemoryEvent>),
    /// A background job changed (its new state).
    Job(Box<Job>),
}

impl Event {
    /// Whose event it is.
    pub fn user(&self) -> &str {
        match self {
            Event::Memory(e) => &e.user,
            Event::Job(j) => &j.user,
        }
    }
}

/// Events buffered per subscriber; a subscriber that falls further behind skips ahead (and
/// is told how many it missed).
const CAPACITY: usize = 1024;

/// The publishing side, shared by the engine's clones.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    /// Events to send to the other replicas, once a fan-out is started.
    outbound: Arc<OnceLock<mpsc::UnboundedSender<WireEvent>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            outbound: Arc::default(),
        }
    }
}

impl EventBus {
    /// Publishes an event here and, with a fan-out, to the other replicas.
    pub fn publish(&self, event: Event) {
        self.send_remote(WireEvent::of(&event));
        self.publish_local(event);
    }

    /// Publishes an event to this process's subscribers only (events from other replicas).
    pub fn publish_local(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// Sends a message to the other replicas (a no-op without a fan-out).
    pub(crate) fn send_remote(&self, event: WireEvent) {
        if let Some(out) = self.outbound.get() {
            let _ = out.send(event);
        }
    }

    /// Sends every event published from now on to `out` too; false if a fan-out was set.
    pub(crate) fn set_outbound(&self, out: mpsc::UnboundedSender<WireEvent>) -> bool {
        self.outbound.set(out).is_ok()
    }

    /// Events of `user` from now on.
    pub fn subscribe(&self, user: &str) -> Subscription {
        Subscription {
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
pub struct Subscription {
    user: String,
    rx: broadcast::Receiver<Event>,
}

/// What [`Subscription::next`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// The next event.
    Event(Box<Event>),
    /// The subscriber fell behind and this many events (of all users) were skipped.
    Lagged(u64),
}

impl Subscription {
    /// The next event of the user; `None` once the publisher is gone.
    pub async fn next(&mut self) -> Option<Received> {
        loop {
            match self.rx.recv().await {
                Ok(e) if e.user() == self.user => return Some(Received::Event(Box::new(e))),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Received::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// What travels between replicas: who and what changed, never content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum WireEvent {
    /// A memory changed.
    Memory {
        /// Whose.
        user: String,
        /// What happened.
        action: MemoryAction,
        /// Which memory.
        id: i64,
        /// Its kind.
        kind: Option<MemoryKind>,
    },
    /// A job changed.
    Job {
        /// Whose.
        user: String,
        /// Which job.
        id: i64,
    },
    /// The user's data changed: cached queries are stale.
    Invalidate {
        /// Whose.
        user: String,
    },
}

/// One message between replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMessage {
    /// The replica that sent it (each ignores its own).
    pub origin: String,
    /// The event.
    pub event: WireEvent,
}

impl WireEvent {
    /// The wire form of an event.
    pub fn of(event: &Event) -> Self {
        match event {
            Event::Memory(e) => WireEvent::Memory {
                user: e.user.clone(),
                action: e.action,
                id: e.memory_id,
                kind: e.kind,
            },
            Event::Job(j) => WireEvent::Job {
                user: j.user.clone(),
                id: j.id,
            },
        }
    }
}

/// A channel between the replicas that share a database.
#[async_trait]
pub trait Fanout: Send + Sync {
    /// Sends a message to every listener (this replica's included).
    async fn notify(&self, payload: &str) -> Result<()>;

    /// Starts listening; messages sent from now on arrive on the listener.
    async fn listen(&self) -> Result<Box<dyn FanoutListener>>;
}

/// The receiving end of a [`Fanout`].
#[async_trait]
pub trait FanoutListener: Send {
    /// The next message. Errors when the connection is lost (listen again).
    async fn recv(&mut self) -> Result<String>;
}
