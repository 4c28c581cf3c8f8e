//! Sessions (conversations): created, renamed, listed, deleted with everything in them.
use super::*;
use crate::error::Error;
use crate::persona;
use crate::types::{NewMemory, Page, PageRequest, Session, SessionPatch};

impl Engine {
    /// Creates the session if needed and applies `patch` (title, persona). A new persona
    /// card is stored as the session's `persona` memories too, one per chunk
    /// ([`crate::persona`]), replacing those of the card before.
    pub async fn create_session(
        &self,
        user: &str,
        session: &str,
        patch: SessionPatch,
    ) -> Result<Session> {
        let persona = patch.persona.clone();
        let stored = self.store.upsert_session(user, session, patch).await?;
        if let Some(card) = persona {
            self.index_persona(user, session, card.as_deref()).await?;
        }
        Ok(stored)
    }

    /// Replaces the session's persona memories with the chunks of `card` (none for `None`).
    async fn index_persona(&self, user: &str, session: &str, card: Option<&str>) -> Result<()> {
        let old = self
            .store
            .list_memories(
                user,
                &Filter {
                    session: Some(session.to_owned()),
                    kinds: vec![MemoryKind::Persona],
                    include_superseded: true,
                    ..Filter::default()
                },
                &PageRequest {
                    first: persona::MAX_PERSONA_CHUNKS * 2,
                    after: None,
                },
            )
            .await?;
        let ids: Vec<i64> = old.items.iter().map(|m| m.id).collect();
        if !ids.is_empty() {
            self.delete_memories(user, &ids).await?;
        }
        let pieces = card.map(persona::chunks).unwrap_or_default();
        if pieces.is_empty() {
            return Ok(());
        }
        let this = self.scoped(user).await?;
        let vectors = this.embedder.embed(pieces.clone()).await?;
        let n = pieces.len();
        let memories = pieces
            .into_iter()
            .zip(vectors)
            .enumerate()
            .map(|(i, (text, vector))| NewMemory {
                session: Some(session.to_owned()),
                metadata: json!({ persona::PERSONA_CHUNK_KEY: i, "persona_chunks": n }),
                ..NewMemory::new(MemoryKind::Persona, text, this.embedding(vector))
            })
            .collect();
        let out = self.store.add_memories(user, memories).await;
        self.changed(user);
        for m in &out? {
            self.published(user, MemoryAction::Added, m);
        }
        Ok(())
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
        self.limits().check_user_id(user)?;
        self.store.list_sessions(user, page).await
    }

    /// Deletes a session with its messages, memories and summaries; each memory's deletion
    /// is announced to `memoryEvents` subscribers. [`Error::NotFound`] if the user has no such
    /// session.
    pub async fn delete_session(&self, user: &str, session: &str) -> Result<()> {
        let out = self.store.delete_session(user, session).await;
        self.changed_now(user).await;
        let Some(gone) = out? else {
            return Err(Error::not_found("session", session));
        };
        self.published_deletions(user, &gone);
        Ok(())
    }
}
