//! Encryption at rest: rows sealed and opened with the store's [`Keyring`], the registry of
//! key ids that may be in use (`encryption_keys`), and key rotation.
//!
//! Sealed: the text and metadata of messages and memories, the text of summaries, and the
//! questions of deep memory pairs; the row's `key_id` names the key (NULL: in the clear).
//! Everything else stays readable to whoever reads the database: ids, user and session names,
//! session titles and personas, roles, kinds, tags, importance, emotions, timestamps,
//! settings, the audit log, the embedding vectors and the weights of query adapters. Postgres keeps no full-text index of sealed rows (its generated `tsv`
//! column covers clear rows only); they are searched in process (see `pg.rs`).
use std::time::Instant;

use super::*;
use crate::crypto::{Keyring, unknown_key};
use crate::store::KeyRotationReport;

pub(crate) const MESSAGE_CONTENT: &str = "messages.content";
pub(crate) const MESSAGE_METADATA: &str = "messages.metadata";
pub(crate) const MEMORY_CONTENT: &str = "memories.content";
pub(crate) const MEMORY_METADATA: &str = "memories.metadata";
pub(crate) const SUMMARY_CONTENT: &str = "summaries.content";
pub(crate) const DEEP_MEMORY_QUESTION: &str = "deep_memory_pairs.content";

/// Rows re-sealed per transaction by a rotation.
const ROTATE_BATCH: usize = 256;

/// A table with sealed columns.
struct Sealed {
    table: &'static str,
    content: &'static str,
    metadata: Option<&'static str>,
}

const SEALED: [Sealed; 4] = [
    Sealed {
        table: "messages",
        content: MESSAGE_CONTENT,
        metadata: Some(MESSAGE_METADATA),
    },
    Sealed {
        table: "memories",
        content: MEMORY_CONTENT,
        metadata: Some(MEMORY_METADATA),
    },
    Sealed {
        table: "summaries",
        content: SUMMARY_CONTENT,
        metadata: None,
    },
    Sealed {
        table: "deep_memory_pairs",
        content: DEEP_MEMORY_QUESTION,
        metadata: None,
    },
];

/// Opens a memory row's sealed fields.
pub(crate) fn open_memory(keys: &Keyring, mut m: memory::Model) -> Result<memory::Model> {
    if let Some(id) = m.key_id.take() {
        m.content = keys.open(Some(&id), MEMORY_CONTENT, &m.content)?;
        m.metadata = keys.open_json(Some(&id), MEMORY_METADATA, std::mem::take(&mut m.metadata))?;
    }
    Ok(m)
}

/// Opens a message row's sealed fields.
pub(crate) fn open_message(keys: &Keyring, mut m: message::Model) -> Result<message::Model> {
    if let Some(id) = m.key_id.take() {
        m.content = keys.open(Some(&id), MESSAGE_CONTENT, &m.content)?;
        m.metadata =
            keys.open_json(Some(&id), MESSAGE_METADATA, std::mem::take(&mut m.metadata))?;
    }
    Ok(m)
}

/// Opens a summary row's sealed text.
pub(crate) fn open_summary(keys: &Keyring, mut m: summary::Model) -> Result<summary::Model> {
    if let Some(id) = m.key_id.take() {
        m.content = keys.open(Some(&id), SUMMARY_CONTENT, &m.content)?;
    }
    Ok(m)
}

/// The SQL condition "`key_id` is not `target`" (NULL-safe).
fn not_under(target: Option<&str>, param: &str) -> String {
    match target {
        Some(_) => format!("(key_id IS NULL OR key_id <> {param})"),
        None => "key_id IS NOT NULL".into(),
    }
}

impl<V: VectorIndex> SqlStore<V> {
    /// Seals a text column's value with the current key (as it is with none).
    pub(crate) fn seal(&self, column: &str, text: &str) -> Result<String> {
        self.keys.seal(column, text)
    }

    /// Seals a metadata value (`null` stored as `{}`).
    pub(crate) fn seal_json(&self, column: &str, value: &Value) -> Result<Value> {
        self.keys.seal_json(column, &metadata_json(value))
    }

    /// The id of the key new rows are sealed with.
    pub(crate) fn key_id(&self) -> Option<String> {
        self.keys.current_id()
    }

    /// At open: every key id that may have sealed rows must be in the ring (a store opened
    /// with a wrong or missing key fails here, naming the key, instead of returning garbage
    /// later).
    pub(crate) async fn check_keys(&self) -> Result<()> {
        for id in self.registered_keys().await? {
            if !self.keys.knows(&id) {
                return Err(unknown_key(&id));
            }
        }
        Ok(())
    }

    /// Records the current key in the registry before the first row is sealed with it (once
    /// per process; every write that seals calls this before its transaction). Only keys that
    /// sealed something are recorded, so a key given to a command that writes nothing does
    /// not become required.
    pub(crate) async fn register_key(&self) -> Result<()> {
        let Some(id) = self.keys.current_id() else {
            return Ok(());
        };
        if self
            .key_registered
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        self.db
            .execute_raw(stmt(
                self.db.get_database_backend(),
                "INSERT INTO encryption_keys (key_id, created_at) VALUES ($1, $2) \
                 ON CONFLICT (key_id) DO NOTHING",
                vec![id.into(), now().into()],
            ))
            .await?;
        self.key_registered
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    async fn registered_keys(&self) -> Result<Vec<String>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                self.db.get_database_backend(),
                "SELECT key_id FROM encryption_keys ORDER BY key_id",
                vec![],
            ))
            .await?;
        rows.into_iter()
            .map(|r| Ok(r.try_get_by_index::<String>(0)?))
            .collect()
    }

    /// Re-seals every row not under the current key with it (with no current key: opens
    /// every sealed row into the clear), in batches of [`ROTATE_BATCH`] rows, each its own
    /// transaction. Resumable: a second run only touches what the first did not reach. A row
    /// that a writer changed meanwhile is left to the writer, which seals with the current key
    /// too. Then retires the key ids no row uses any more. `on_rows(done, total)` after each
    /// batch.
    pub(crate) async fn rotate_keys(
        &self,
        on_rows: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<KeyRotationReport> {
        let started = Instant::now();
        self.register_key().await?;
        let backend = self.db.get_database_backend();
        let target = self.keys.current_id();
        let target_value = || -> Vec<DbValue> { target.iter().map(|t| t.clone().into()).collect() };
        let mut total = 0u64;
        for t in &SEALED {
            total += self
                .count_where(
                    &format!(
                        "SELECT count(*) FROM {} WHERE {}",
                        t.table,
                        not_under(target.as_deref(), "$1")
                    ),
                    target_value(),
                )
                .await?;
        }
        let same = match backend {
            DbBackend::Postgres => "IS NOT DISTINCT FROM",
            _ => "IS",
        };
        let mut report = KeyRotationReport {
            key_id: target.clone(),
            ..KeyRotationReport::default()
        };
        let mut done = 0u64;
        on_rows(0, total);
        for t in &SEALED {
            let mut last = 0i64;
            let metadata = if t.metadata.is_some() {
                "metadata"
            } else {
                "NULL"
            };
            loop {
                let mut values = vec![DbValue::from(last)];
                values.extend(target_value());
                let rows = self
                    .db
                    .query_all_raw(stmt(
                        backend,
                        &format!(
                            "SELECT id, content, {metadata}, key_id FROM {} \
                             WHERE id > $1 AND {} ORDER BY id LIMIT {ROTATE_BATCH}",
                            t.table,
                            not_under(target.as_deref(), "$2")
                        ),
                        values,
                    ))
                    .await?;
                let Some(row) = rows.last() else { break };
                last = row.try_get_by_index(0)?;
                let txn = begin_write(&self.db).await?;
                for r in &rows {
                    let id: i64 = r.try_get_by_index(0)?;
                    let old: Option<String> = r.try_get_by_index(3)?;
                    let content: String = r.try_get_by_index(1)?;
                    let content = self.keys.open(old.as_deref(), t.content, &content)?;
                    let mut sets = vec!["content = $1".to_owned(), "key_id = $2".to_owned()];
                    let mut values: Vec<DbValue> = vec![
                        self.keys.seal(t.content, &content)?.into(),
                        target.clone().into(),
                    ];
                    if let Some(column) = t.metadata {
                        let stored: Value = r.try_get_by_index(2)?;
                        let plain = self.keys.open_json(old.as_deref(), column, stored)?;
                        values.push(self.keys.seal_json(column, &plain)?.into());
                        sets.push(format!("metadata = ${}", values.len()));
                    }
                    values.push(id.into());
                    let id_param = values.len();
                    values.push(old.clone().into());
                    let sql = format!(
                        "UPDATE {} SET {} WHERE id = ${id_param} AND key_id {same} ${}",
                        t.table,
                        sets.join(", "),
                        values.len()
                    );
                    let changed = txn.execute_raw(stmt(backend, &sql, values)).await?;
                    report.resealed += changed.rows_affected();
                }
                txn.commit().await?;
                done += rows.len() as u64;
                on_rows(done.min(total), total);
            }
        }
        if report.resealed > 0 && backend == DbBackend::Sqlite {
            // The old values linger in free pages and the write-ahead log until the file is
            // rewritten: rewrite it, and empty the log.
            for sql in [
                "PRAGMA wal_checkpoint(TRUNCATE)",
                "VACUUM",
                "PRAGMA wal_checkpoint(TRUNCATE)",
            ] {
                self.db.execute_unprepared(sql).await?;
            }
        }
        for id in self.registered_keys().await? {
            if Some(&id) == target.as_ref() {
                continue;
            }
            let mut used = 0;
            for t in &SEALED {
                used += self
                    .count_where(
                        &format!("SELECT count(*) FROM {} WHERE key_id = $1", t.table),
                        vec![id.clone().into()],
                    )
                    .await?;
            }
            if used == 0 {
                self.db
                    .execute_raw(stmt(
                        backend,
                        "DELETE FROM encryption_keys WHERE key_id = $1",
                        vec![id.clone().into()],
                    ))
                    .await?;
                report.retired.push(id);
            } else {
                report.remaining += used;
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    async fn count_where(&self, sql: &str, values: Vec<DbValue>) -> Result<u64> {
        let row = self
            .db
            .query_one_raw(stmt(self.db.get_database_backend(), sql, values))
            .await?
            .ok_or_else(|| internal("count returned no row"))?;
        Ok(row.try_get_by_index::<i64>(0)?.max(0) as u64)
    }
}
