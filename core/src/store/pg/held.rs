//! Postgres users searched in process: a user with more memories than
//! [`crate::store::StoreConfig::in_process_search_threshold`] (and every user when text is
//! sealed) has their full text, and on their first vector search their vectors, held in
//! memory by the server, and searched there as the embedded store searches its users
//! ([`crate::store::scan`]: exact, int8 first pass and F32 re-scoring from 8,192 vectors).
//! Postgres itself answers the same search in ~45 ms at 20k memories (a scan of the user's
//! rows, joined with `memories` for the filters, every distance computed) and through an
//! approximate HNSW index above that.
//!
//! Several servers may write one database, so what is held is checked against the user's
//! `revision` at each search, and brought up to date from the rows written since its newest
//! row (by `updated_at`, with a margin for the servers' clocks) and a count that reveals
//! deletions; a re-embedding that switches the user to another model makes their vectors be
//! read again (vectors added for a model before the switch are not searched, as on the
//! embedded store). Users least recently searched are dropped when the memories and
//! vectors held pass [`crate::store::StoreConfig::max_cached_vectors`].
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use sea_orm::prelude::PgVector;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value as DbValue};

use super::{CHUNK, PgVectors};
use crate::error::Result;
use crate::store::scan::ModelVectors;
use crate::store::sql::keys::MEMORY_CONTENT;
use crate::store::sql::{Delta, Meta};
use crate::text::Bm25Index;

/// One user's memories held in process, as of a revision.
#[derive(Default)]
pub(super) struct HeldUser {
    pub revision: i64,
    /// The full-text index.
    pub index: Bm25Index,
    /// Filter fields of every memory.
    pub docs: HashMap<i64, Meta>,
    /// Each memory's `updated_at` when it was read.
    stamps: HashMap<i64, DateTime<Utc>>,
    /// The newest of `stamps`.
    newest: Option<DateTime<Utc>>,
    /// Vectors per embedding model, read by the user's first vector search (full-text
    /// searches do not need them).
    pub vectors: Option<HashMap<String, ModelVectors>>,
    /// The user's `embedding_model` when read.
    model: Option<String>,
}

/// A held user and when it was last searched.
pub(super) struct Held {
    user: Arc<RwLock<HeldUser>>,
    last_used: u64,
}

/// How far apart the clocks of the servers writing one database may be: a held user is
/// brought up to date from the rows written since their newest row less this margin (and a
/// count that reveals deletions).
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

impl HeldUser {
    fn put(&mut self, meta: Meta, stamp: DateTime<Utc>, content: &str) {
        self.index.insert(meta.id, content);
        self.stamps.insert(meta.id, stamp);
        self.docs.insert(meta.id, meta);
        self.newest = self.newest.max(Some(stamp));
    }

    fn remove(&mut self, id: i64) {
        self.index.remove(id);
        self.stamps.remove(&id);
        self.docs.remove(&id);
        for mv in self.vectors.iter_mut().flat_map(HashMap::values_mut) {
            mv.remove(id);
        }
    }

    /// Adds a memory's vector for a model (a memory not held, or of other dimensions than
    /// the model's first vector, is left out).
    fn put_vector(&mut self, id: i64, model: String, vector: &[f32]) {
        let (Some(meta), Some(models)) = (self.docs.get(&id), self.vectors.as_mut()) else {
            return;
        };
        let mv = models.entry(model).or_default();
        if mv.dims == 0 {
            mv.dims = vector.len();
        }
        if mv.dims == vector.len() {
            mv.push(meta.clone(), vector);
        }
    }

    /// Vectors read for the memories held: room is made for each model's first.
    fn put_vectors(&mut self, rows: Vec<(i64, String, Vec<f32>)>) {
        let Some(models) = self.vectors.as_mut() else {
            return;
        };
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for (_, model, vector) in &rows {
            counts.entry(model).or_insert((0, vector.len())).0 += 1;
        }
        for (model, (n, dims)) in counts {
            let mv = models.entry(model.to_owned()).or_default();
            if mv.dims == 0 || mv.dims == dims {
                mv.reserve(n, dims);
            }
        }
        for (id, model, vector) in rows {
            self.put_vector(id, model, &vector);
        }
    }

    /// Memories and vectors held.
    pub fn size(&self) -> usize {
        self.docs.len()
            + self
                .vectors
                .iter()
                .flat_map(HashMap::values)
                .map(ModelVectors::len)
                .sum::<usize>()
    }
}

impl PgVectors {
    /// Whether this user's searches run in process: more memories than the threshold, and
    /// few enough that their vectors fit what the server holds.
    pub(super) async fn held_vectors(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        revision: i64,
    ) -> Result<bool> {
        let n = self.memory_count(db, user_id, revision).await?;
        Ok(n > self.in_process_threshold && self.fits(n))
    }

    /// Whether a user of `n` memories may be held: their text and a model's vectors fit
    /// what the server holds.
    pub(super) fn fits(&self, n: u64) -> bool {
        n.saturating_mul(2) <= self.max_held as u64
    }

    /// The user held in process at `revision` or later, with their vectors when asked. A
    /// user not held is read whole; a held one is brought up to date from the ids and
    /// `updated_at` of the user's rows: only new and changed rows are read (and opened)
    /// again, deleted ones are dropped. The revision is read before the rows, so the rows
    /// are at least that new.
    pub(super) async fn held_user(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        revision: i64,
        with_vectors: bool,
    ) -> Result<Arc<RwLock<HeldUser>>> {
        let held = {
            let mut users = self.held.lock().expect("held users");
            let tick = self.tick.fetch_add(1, AtomicOrdering::Relaxed);
            users.get_mut(&user_id).map(|h| {
                h.last_used = tick;
                h.user.clone()
            })
        };
        if let Some(h) = &held {
            let u = h.read().expect("held user");
            if u.revision >= revision && (!with_vectors || u.vectors.is_some()) {
                return Ok(h.clone());
            }
        }
        // The user's embedding model moves when a re-embedding switches them (their vectors
        // of other models are then deleted): held vectors are read again.
        let (revision, model) = user_revision(db, user_id).await?;
        let Some(held) = held else {
            // Text and vectors are read side by side (two connections), and the text is
            // indexed on a thread of its own while the vectors arrive.
            let text = async {
                let rows = self.text_rows(db, user_id, None).await?;
                tokio::task::spawn_blocking(move || {
                    let mut user = HeldUser {
                        revision,
                        model,
                        ..HeldUser::default()
                    };
                    for (meta, stamp, content) in rows {
                        user.put(meta, stamp, &content);
                    }
                    user
                })
                .await
                .map_err(|e| crate::error::Error::Internal(format!("indexing a user: {e}")))
            };
            let (mut user, vector_rows) = tokio::try_join!(text, async {
                match with_vectors {
                    true => self.vector_rows(db, user_id, None).await.map(Some),
                    false => Ok(None),
                }
            })?;
            if let Some(mut vector_rows) = vector_rows {
                // Side by side, the two reads see two snapshots: a write that committed
                // between them could leave a memory's text held without its vector, and no
                // refresh would read it again (its row is unchanged). When the user's revision
                // moved while they were read, the vectors are read again, after the text.
                if user_revision(db, user_id).await?.0 != revision {
                    vector_rows = self.vector_rows(db, user_id, None).await?;
                }
                user.vectors = Some(HashMap::new());
                user.put_vectors(vector_rows);
            }
            let user = Arc::new(RwLock::new(user));
            self.hold(user_id, user.clone());
            return Ok(user);
        };
        // The rows written since the newest one held (less the clocks' margin), through
        // `ix_memories_user_updated`; when the held rows plus the new ones do not make the
        // user's count, some were deleted, and every row's stamp is compared instead.
        let since = held
            .read()
            .expect("held user")
            .newest
            .map(|t| t - CLOCK_SKEW);
        let recent = match since {
            Some(since) => Some(
                self.stamps(
                    db,
                    "SELECT id, updated_at FROM memories WHERE user_id = $1 AND updated_at >= $2",
                    vec![user_id.into(), since.into()],
                )
                .await?,
            ),
            None => None,
        };
        let total = self.memory_count(db, user_id, revision).await?;
        let quick = recent.and_then(|recent| {
            let t = held.read().expect("held user");
            let stale: Vec<i64> = recent
                .iter()
                .filter(|(id, at)| t.stamps.get(id) != Some(at))
                .map(|(id, _)| *id)
                .collect();
            // Counted by what is held, stamped or not (memories this server added are held
            // unstamped): one of them deleted since leaves the counts apart, and the full
            // comparison below finds it gone.
            let added = stale.iter().filter(|id| !t.docs.contains_key(id)).count();
            ((t.docs.len() + added) as u64 == total).then_some(stale)
        });
        let (stale, gone) = match quick {
            Some(stale) => (stale, vec![]),
            None => {
                let stamps = self
                    .stamps(
                        db,
                        "SELECT id, updated_at FROM memories WHERE user_id = $1",
                        vec![user_id.into()],
                    )
                    .await?;
                let t = held.read().expect("held user");
                let now: HashSet<i64> = stamps.iter().map(|(id, _)| *id).collect();
                let stale: Vec<i64> = stamps
                    .iter()
                    .filter(|(id, at)| t.stamps.get(id) != Some(at))
                    .map(|(id, _)| *id)
                    .collect();
                let gone: Vec<i64> = t
                    .docs
                    .keys()
                    .filter(|id| !now.contains(id))
                    .copied()
                    .collect();
                (stale, gone)
            }
        };
        let had_vectors = held.read().expect("held user").vectors.is_some();
        let rows = self.text_rows(db, user_id, Some(&stale)).await?;
        let vector_rows = if had_vectors {
            self.vector_rows(db, user_id, Some(&stale)).await?
        } else {
            vec![]
        };
        let (seen, has_vectors) = {
            let mut t = held.write().expect("held user");
            if t.revision < revision {
                for id in gone.iter().chain(&stale) {
                    t.remove(*id);
                }
                for (meta, stamp, content) in rows {
                    t.put(meta, stamp, &content);
                }
                t.put_vectors(vector_rows);
                // Vectors another search read meanwhile lack the changed rows' new vectors;
                // so do all of them after a switch of model: read again.
                if t.model != model || !had_vectors {
                    t.vectors = None;
                    t.model = model;
                }
                t.revision = revision;
            }
            (t.revision, t.vectors.is_some())
        };
        if with_vectors && !has_vectors {
            let rows = self.vector_rows(db, user_id, None).await?;
            let mut t = held.write().expect("held user");
            // Only onto the rows they were read after (else the next search reads again).
            if t.vectors.is_none() && t.revision == seen {
                t.vectors = Some(HashMap::new());
                t.put_vectors(rows);
            }
        }
        self.evict(user_id);
        Ok(held)
    }

    /// Vectors of some of a held user's memories, when the user's vectors are held at
    /// `revision` or later (`None`: ask Postgres).
    pub(super) fn held_vectors_of(
        &self,
        user_id: i64,
        revision: i64,
        model: &str,
        ids: &[i64],
    ) -> Option<Vec<(i64, Vec<f32>)>> {
        let user = self
            .held
            .lock()
            .expect("held users")
            .get(&user_id)?
            .user
            .clone();
        let user = user.read().expect("held user");
        if user.revision < revision {
            return None;
        }
        let Some(mv) = user.vectors.as_ref()?.get(model) else {
            return Some(vec![]);
        };
        Some(mv.vectors_of(ids))
    }

    /// This server's own committed change to a user: applied to what is held when it is
    /// the next revision (no statement for the next search to run); anything else (another
    /// replica's change came between, or a change the delta cannot describe) is left to
    /// the next search's refresh. Memories added here have no `updated_at` stamp, so a later
    /// refresh reads them once more.
    pub(super) fn apply(&self, user_id: i64, revision: i64, delta: Delta) {
        if delta.reset {
            return;
        }
        let Some(user) = self
            .held
            .lock()
            .expect("held users")
            .get(&user_id)
            .map(|h| h.user.clone())
        else {
            return;
        };
        {
            let mut t = user.write().expect("held user");
            if t.revision != revision - 1 {
                return;
            }
            for id in &delta.removed {
                t.remove(*id);
            }
            for m in delta.added {
                let meta = m.meta();
                if !t.docs.contains_key(&meta.id) {
                    t.index.insert(meta.id, &m.content);
                    t.docs.insert(meta.id, meta);
                }
                t.put_vector(m.memory_id, m.model, &m.vector);
            }
            for (id, at) in delta.superseded {
                if let Some(meta) = t.docs.get_mut(&id) {
                    meta.superseded_at = at;
                }
                for mv in t.vectors.iter_mut().flat_map(HashMap::values_mut) {
                    if let Some(&pos) = mv.position.get(&id) {
                        mv.meta[pos].superseded_at = at;
                    }
                }
            }
            t.revision = revision;
        }
        self.evict(user_id);
    }

    /// Holds a user just read, dropping the least recently searched others past the limit.
    fn hold(&self, user_id: i64, user: Arc<RwLock<HeldUser>>) {
        let tick = self.tick.fetch_add(1, AtomicOrdering::Relaxed);
        self.held.lock().expect("held users").insert(
            user_id,
            Held {
                user,
                last_used: tick,
            },
        );
        self.evict(user_id);
    }

    /// Drops least recently searched users (never `keep`) until what is held fits.
    fn evict(&self, keep: i64) {
        let mut users = self.held.lock().expect("held users");
        let mut total: usize = users
            .values()
            .map(|h| h.user.read().expect("held user").size())
            .sum();
        while total > self.max_held {
            let Some((&victim, _)) = users
                .iter()
                .filter(|(id, _)| **id != keep)
                .min_by_key(|(_, h)| h.last_used)
            else {
                break;
            };
            if let Some(h) = users.remove(&victim) {
                total -= h.user.read().expect("held user").size();
            }
        }
    }

    /// Drops every held user; the vectors they held.
    pub(super) fn release(&self) -> usize {
        let mut users = self.held.lock().expect("held users");
        let vectors = users
            .values()
            .map(|h| {
                let u = h.user.read().expect("held user");
                u.size() - u.docs.len()
            })
            .sum();
        users.clear();
        vectors
    }

    /// `(id, updated_at)` rows of a statement.
    async fn stamps(
        &self,
        db: &DatabaseConnection,
        sql: &str,
        values: Vec<DbValue>,
    ) -> Result<Vec<(i64, DateTime<Utc>)>> {
        db.query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
        .collect()
    }

    /// The user's vectors `(memory id, model, vector)`: all, or of these memories.
    async fn vector_rows(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        ids: Option<&[i64]>,
    ) -> Result<Vec<(i64, String, Vec<f32>)>> {
        let select = "SELECT memory_id, model, embedding FROM memory_embeddings WHERE user_id = $1";
        rows_of(db, select, "memory_id", user_id, ids)
            .await?
            .into_iter()
            .map(|r| {
                Ok((
                    r.try_get_by_index(0)?,
                    r.try_get_by_index(1)?,
                    Vec::from(r.try_get_by_index::<PgVector>(2)?),
                ))
            })
            .collect()
    }

    /// The user's memories (all, or these ids) for the full-text index, their text opened.
    async fn text_rows(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        ids: Option<&[i64]>,
    ) -> Result<Vec<(Meta, DateTime<Utc>, String)>> {
        let select = "SELECT id, session_id, kind, role, tags, created_at, content, key_id, \
                      updated_at, expires_at, superseded_at FROM memories WHERE user_id = $1";
        let rows = rows_of(db, select, "id", user_id, ids).await?;
        rows.into_iter()
            .map(|r| {
                let kind: String = r.try_get_by_index(2)?;
                let role: Option<String> = r.try_get_by_index(3)?;
                let tags: serde_json::Value = r.try_get_by_index(4)?;
                let key_id: Option<String> = r.try_get_by_index(7)?;
                let content = self.keys.open(
                    key_id.as_deref(),
                    MEMORY_CONTENT,
                    &r.try_get_by_index::<String>(6)?,
                )?;
                let meta = Meta {
                    id: r.try_get_by_index(0)?,
                    session_id: r.try_get_by_index(1)?,
                    kind: kind.parse()?,
                    role: role.as_deref().map(str::parse).transpose()?,
                    tags: tags
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect(),
                    created_at: r.try_get_by_index(5)?,
                    expires_at: r.try_get_by_index(9)?,
                    superseded_at: r.try_get_by_index(10)?,
                };
                Ok((meta, r.try_get_by_index(8)?, content))
            })
            .collect()
    }
}

/// The rows of a statement over one user's rows (`select` takes the user as `$1`): all, or
/// those whose `id_column` is one of `ids` (in chunks).
async fn rows_of(
    db: &DatabaseConnection,
    select: &str,
    id_column: &str,
    user_id: i64,
    ids: Option<&[i64]>,
) -> Result<Vec<sea_orm::QueryResult>> {
    let Some(ids) = ids else {
        return Ok(db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                select,
                [user_id.into()],
            ))
            .await?);
    };
    let mut rows = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let mut values: Vec<DbValue> = vec![user_id.into()];
        values.extend(chunk.iter().map(|id| DbValue::from(*id)));
        let list: Vec<String> = (2..=chunk.len() + 1).map(|i| format!("${i}")).collect();
        rows.extend(
            db.query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!("{select} AND {id_column} IN ({})", list.join(", ")),
                values,
            ))
            .await?,
        );
    }
    Ok(rows)
}

/// A user's revision and embedding model (0 and none for a user not stored).
async fn user_revision(db: &DatabaseConnection, user_id: i64) -> Result<(i64, Option<String>)> {
    Ok(db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT revision, embedding_model FROM users WHERE id = $1",
            [user_id.into()],
        ))
        .await?
        .map(|r| Ok::<_, crate::error::Error>((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
        .transpose()?
        .unwrap_or((0, None)))
}
