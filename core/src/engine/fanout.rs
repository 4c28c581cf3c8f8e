//! The fan-out of events between the replicas that share a database.
use super::*;
use crate::error::Error;
use crate::events::WireMessage;

/// The running fan-out of an engine's events (see [`Engine::start_fanout`]); stops when
/// dropped.
pub struct FanoutHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FanoutHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Engine {
    /// Starts the fan-out of events between the replicas that share this engine's database
    /// (Postgres `LISTEN`/`NOTIFY`): events published here reach the other replicas'
    /// subscribers and theirs reach this one's; their writes drop this replica's cached
    /// queries. `None` when the store has no fan-out (the embedded store is one process).
    /// Runs until the handle is dropped.
    pub async fn start_fanout(&self) -> Result<Option<FanoutHandle>> {
        let Some(fanout) = self.store.fanout() else {
            return Ok(None);
        };
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let origin = format!(
            "{}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        // Listen before anything is sent, so that no event of this replica's is missed.
        let mut listener = fanout.listen().await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<WireEvent>();
        if !self.events.set_outbound(tx) {
            return Err(Error::invalid(
                "the fan-out of this engine is already started",
            ));
        }
        let sender = {
            let fanout = fanout.clone();
            let origin = origin.clone();
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let message = WireMessage {
                        origin: origin.clone(),
                        event,
                    };
                    let payload = match serde_json::to_string(&message) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(error = %e, "fan-out: cannot encode an event");
                            continue;
                        }
                    };
                    if let Err(e) = fanout.notify(&payload).await {
                        tracing::warn!(error = %e, "fan-out: cannot send an event");
                    }
                }
            })
        };
        let engine = self.clone();
        let receiver = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(payload) => engine.receive_remote(&origin, &payload).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "fan-out: listener lost; reconnecting");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        match fanout.listen().await {
                            Ok(l) => {
                                listener = l;
                                // Other replicas' writes while it was down went unheard.
                                engine.cache.invalidate_all();
                            }
                            Err(e) => tracing::warn!(error = %e, "fan-out: cannot listen"),
                        }
                    }
                }
            }
        });
        Ok(Some(FanoutHandle {
            tasks: vec![sender, receiver],
        }))
    }

    /// Publishes here what another replica announced: a memory read from the store within the
    /// event's user (the wire carries its id only), a job as it was sent.
    async fn receive_remote(&self, own: &str, payload: &str) {
        let message: WireMessage = match serde_json::from_str(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "fan-out: malformed message ignored");
                return;
            }
        };
        if message.origin == own {
            return;
        }
        match message.event {
            WireEvent::Invalidate { user } => self.cache.invalidate(&user),
            WireEvent::Memory {
                user,
                action,
                id,
                kind,
            } => {
                let memory = if action == MemoryAction::Deleted {
                    None
                } else {
                    match self.store.get_memory(&user, id).await {
                        Ok(Some(m)) => Some(m),
                        // Deleted since (its deletion follows) or unreadable: nothing to show.
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "fan-out: cannot read a memory");
                            return;
                        }
                    }
                };
                self.events
                    .publish_local(Event::Memory(Box::new(MemoryEvent {
                        user,
                        action,
                        memory_id: id,
                        kind,
                        memory,
                    })));
            }
            WireEvent::Job { job } => self.events.publish_local(Event::Job(job)),
        }
    }
}
