//! Postgres + pgvector store.
//!
//! Vectors live in `memory_embeddings.embedding`, a `vector` column without a fixed dimension
//! (so that two embedding models can coexist while re-embedding). Each dimension and metric has
//! a partial HNSW expression index, `((embedding::vector(D)) <opclass>) WHERE dims = D`; the
//! migration creates the one for the default model (384, cosine) and [`PgStore::open`] creates
//! the one the configuration needs, if missing.
//!
//! Users with more memories than [`StoreConfig::in_process_search_threshold`] (0: every
//! user, by default) are searched in process by the server, exactly, as the embedded store
//! searches (the `held` module).
//! For the others (and the users too large to hold), a search counts the rows that pass the
//! user's filters, up to [`StoreConfig::exact_search_threshold`]. At or below it, the search is
//! exact (a b-tree scan of the user's rows, sorted by distance); above it, the HNSW index is
//! used with pgvector's iterative scan, so that filters do not starve the result.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use recall_migrations::{Migrator, MigratorTrait};
use sea_orm::prelude::PgVector;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    Statement, TransactionTrait, Value as DbValue,
};

use super::StoreConfig;
use super::StoreLocation;
use super::cursor::SearchCursor;
use super::sql::{
    EmbeddingRow, IndexQuery, ResolvedFilter, SqlStore, TextIndexQuery, VectorIndex, ceil_micros,
    embeddings_statement,
};
use crate::crypto::Keyring;
use crate::error::{Error, Result};
use crate::text::{BM25_B, BM25_K1};
use crate::types::{ExportedEmbedding, Metric};

mod fanout;
mod held;
mod hnsw;

pub use fanout::{EVENTS_CHANNEL, PgFanout};
use hnsw::BulkLoad;

/// Rows per multi-row INSERT of embeddings.
const CHUNK: usize = 500;

/// Distinct query lexemes used by full-text search at most.
const MAX_QUERY_TERMS: usize = 32;

fn operator(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine => "<=>",
        Metric::L2 => "<->",
        Metric::Dot => "<#>",
    }
}

/// The pgvector side of [`PgStore`].
pub(crate) struct PgVectors {
    db: DatabaseConnection,
    metric: Metric,
    exact_threshold: u64,
    /// pgvector's `hnsw.ef_search` for the approximate path (raised to the page size).
    ef_search: u32,
    /// Dimensions whose index is known to exist.
    indexed: Mutex<HashSet<usize>>,
    /// During a bulk load: the HNSW indexes dropped for it (name, definition) and the
    /// dimensions written meanwhile, for [`VectorIndex::resume`] to build.
    bulk: Mutex<Option<BulkLoad>>,
    /// Memory count per user at a revision (BM25's document count).
    counts: Mutex<HashMap<i64, (i64, u64)>>,
    /// Per user and model at a revision: how many vectors an unfiltered search would see,
    /// counted no further than the exact-search threshold.
    vector_counts: Mutex<HashMap<(i64, String), (i64, i64)>>,
    /// Opens sealed memory text (encryption at rest).
    keys: Arc<Keyring>,
    /// Users searched in process (see [`held`]): those with more memories than this, and
    /// every user when text is sealed (Postgres indexes clear text only).
    in_process_threshold: u64,
    /// Memories and vectors held in process at most, over all users.
    max_held: usize,
    held: Mutex<HashMap<i64, held::Held>>,
    /// Orders the searches of held users (least recently searched are dropped first).
    tick: AtomicU64,
}

impl PgVectors {
    async fn memory_count(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        revision: i64,
    ) -> Result<u64> {
        if let Some((rev, n)) = self.counts.lock().expect("count cache").get(&user_id)
            && *rev == revision
        {
            return Ok(*n);
        }
        let n: i64 = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) FROM memories WHERE user_id = $1",
                [user_id.into()],
            ))
            .await?
            .ok_or_else(|| Error::Internal("count returned no row".into()))?
            .try_get_by_index(0)?;
        let mut counts = self.counts.lock().expect("count cache");
        if counts.len() > 10_000 {
            counts.clear();
        }
        counts.insert(user_id, (revision, n as u64));
        Ok(n as u64)
    }
}

/// A `WHERE` clause builder with numbered parameters.
struct Sql {
    text: String,
    values: Vec<DbValue>,
}

impl Sql {
    fn param(&mut self, v: impl Into<DbValue>) -> String {
        self.values.push(v.into());
        format!("${}", self.values.len())
    }
}

/// Appends the conditions of a search over `memory_embeddings e JOIN memories m`; with a
/// distance expression `dist`, also the score threshold and the cursor position.
fn where_clause(sql: &mut Sql, q: &IndexQuery<'_>, dist: Option<&str>) {
    let dims = q.vector.len();
    let user = sql.param(q.user_id);
    let model = sql.param(q.model.to_owned());
    sql.text += &format!(
        " WHERE e.user_id = {user} AND m.user_id = {user} AND e.model = {model} AND e.dims = {dims}"
    );
    filter_clause(sql, q.filter);
    let Some(dist) = dist else { return };
    if let Some(max) = q.max_distance {
        let p = sql.param(max);
        sql.text += &format!(" AND {dist} <= {p}");
    }
    if let Some(SearchCursor { d, i }) = q.after {
        let pd = sql.param(d);
        let pi = sql.param(i);
        sql.text += &format!(" AND ({dist} > {pd} OR ({dist} = {pd} AND e.memory_id > {pi}))");
    }
}

fn filter_clause(sql: &mut Sql, f: &ResolvedFilter) {
    if let Some(s) = f.session_id {
        let p = sql.param(s);
        sql.text += &format!(" AND m.session_id = {p}");
    }
    if !f.kinds.is_empty() {
        let ps: Vec<String> = f.kinds.iter().map(|k| sql.param(k.as_str())).collect();
        sql.text += &format!(" AND m.kind IN ({})", ps.join(", "));
    }
    if !f.roles.is_empty() {
        let ps: Vec<String> = f.roles.iter().map(|r| sql.param(r.as_str())).collect();
        sql.text += &format!(" AND m.role IN ({})", ps.join(", "));
    }
    if !f.tags.is_empty() {
        let tags = serde_json::Value::from(f.tags.clone()).to_string();
        let p = sql.param(tags);
        sql.text += &format!(" AND m.tags @> {p}::jsonb");
    }
    if let Some(t) = f.since {
        let p = sql.param(ceil_micros(t));
        sql.text += &format!(" AND m.created_at >= {p}");
    }
    if let Some(t) = f.until {
        let p = sql.param(ceil_micros(t));
        sql.text += &format!(" AND m.created_at < {p}");
    }
    // The validity rule (see `Filter::valid`).
    let at = sql.param(f.as_of.unwrap_or(f.now));
    if f.as_of.is_some() {
        sql.text += &format!(" AND m.created_at <= {at}");
    }
    if !f.include_superseded {
        sql.text += &match f.as_of {
            None => " AND m.superseded_at IS NULL".to_owned(),
            Some(_) => format!(" AND (m.superseded_at IS NULL OR m.superseded_at > {at})"),
        };
    }
    sql.text += &format!(" AND (m.expires_at IS NULL OR m.expires_at > {at})");
}

#[async_trait]
impl VectorIndex for PgVectors {
    async fn prepare(&self, dims: usize) -> Result<()> {
        self.ensure_index(dims).await
    }

    async fn suspend(&self) -> Result<()> {
        self.begin_bulk().await
    }

    async fn resume(&self) -> Result<Vec<String>> {
        self.end_bulk().await
    }

    fn compact(&self) -> usize {
        self.release()
    }

    fn tracks_changes(&self) -> bool {
        true
    }

    fn committed(&self, user_id: i64, revision: i64, delta: super::sql::Delta) {
        self.apply(user_id, revision, delta);
    }

    async fn insert(&self, txn: &DatabaseTransaction, rows: &[EmbeddingRow<'_>]) -> Result<()> {
        for dims in rows.iter().map(|r| r.vector.len()).collect::<HashSet<_>>() {
            self.ensure_index(dims).await?;
        }
        for chunk in rows.chunks(CHUNK) {
            let mut sql = Sql {
                text: "INSERT INTO memory_embeddings \
                       (memory_id, model, user_id, dims, embedding, created_at) VALUES "
                    .into(),
                values: Vec::with_capacity(chunk.len() * 6),
            };
            for (i, r) in chunk.iter().enumerate() {
                let ps = [
                    sql.param(r.memory_id),
                    sql.param(r.model.to_owned()),
                    sql.param(r.user_id),
                    sql.param(r.vector.len() as i32),
                    sql.param(PgVector::from(r.vector.to_vec())),
                    sql.param(r.created_at),
                ];
                if i > 0 {
                    sql.text.push_str(", ");
                }
                sql.text += &format!("({})", ps.join(", "));
            }
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql.text,
                sql.values,
            ))
            .await?;
        }
        Ok(())
    }

    async fn search(&self, db: &DatabaseConnection, q: &IndexQuery<'_>) -> Result<Vec<(i64, f64)>> {
        let dims = q.vector.len();
        let op = operator(self.metric);

        // Large users are searched in process: exact, and an order of magnitude faster than
        // Postgres's scan of their rows (or recall-bound HNSW).
        if self.held_vectors(db, q.user_id, q.revision).await? {
            let user = self.held_user(db, q.user_id, q.revision, true).await?;
            let held = {
                let user = user.read().expect("held user");
                user.vectors.as_ref().map(|m| match m.get(q.model) {
                    // As the statement below: other dimensions than the model's match nothing.
                    Some(mv) if mv.dims == dims => mv.search(self.metric, q),
                    _ => Ok(vec![]),
                })
            };
            // Without vectors (those just read were older than a write that landed
            // meanwhile, and were let go), Postgres answers this search.
            if let Some(out) = held {
                return out;
            }
        }

        // How many rows pass the filters, counted no further than the threshold; without
        // filters the count of the user's revision is kept, so that a large user's searches
        // do not each walk 20k rows to learn again that the index is the way.
        let unfiltered = q.filter.is_empty();
        let key = (q.user_id, q.model.to_owned());
        let cached = unfiltered
            .then(|| {
                self.vector_counts
                    .lock()
                    .expect("vector count cache")
                    .get(&key)
                    .and_then(|(rev, n)| (*rev == q.revision).then_some(*n))
            })
            .flatten();
        let candidates: i64 = match cached {
            Some(n) => n,
            None => {
                let mut count = Sql {
                    text: "SELECT count(*) FROM (SELECT 1 FROM memory_embeddings e \
                           JOIN memories m ON m.id = e.memory_id"
                        .into(),
                    values: vec![],
                };
                where_clause(&mut count, q, None);
                let limit =
                    count.param(self.exact_threshold.saturating_add(1).min(i64::MAX as u64) as i64);
                count.text += &format!(" LIMIT {limit}) c");
                let n: i64 = db
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        count.text,
                        count.values,
                    ))
                    .await?
                    .ok_or_else(|| Error::Internal("count returned no row".into()))?
                    .try_get_by_index(0)?;
                if unfiltered {
                    let mut counts = self.vector_counts.lock().expect("vector count cache");
                    if counts.len() > 10_000 {
                        counts.clear();
                    }
                    counts.insert(key, (q.revision, n));
                }
                n
            }
        };
        if candidates == 0 {
            return Ok(vec![]);
        }

        let mut sql = Sql {
            text: String::new(),
            values: vec![],
        };
        let v = sql.param(PgVector::from(q.vector.to_vec()));
        let dist = format!("(e.embedding::vector({dims}) {op} {v}::vector({dims}))");
        let exact = candidates as u64 <= self.exact_threshold;
        sql.text = format!(
            "SELECT e.memory_id, {dist}::float8 AS distance FROM memory_embeddings e \
             JOIN memories m ON m.id = e.memory_id"
        );
        where_clause(&mut sql, q, Some(&dist));
        let lim = sql.param(q.limit as i64);
        let rows = if exact {
            // The distances of every row that passes the filters, then the order: computed
            // in a materialised step, so that the planner cannot walk the HNSW index instead
            // (an index scan stops after `ef_search` neighbours and filters afterwards, which
            // can leave a narrow filter, such as one day, with nothing).
            sql.text = format!(
                "WITH c AS MATERIALIZED ({}) \
                 SELECT memory_id, distance FROM c ORDER BY distance, memory_id LIMIT {lim}",
                sql.text
            );
            db.query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql.text,
                sql.values,
            ))
            .await?
        } else {
            self.ensure_index(dims).await?;
            sql.text = format!(
                "WITH c AS MATERIALIZED ({} ORDER BY {dist} LIMIT {lim}) \
                 SELECT memory_id, distance FROM c ORDER BY distance, memory_id",
                sql.text
            );
            let txn = db.begin().await?;
            let ef = q.limit.max(self.ef_search as usize).clamp(1, 1000);
            txn.execute_unprepared(&format!(
                "SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL hnsw.ef_search = {ef}"
            ))
            .await?;
            let rows = txn
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    sql.text,
                    sql.values,
                ))
                .await?;
            txn.commit().await?;
            rows
        };
        rows.into_iter()
            .map(|r| Ok((r.try_get_by_index::<i64>(0)?, r.try_get_by_index::<f64>(1)?)))
            .collect()
    }

    async fn text_search(
        &self,
        db: &DatabaseConnection,
        q: &TextIndexQuery<'_>,
    ) -> Result<Vec<(i64, f64)>> {
        // Sealed rows have no `tsv`: the user's text is opened and indexed in process. Users
        // with more memories than the exact-search threshold are searched in process too:
        // the statement below scores every row that shares a lexeme with the query, which
        // for a frequent word is tens of thousands of rows (42 ms at p95 for 100k memories
        // of one user), where the in-process index answers in about a millisecond. A user
        // too large to hold (as for vector search) is left to the statement, unless their
        // text is sealed: then there is no other way.
        let n = self.memory_count(db, q.user_id, q.revision).await?;
        if !self.keys.is_empty()
            || (n > self.exact_threshold.min(self.in_process_threshold) && self.fits(n))
        {
            let user = self.held_user(db, q.user_id, q.revision, false).await?;
            let user = user.read().expect("held user");
            return Ok(user.index.search_text(q.text, q.limit, |id| {
                user.docs.get(&id).is_some_and(|m| m.matches(q.filter))
            }));
        }
        // BM25 over the user's memories that share a lexeme with the query, found through the
        // GIN index on `tsv`, in one pass over the matching rows. Chat messages rarely repeat
        // a word, so a term counts once per memory (binary term frequency); a memory's length
        // is its number of distinct lexemes; document frequencies and the average length are
        // taken over the matching rows, and the number of documents is the user's memory count
        // (cached per user revision).
        let lexemes: Vec<String> = db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $1)) ORDER BY 1",
                [q.text.to_owned().into()],
            ))
            .await?
            .into_iter()
            .map(|r| r.try_get_by_index::<String>(0))
            .collect::<std::result::Result<_, _>>()?;
        if lexemes.is_empty() {
            return Ok(vec![]);
        }
        let lexemes = &lexemes[..lexemes.len().min(MAX_QUERY_TERMS)];
        let n = self.memory_count(db, q.user_id, q.revision).await? as f64;
        let mut sql = Sql {
            text: String::new(),
            values: vec![],
        };
        let user = sql.param(q.user_id);
        let terms: Vec<String> = lexemes
            .iter()
            .map(|l| format!("plainto_tsquery('simple', {})", sql.param(l.clone())))
            .collect();
        let any = terms.join(" || ");
        let flags: Vec<String> = terms
            .iter()
            .enumerate()
            .map(|(i, t)| format!("(m.tsv @@ {t})::int AS h{i}"))
            .collect();
        let mut docs = format!(
            "SELECT m.id, length(m.tsv)::float8 AS dl, {} FROM memories m \
             WHERE m.user_id = {user} AND m.tsv @@ ({any})",
            flags.join(", ")
        );
        std::mem::swap(&mut sql.text, &mut docs);
        filter_clause(&mut sql, q.filter);
        std::mem::swap(&mut sql.text, &mut docs);
        let dfs: Vec<String> = (0..terms.len())
            .map(|i| format!("sum(h{i}) OVER ()::float8 AS df{i}"))
            .collect();
        let n = sql.param(n);
        let idf = |i: usize| format!("ln(1 + ({n} - df{i} + 0.5) / (df{i} + 0.5)) * h{i}");
        let score: Vec<String> = (0..terms.len()).map(idf).collect();
        let limit = sql.param(q.limit as i64);
        sql.text = format!(
            "WITH docs AS MATERIALIZED ({docs}), \
             stats AS (SELECT d.*, {dfs}, avg(dl) OVER () AS avgdl FROM docs d) \
             SELECT id, ({score}) * {k1p1} \
                    / (1 + {k1} * (1 - {b} + {b} * dl / greatest(avgdl, 1))) AS score \
             FROM stats ORDER BY score DESC, id LIMIT {limit}",
            dfs = dfs.join(", "),
            score = score.join(" + "),
            k1p1 = BM25_K1 + 1.0,
            k1 = BM25_K1,
            b = BM25_B,
        );
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql.text,
                sql.values,
            ))
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get_by_index::<i64>(0)?, r.try_get_by_index::<f64>(1)?)))
            .collect()
    }

    async fn vectors_of(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        revision: i64,
        model: &str,
        ids: &[i64],
    ) -> Result<Vec<(i64, Vec<f32>)>> {
        if let Some(found) = self.held_vectors_of(user_id, revision, model, ids) {
            return Ok(found);
        }
        let mut sql = Sql {
            text: String::new(),
            values: vec![],
        };
        let user = sql.param(user_id);
        let model = sql.param(model.to_owned());
        let ps: Vec<String> = ids.iter().map(|id| sql.param(*id)).collect();
        sql.text = format!(
            "SELECT memory_id, embedding FROM memory_embeddings \
             WHERE user_id = {user} AND model = {model} AND memory_id IN ({})",
            ps.join(", ")
        );
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql.text,
                sql.values,
            ))
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.try_get_by_index::<i64>(0)?,
                    r.try_get_by_index::<PgVector>(1)?.to_vec(),
                ))
            })
            .collect()
    }

    async fn embeddings_of(
        &self,
        db: &DatabaseTransaction,
        user_id: i64,
        with_vectors: bool,
        ids: Option<&[i64]>,
    ) -> Result<Vec<(i64, ExportedEmbedding)>> {
        let Some((sql, values)) = embeddings_statement(user_id, with_vectors, ids) else {
            return Ok(vec![]);
        };
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await?;
        rows.into_iter()
            .map(|r| {
                let vector = if with_vectors {
                    Some(r.try_get_by_index::<PgVector>(3)?.to_vec())
                } else {
                    None
                };
                Ok((
                    r.try_get_by_index::<i64>(0)?,
                    ExportedEmbedding {
                        model: r.try_get_by_index(1)?,
                        dims: r.try_get_by_index::<i32>(2)? as usize,
                        vector,
                    },
                ))
            })
            .collect()
    }
}

/// The advisory lock key under which a store migrates the schema (any fixed number; "DRmg").
const MIGRATION_LOCK: i64 = 0x4452_6d67;

/// The production store: Postgres with pgvector.
pub struct PgStore {
    inner: SqlStore<PgVectors>,
}

impl PgStore {
    /// Connects, runs pending migrations and makes sure the configured vector index exists.
    pub async fn open(config: &StoreConfig) -> Result<Self> {
        let StoreLocation::Postgres { url } = &config.location else {
            return Err(Error::invalid("PgStore needs a postgres:// location"));
        };
        let mut options = ConnectOptions::new(url.clone());
        options
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .sqlx_logging(false);
        let db = Database::connect(options)
            .await
            .map_err(|e| Error::Unavailable {
                message: format!("cannot connect to Postgres at {}", redact_url(url)),
                source: Some(Box::new(e)),
            })?;
        let index = PgVectors {
            db: db.clone(),
            metric: config.metric,
            exact_threshold: config.exact_search_threshold,
            ef_search: config.hnsw_ef_search,
            indexed: Mutex::new(HashSet::new()),
            bulk: Mutex::new(None),
            counts: Mutex::new(HashMap::new()),
            vector_counts: Mutex::new(HashMap::new()),
            keys: config.keys.clone(),
            in_process_threshold: config.in_process_search_threshold,
            max_held: config.max_cached_vectors,
            held: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
        };
        // Replicas starting together take turns: the migrations and the index creation run
        // under one advisory lock, held on a connection of its own.
        let lock = Database::connect(
            ConnectOptions::new(url.clone())
                .max_connections(1)
                .sqlx_logging(false)
                .to_owned(),
        )
        .await
        .map_err(|e| Error::Unavailable {
            message: format!("cannot connect to Postgres at {}", redact_url(url)),
            source: Some(Box::new(e)),
        })?;
        lock.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .await?;
        let migrated = async {
            Migrator::up(&db, None).await?;
            if let Some(dims) = config.index_dims {
                index.ensure_index(dims).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        let _ = lock
            .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .await;
        let _ = lock.close().await;
        migrated?;
        let fanout = Arc::new(PgFanout {
            url: url.clone(),
            db: db.clone(),
        });
        let mut store = Self {
            inner: SqlStore::new(
                db,
                index,
                config.metric,
                config.limits.clone(),
                "postgres",
                Some(fanout),
                config.keys.clone(),
            ),
        };
        store.inner.memory_keys_for_new_users = config.memory_keys_for_new_users;
        store.inner.check_keys().await?;
        Ok(store)
    }

    /// The underlying connection (for maintenance and tests).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.inner.db
    }
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            if creds.contains(':') {
                format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
            } else {
                url.to_owned()
            }
        }
        _ => url.to_owned(),
    }
}

super::delegate_store!(PgStore);
