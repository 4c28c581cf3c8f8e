//! Events between the replicas of one database: Postgres `LISTEN`/`NOTIFY`.
use async_trait::async_trait;
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use super::redact_url;
use crate::error::{Error, Result};
use crate::events::{Fanout, FanoutListener};

/// The Postgres channel that carries events between replicas.
pub const EVENTS_CHANNEL: &str = "deep_recall_events";

/// Largest `NOTIFY` payload Postgres takes (8000 bytes, less a margin).
const MAX_NOTIFY_BYTES: usize = 7900;

/// Events between the replicas of one database through `LISTEN`/`NOTIFY` on
/// [`EVENTS_CHANNEL`]. Sending uses the store's pool; each listener holds one connection of
/// its own.
pub struct PgFanout {
    pub(super) url: String,
    pub(super) db: DatabaseConnection,
}

#[async_trait]
impl Fanout for PgFanout {
    async fn notify(&self, payload: &str) -> Result<()> {
        if payload.len() > MAX_NOTIFY_BYTES {
            return Err(Error::invalid(format!(
                "event of {} bytes is over the {MAX_NOTIFY_BYTES}-byte NOTIFY limit",
                payload.len()
            )));
        }
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [EVENTS_CHANNEL.into(), payload.into()],
            ))
            .await?;
        Ok(())
    }

    async fn listen(&self) -> Result<Box<dyn FanoutListener>> {
        let unavailable = |e: sea_orm::sqlx::Error| Error::Unavailable {
            message: format!("cannot listen on Postgres at {}", redact_url(&self.url)),
            source: Some(Box::new(e)),
        };
        let mut listener = PgListener::connect(&self.url).await.map_err(unavailable)?;
        listener.listen(EVENTS_CHANNEL).await.map_err(unavailable)?;
        Ok(Box::new(PgEvents { listener }))
    }
}

struct PgEvents {
    listener: PgListener,
}

#[async_trait]
impl FanoutListener for PgEvents {
    async fn recv(&mut self) -> Result<String> {
        // `try_recv` reports a lost connection (as `None`) instead of silently reconnecting,
        // so that the caller knows events may have been missed.
        match self.listener.try_recv().await {
            Ok(Some(n)) => Ok(n.payload().to_owned()),
            Ok(None) => Err(Error::Unavailable {
                message: "the LISTEN connection to Postgres was lost".into(),
                source: None,
            }),
            Err(e) => Err(Error::Unavailable {
                message: "LISTEN on Postgres failed".into(),
                source: Some(Box::new(e)),
            }),
        }
    }
}
