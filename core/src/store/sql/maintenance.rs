//! Maintenance of the database and the indexes (`deep-recall optimize`).
use std::time::Instant;

use super::*;
use crate::store::OptimizeReport;

impl<V: VectorIndex> SqlStore<V> {
    async fn scalar(&self, sql: &str) -> Result<i64> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(self.db.get_database_backend(), sql))
            .await?
            .ok_or_else(|| internal("maintenance query returned no row"))?;
        Ok(row.try_get_by_index::<i64>(0)?)
    }

    pub(crate) async fn begin_bulk_load(&self) -> Result<()> {
        self.index.suspend().await
    }

    pub(crate) async fn end_bulk_load(&self) -> Result<Vec<String>> {
        self.index.resume().await
    }

    pub(crate) async fn optimize(&self) -> Result<OptimizeReport> {
        let started = Instant::now();
        let mut report = OptimizeReport {
            backend: self.backend_name.into(),
            ..OptimizeReport::default()
        };
        match self.db.get_database_backend() {
            DbBackend::Postgres => {
                let size = "SELECT pg_database_size(current_database())";
                report.bytes_before = self.scalar(size).await? as u64;
                let names = |sql: &'static str| async move {
                    self.db
                        .query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
                        .await?
                        .into_iter()
                        .map(|r| r.try_get_by_index::<String>(0).map_err(Error::from))
                        .collect::<Result<Vec<_>>>()
                };
                // What an interrupted REINDEX CONCURRENTLY leaves behind: invalid copies.
                for name in names(
                    "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                     WHERE NOT i.indisvalid AND c.relnamespace = current_schema()::regnamespace \
                     AND (c.relname LIKE '%\\_ccnew%' OR c.relname LIKE '%\\_ccold%') \
                     ORDER BY 1",
                )
                .await?
                {
                    self.db
                        .execute_unprepared(&format!(
                            "DROP INDEX CONCURRENTLY IF EXISTS \"{}\"",
                            name.replace('"', "\"\"")
                        ))
                        .await?;
                    report.dropped_invalid.push(name);
                }
                for name in names(
                    "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() \
                     AND tablename IN ('memory_embeddings', 'memories') \
                     AND (indexdef LIKE '%USING hnsw%' OR indexdef LIKE '%USING gin%') \
                     ORDER BY indexname",
                )
                .await?
                {
                    // Outside a transaction (autocommit), as CONCURRENTLY requires.
                    self.db
                        .execute_unprepared(&format!(
                            "REINDEX INDEX CONCURRENTLY \"{}\"",
                            name.replace('"', "\"\"")
                        ))
                        .await?;
                    report.reindexed.push(name);
                }
                self.db.execute_unprepared("VACUUM (ANALYZE)").await?;
                report.bytes_after = self.scalar(size).await? as u64;
            }
            _ => {
                let size =
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()";
                report.bytes_before = self.scalar(size).await? as u64;
                for sql in [
                    "PRAGMA wal_checkpoint(TRUNCATE)",
                    "VACUUM",
                    "ANALYZE",
                    "PRAGMA optimize",
                ] {
                    self.db.execute_unprepared(sql).await?;
                }
                report.bytes_after = self.scalar(size).await? as u64;
            }
        }
        report.cached_vectors_released = self.index.compact() as u64;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}
