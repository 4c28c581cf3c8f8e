//! The user and their data rights: settings, export, deletion and the audit log. Every change
//! here is written to the audit log by the store, in the same transaction.
use std::path::Path;

use super::*;
use crate::backup::{
    self, AtomicFile, BackupOptions, BackupReport, BackupWriter, RestoreOptions, RestoreReport,
};
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
    /// settings) and drops their cached queries, on the other replicas too before it returns;
    /// `actor` is written to the audit log. Each memory's deletion is announced to
    /// `memoryEvents` subscribers.
    pub async fn delete_user(&self, user: &str, actor: &Actor) -> Result<DeletionReport> {
        // Queued jobs go with the data (the store deletes them); those following one hear it
        // end, cancelled.
        // (Every page: a user's finished jobs, newest first, can fill many before a job
        // queued to run later.)
        let first = self.store.limits().max_page_size;
        let mut queued: Vec<crate::jobs::Job> = Vec::new();
        let mut after = None;
        while let Ok(page) = self
            .jobs
            .list_jobs(user, &PageRequest { first, after })
            .await
        {
            queued.extend(
                page.items
                    .into_iter()
                    .filter(|j| j.status == crate::jobs::JobStatus::Queued),
            );
            match page.next_cursor {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let out = self.store.delete_user(user, actor).await;
        self.changed_now(user).await;
        let (report, gone) = out?;
        self.published_deletions(user, &gone);
        let now = Utc::now();
        for mut job in queued {
            job.status = crate::jobs::JobStatus::Cancelled;
            job.message = Some("the user's data was deleted".into());
            job.updated_at = now;
            job.finished_at = Some(now);
            self.publish(Event::Job(Box::new(job)));
        }
        Ok(report)
    }

    /// Writes a backup of every user (or `options.user`) to `path`: one consistent snapshot,
    /// taken while writers go on, in the format of [`crate::backup`]. The file appears under
    /// its name only once complete.
    pub async fn backup(&self, path: &Path, options: &BackupOptions) -> Result<BackupReport> {
        self.backup_with_progress(path, options, &mut |_, _| {})
            .await
    }

    /// [`Engine::backup`], telling `on_user(done, total)` as each user starts.
    pub async fn backup_with_progress(
        &self,
        path: &Path,
        options: &BackupOptions,
        on_user: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<BackupReport> {
        let (file, out) = AtomicFile::create(path)?;
        let key = self.data_key();
        let mut writer = BackupWriter::new(backup::Output::new(out, key)?);
        self.store
            .backup(
                options.user.as_deref(),
                &mut backup::Progress::new(&mut writer, on_user),
            )
            .await?;
        let (out, mut report) = writer.finish()?;
        report.bytes = file.commit(out.finish()?)?;
        report.encrypted_with = key.map(|k| k.id());
        report.path = path.to_owned();
        Ok(report)
    }

    /// Restores the backup at `path`. The whole file is checked first (format, every record,
    /// checksum): a damaged file is [`crate::error::Error::InvalidInput`] and nothing is
    /// written. Then everything is written in one transaction; see
    /// [`crate::store::MemoryStore::restore`] for what replaces what.
    pub async fn restore(
        &self,
        path: &Path,
        options: &RestoreOptions,
        actor: &Actor,
    ) -> Result<RestoreReport> {
        // The current key, or a previous one for a file from before a rotation (the rows are
        // sealed again with the store's current key).
        let keys: Vec<Arc<crate::crypto::DataKey>> = self
            .data_key
            .iter()
            .chain(&self.previous_data_keys)
            .cloned()
            .collect();
        let (file, user, held) = (path.to_owned(), options.user.clone(), keys.clone());
        let plan = tokio::task::spawn_blocking(move || {
            let keys: Vec<&crate::crypto::DataKey> = held.iter().map(|k| k.as_ref()).collect();
            backup::verify(&file, user.as_deref(), &keys)
        })
        .await
        .map_err(|e| crate::error::Error::Internal(format!("backup check: {e}")))??;
        let keys: Vec<&crate::crypto::DataKey> = keys.iter().map(|k| k.as_ref()).collect();
        let mut source = backup::open(path, options.user.as_deref(), &keys)?;
        let report = self
            .store
            .restore(&plan, options, &mut source, actor)
            .await?;
        for user in &plan.users {
            if options.user.as_ref().is_none_or(|u| u == user) {
                self.changed_now(user).await;
            }
        }
        Ok(report)
    }

    /// Re-seals every stored row with the current data key; see
    /// [`crate::store::MemoryStore::rotate_keys`]. Stored text does not change, so no cache is
    /// dropped.
    pub async fn rotate_keys(
        &self,
        on_rows: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<crate::store::KeyRotationReport> {
        self.store.rotate_keys(on_rows).await
    }

    /// Database maintenance; see [`crate::store::MemoryStore::optimize`]. Cached query
    /// results are unaffected (the data does not change).
    pub async fn optimize(&self) -> Result<crate::store::OptimizeReport> {
        self.store.optimize().await
    }

    /// The audit log of the user's data, oldest first.
    pub async fn audit_log(&self, user: &str, page: &PageRequest) -> Result<Page<AuditEntry>> {
        self.store.audit_log(user, page).await
    }
}
