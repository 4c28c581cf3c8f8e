//! Sessions (conversations): created, renamed, listed, deleted with everything in them.
use super::*;
use crate::error::Error;
use crate::types::{Page, PageRequest, Session, SessionPatch};

impl Engine {
    /// Creates the session if needed and applies `patch` (title, persona).
    pub async fn create_session(
        &self,
        user: &str,
        session: &str,
        patch: SessionPatch,
    ) -> Result<Session> {
        self.store.upsert_session(user, session, patch).await
    }

    /// Changes an existing session's title; [`Error::NotFound`] if the user has no such
    /// session.
    pub async fn rename_session(
        &self,
        user: &str,
        session: &str,
        title: String,
    ) -> Result<Session> {
        if self.store.get_session(user, session).await?.is_none() {
            return Err(Error::not_found("session", session));
        }
        let patch = SessionPatch {
            title: Some(Some(title)),
            persona: None,
        };
        self.store.upsert_session(user, session, patch).await
    }

    /// One of the user's sessions.
    pub async fn session(&self, user: &str, session: &str) -> Result<Option<Session>> {
        self.store.get_session(user, session).await
    }

    /// The user's sessions, newest first.
    pub async fn sessions(&self, user: &str, page: &PageRequest) -> Result<Page<Session>> {
        self.store.list_sessions(user, page).await
    }

    /// Deletes a session with its messages, memories and summaries; each memory's deletion
    /// is announced to `memoryEvents` subscribers. [`Error::NotFound`] if the user has no such
    /// session.
    pub async fn delete_session(&self, user: &str, session: &str) -> Result<()> {
        let out = self.store.delete_session(user, session).await;
        self.changed(user);
        let Some(gone) = out? else {
            return Err(Error::not_found("session", session));
        };
        for m in gone {
            self.publish_memory(MemoryEvent {
                user: user.to_owned(),
                action: MemoryAction::Deleted,
                memory_id: m.id,
                kind: Some(m.kind),
                memory: None,
            });
        }
        Ok(())
    }
}
