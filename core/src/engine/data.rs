//! The user and their data rights: settings, export, deletion and the audit log. Every change
//! here is written to the audit log by the store, in the same transaction.
use super::*;
use crate::types::{
    Actor, AuditEntry, DeletionReport, ExportOptions, Page, PageRequest, User, UserExport,
};

impl Engine {
    /// The user, if they have stored anything.
    pub async fn user(&self, user: &str) -> Result<Option<User>> {
        self.store.get_user(user).await
    }

    /// The user's settings (`{}` when none were stored).
    pub async fn settings(&self, user: &str) -> Result<Value> {
        self.store.get_settings(user).await
    }

    /// Replaces the user's settings (a JSON object); audited.
    pub async fn update_settings(
        &self,
        user: &str,
        settings: Value,
        actor: &Actor,
    ) -> Result<Value> {
        self.store.put_settings(user, settings, actor).await
    }

    /// Everything stored about the user; audited. [`crate::error::Error::NotFound`] for an
    /// unknown user.
    pub async fn export(
        &self,
        user: &str,
        options: &ExportOptions,
        actor: &Actor,
    ) -> Result<UserExport> {
        self.store.export_user(user, options, actor).await
    }

    /// Deletes everything of the user (messages, memories and their vectors, summaries,
    /// settings) and drops their cached queries; `actor` is written to the audit log.
    pub async fn delete_user(&self, user: &str, actor: &Actor) -> Result<DeletionReport> {
        let out = self.store.delete_user(user, actor).await;
        self.changed(user);
        out
    }

    /// The audit log of the user's data, oldest first.
    pub async fn audit_log(&self, user: &str, page: &PageRequest) -> Result<Page<AuditEntry>> {
        self.store.audit_log(user, page).await
    }
}
