//! pgvector's HNSW indexes: one partial expression index per dimension and metric, created
//! when first needed, and dropped for a bulk load and built once after it.
use std::collections::HashSet;
use std::sync::Arc;

use sea_orm::sqlx::AssertSqlSafe;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::PgVectors;
use crate::error::{Error, Result};
use crate::types::Metric;

/// What a bulk load took down (see [`PgVectors::bulk`]).
#[derive(Default)]
pub(super) struct BulkLoad {
    dropped: Vec<(String, String)>,
    dims: HashSet<usize>,
}

/// `maintenance_work_mem` for an index build at most (MiB): what fits of the graph is built
/// in memory, the rest on disk (slower, as inserts are).
const MAX_BUILD_MEMORY_MB: u64 = 4096;

/// pgvector's operator class for `metric`.
fn opclass(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine => "vector_cosine_ops",
        Metric::L2 => "vector_l2_ops",
        Metric::Dot => "vector_ip_ops",
    }
}

/// The name of the HNSW index for `dims`-dimensional vectors under `metric`.
fn index_name(metric: Metric, dims: usize) -> String {
    format!("ix_memory_embeddings_hnsw_{}_{dims}", metric.as_str())
}

/// What follows `CREATE INDEX name` for that index: a partial expression index, so that
/// vectors of several models can share the column.
fn index_body(metric: Metric, dims: usize) -> String {
    format!(
        "ON memory_embeddings USING hnsw ((embedding::vector({dims})) {}) WHERE dims = {dims}",
        opclass(metric)
    )
}

/// `name` as a quoted SQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PgVectors {
    /// Drops the index `name` if an interrupted concurrent build left it invalid (which
    /// `CREATE INDEX IF NOT EXISTS` would take for done).
    async fn drop_if_invalid(&self, name: &str) -> Result<()> {
        let invalid = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace \
                 AND NOT i.indisvalid",
                [name.into()],
            ))
            .await?
            .is_some();
        if invalid {
            self.db
                .execute_unprepared(&format!("DROP INDEX IF EXISTS {}", quoted(name)))
                .await?;
        }
        Ok(())
    }

    /// Builds an index in one pass (`CREATE INDEX CONCURRENTLY ...` in `sql`: reads and
    /// writes go on), on a connection of its own with room for the graph in memory.
    async fn build_index(&self, name: &str, sql: &str) -> Result<()> {
        self.drop_if_invalid(name).await?;
        let (rows, dims) = self
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*), COALESCE(max(dims), 0)::bigint FROM memory_embeddings",
            ))
            .await?
            .map(|r| Ok::<_, Error>((r.try_get_by_index::<i64>(0)?, r.try_get_by_index::<i64>(1)?)))
            .transpose()?
            .unwrap_or((0, 0));
        // A graph node: the vector plus up to 2m = 32 neighbours and bookkeeping.
        let bytes = rows.max(0) as u64 * (dims.max(0) as u64 * 4 + 512);
        let mb = ((bytes * 5 / 4) >> 20).clamp(64, MAX_BUILD_MEMORY_MB);
        let sqlx_err = |e: sea_orm::sqlx::Error| {
            Error::from(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(
                Arc::new(e),
            )))
        };
        let pool = self.db.get_postgres_connection_pool();
        let mut conn = pool.acquire().await.map_err(sqlx_err)?;
        let built = async {
            // Both statements are ours: a number and an index definition.
            sea_orm::sqlx::raw_sql(AssertSqlSafe(format!(
                "SET maintenance_work_mem = '{mb}MB'"
            )))
            .execute(&mut *conn)
            .await?;
            let built = sea_orm::sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await;
            sea_orm::sqlx::raw_sql("RESET maintenance_work_mem")
                .execute(&mut *conn)
                .await?;
            built
        }
        .await;
        drop(conn);
        if let Err(e) = built {
            // What a failed concurrent build leaves is invalid: gone, the next write or
            // search builds it again.
            let _ = self.drop_if_invalid(name).await;
            return Err(sqlx_err(e));
        }
        Ok(())
    }

    pub(super) async fn ensure_index(&self, dims: usize) -> Result<()> {
        if self.indexed.lock().expect("index set").contains(&dims) {
            return Ok(());
        }
        if let Some(bulk) = self.bulk.lock().expect("bulk load").as_mut() {
            bulk.dims.insert(dims);
            return Ok(());
        }
        let name = index_name(self.metric, dims);
        self.drop_if_invalid(&name).await?;
        self.db
            .execute_unprepared(&format!(
                "CREATE INDEX IF NOT EXISTS {name} {}",
                index_body(self.metric, dims)
            ))
            .await?;
        self.indexed.lock().expect("index set").insert(dims);
        Ok(())
    }

    /// [`VectorIndex::suspend`]: drops every HNSW index of the table, remembering it.
    pub(super) async fn begin_bulk(&self) -> Result<()> {
        {
            let mut bulk = self.bulk.lock().expect("bulk load");
            if bulk.is_some() {
                return Err(Error::invalid("a bulk load is already under way"));
            }
            *bulk = Some(BulkLoad::default());
        }
        self.indexed.lock().expect("index set").clear();
        let dropped = async {
            let rows = self
                .db
                .query_all_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT indexname::text, indexdef::text FROM pg_indexes \
                     WHERE schemaname = current_schema() AND tablename = 'memory_embeddings' \
                     AND indexdef LIKE '%USING hnsw%' ORDER BY indexname",
                ))
                .await?;
            let mut dropped = Vec::new();
            for r in rows {
                let (name, def): (String, String) =
                    (r.try_get_by_index(0)?, r.try_get_by_index(1)?);
                self.db
                    .execute_unprepared(&format!(
                        "DROP INDEX CONCURRENTLY IF EXISTS {}",
                        quoted(&name)
                    ))
                    .await?;
                dropped.push((name, def));
            }
            Ok::<_, Error>(dropped)
        }
        .await;
        let mut bulk = self.bulk.lock().expect("bulk load");
        match dropped {
            Ok(dropped) => {
                if let Some(b) = bulk.as_mut() {
                    b.dropped = dropped;
                }
                Ok(())
            }
            Err(e) => {
                // What was dropped is built again by the next write or search.
                *bulk = None;
                Err(e)
            }
        }
    }

    /// [`VectorIndex::resume`]: builds what [`PgVectors::begin_bulk`] dropped and the
    /// indexes for dimensions first written during the load.
    pub(super) async fn end_bulk(&self) -> Result<Vec<String>> {
        let Some(bulk) = self.bulk.lock().expect("bulk load").take() else {
            return Ok(Vec::new());
        };
        let mut builds: Vec<(String, String)> = bulk
            .dropped
            .into_iter()
            .filter_map(|(name, def)| {
                // pg_indexes gives `CREATE INDEX name ON ...`.
                let rest = def.strip_prefix("CREATE INDEX ")?;
                Some((
                    name,
                    format!("CREATE INDEX CONCURRENTLY IF NOT EXISTS {rest}"),
                ))
            })
            .collect();
        for dims in bulk.dims {
            let name = index_name(self.metric, dims);
            if !builds.iter().any(|(n, _)| *n == name) {
                let sql = format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {}",
                    index_body(self.metric, dims)
                );
                builds.push((name, sql));
            }
        }
        let mut built = Vec::with_capacity(builds.len());
        for (name, sql) in builds {
            self.build_index(&name, &sql).await?;
            built.push(name);
        }
        // The planner's statistics still describe the tables before the load (autovacuum
        // catches up later): plans chosen for a few rows would scan many.
        self.db
            .execute_unprepared("ANALYZE memories, memory_embeddings")
            .await?;
        Ok(built)
    }
}
