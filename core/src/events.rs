//! Changes as they happen, for subscribers (the server's `memoryEvents` and `jobProgress`
//! subscriptions). One broadcast channel carries every user's events; a subscription is made
//! for one user and only ever yields that user's events.
//!
//! Several server replicas over one Postgres database see each other's events through a
//! [`Fanout`] (Postgres `LISTEN`/`NOTIFY`, see [`crate::store::pg::PgFanout`]): started with
//! [`crate::Engine::start_fanout`], every event published here is also sent to the other
//! replicas, and theirs are published here. The wire carries ids, never memory content: a
//! replica reads the memory from the store (scoped to the event's user) before publishing it.
//! A job's state travels whole (it holds no content).
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Open [`Watch`]es (the server's own listeners, not counted as subscriptions).
    watches: Arc<AtomicUsize>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            outbound: Arc::default(),
            watches: Arc::default(),
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

    /// Whether a fan-out runs (events sent to the other replicas).
    pub(crate) fn fans_out(&self) -> bool {
        self.outbound.get().is_some()
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

    /// Every user's events from now on, for the server's own work (a schedule that acts on
    /// the users who wrote); never handed to a client, whose subscriptions are one user's.
    pub fn watch_all(&self) -> Watch {
        self.watches.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx: self.tx.subscribe(),
            watches: self.watches.clone(),
        }
    }

    /// Open subscriptions (not counting [`Watch`]es).
    pub fn subscribers(&self) -> usize {
        self.tx
            .receiver_count()
            .saturating_sub(self.watches.load(Ordering::Relaxed))
    }
}

/// Every user's events ([`EventBus::watch_all`]).
#[derive(Debug)]
pub struct Watch {
    rx: broadcast::Receiver<Event>,
    watches: Arc<AtomicUsize>,
}

impl Watch {
    /// The next event of any user; `None` once the publisher is gone.
    pub async fn next(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(e) => Some(Received::Event(Box::new(e))),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watches.fetch_sub(1, Ordering::Relaxed);
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

/// What travels between replicas: who and what changed, never memory content. A job travels
/// whole (its state holds no content): read back from the store on arrival, a fast job would
/// already be past the state the message announced, and followers would miss states.
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
    /// A job changed: its state at that moment.
    Job {
        /// The job.
        job: Box<Job>,
    },
    /// The user's data changed: cached queries are stale.
    Invalidate {
        /// Whose.
        user: String,
    },
}

/// The longest job error sent between replicas, in bytes.
const MAX_WIRE_ERROR: usize = 2000;

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
            Event::Job(j) => {
                let mut job = j.clone();
                // NOTIFY payloads are limited to 8000 bytes; the rest of a job is small.
                if let Some(error) = job.error.as_mut()
                    && error.len() > MAX_WIRE_ERROR
                {
                    let mut end = MAX_WIRE_ERROR;
                    while !error.is_char_boundary(end) {
                        end -= 1;
                    }
                    error.truncate(end);
                }
                WireEvent::Job { job }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobKind, JobStatus};
    use chrono::Utc;

    #[test]
    fn a_job_travels_whole_and_fits_a_notify_payload() {
        let now = Utc::now();
        let job = Job {
            id: 7,
            user: "alice".into(),
            kind: JobKind::DeleteUser,
            status: JobStatus::Failed,
            progress: 0.5,
            message: Some("deleting".into()),
            params: serde_json::json!({}),
            result: None,
            error: Some("é".repeat(5000)),
            attempts: 3,
            run_at: now,
            created_at: now,
            updated_at: now,
            started_at: Some(now),
            finished_at: Some(now),
        };
        let message = WireMessage {
            origin: "r1".into(),
            event: WireEvent::of(&Event::Job(Box::new(job.clone()))),
        };
        let payload = serde_json::to_string(&message).unwrap();
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        let back: WireMessage = serde_json::from_str(&payload).unwrap();
        let WireEvent::Job { job: sent } = back.event else {
            panic!("a job event");
        };
        assert_eq!(sent.status, JobStatus::Failed);
        assert_eq!(sent.progress, 0.5);
        assert!(
            job.error
                .unwrap()
                .starts_with(sent.error.as_deref().unwrap())
        );
        assert_eq!(sent.error.unwrap().len(), MAX_WIRE_ERROR);
    }

    fn added(user: &str, id: i64) -> Event {
        Event::Memory(Box::new(MemoryEvent {
            user: user.into(),
            action: MemoryAction::Added,
            memory_id: id,
            kind: Some(MemoryKind::Message),
            memory: None,
        }))
    }

    #[tokio::test]
    async fn a_watch_hears_every_user_and_is_not_counted_as_a_subscription() {
        let bus = EventBus::default();
        let mut alice = bus.subscribe("alice");
        let mut watch = bus.watch_all();
        assert_eq!(bus.subscribers(), 1);
        bus.publish(added("bob", 1));
        bus.publish(added("alice", 2));
        for (user, id) in [("bob", 1), ("alice", 2)] {
            let Some(Received::Event(e)) = watch.next().await else {
                panic!("an event");
            };
            let Event::Memory(m) = *e else {
                panic!("a memory event");
            };
            assert_eq!((m.user.as_str(), m.memory_id), (user, id));
        }
        // Alice's subscription hears her event only.
        let Some(Received::Event(e)) = alice.next().await else {
            panic!("an event");
        };
        assert_eq!(e.user(), "alice");
        drop(watch);
        assert_eq!(bus.subscribers(), 1);
        drop(alice);
        assert_eq!(bus.subscribers(), 0);
        // A watch that falls behind is told how far.
        let mut watch = bus.watch_all();
        for id in 0..(CAPACITY as i64 + 5) {
            bus.publish(added("bob", id));
        }
        assert_eq!(watch.next().await, Some(Received::Lagged(5)));
    }
}
