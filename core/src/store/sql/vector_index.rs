//! What a backend's vector (and full-text) index is asked: [`VectorIndex`] and the queries,
//! rows and changes it is handed.
use super::*;

/// A nearest-neighbour query handed to a [`VectorIndex`].
pub(crate) struct IndexQuery<'a> {
    pub user_id: i64,
    /// The user's revision when the query started.
    pub revision: i64,
    pub model: &'a str,
    pub vector: &'a [f32],
    /// Rows to return at most.
    pub limit: usize,
    pub max_distance: Option<f64>,
    pub filter: &'a ResolvedFilter,
    pub after: Option<SearchCursor>,
}

/// A full-text query handed to a [`VectorIndex`].
pub(crate) struct TextIndexQuery<'a> {
    pub user_id: i64,
    /// The user's revision when the query started.
    pub revision: i64,
    pub text: &'a str,
    /// Rows to return at most.
    pub limit: usize,
    pub filter: &'a ResolvedFilter,
}

/// One embedding to write.
pub(crate) struct EmbeddingRow<'a> {
    pub memory_id: i64,
    pub user_id: i64,
    pub model: &'a str,
    pub vector: &'a [f32],
    pub created_at: DateTime<Utc>,
}

/// What an in-process index needs to know about a memory.
#[derive(Debug, Clone)]
pub(crate) struct IndexedMemory {
    pub memory_id: i64,
    pub session_id: Option<i64>,
    pub kind: MemoryKind,
    pub role: Option<Role>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub superseded_at: Option<DateTime<Utc>>,
    pub content: String,
    pub model: String,
    pub vector: Vec<f32>,
}

impl IndexedMemory {
    /// The fields filters need.
    pub fn meta(&self) -> Meta {
        Meta {
            id: self.memory_id,
            session_id: self.session_id,
            kind: self.kind,
            role: self.role,
            tags: self.tags.clone().into_boxed_slice(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            superseded_at: self.superseded_at,
        }
    }
}

/// A committed change to a user's memories, for indexes that cache them.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub added: Vec<IndexedMemory>,
    pub removed: Vec<i64>,
    /// Memories whose `superseded_at` changed (to the new value).
    pub superseded: Vec<(i64, Option<DateTime<Utc>>)>,
    /// Forget everything cached for the user.
    pub reset: bool,
}

impl Delta {
    /// Forget everything cached for the user.
    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::default()
        }
    }
}

/// Vector storage and nearest-neighbour search of one backend.
#[async_trait]
pub(crate) trait VectorIndex: Send + Sync + 'static {
    /// Writes embedding rows inside the caller's transaction.
    async fn insert(&self, txn: &DatabaseTransaction, rows: &[EmbeddingRow<'_>]) -> Result<()>;

    /// The nearest memories of one user: `(memory id, distance)`, ordered by distance then id.
    async fn search(
        &self,
        db: &DatabaseConnection,
        query: &IndexQuery<'_>,
    ) -> Result<Vec<(i64, f64)>>;

    /// The best full-text matches of one user: `(memory id, BM25 score)`, best first, then by
    /// id.
    async fn text_search(
        &self,
        db: &DatabaseConnection,
        query: &TextIndexQuery<'_>,
    ) -> Result<Vec<(i64, f64)>>;

    /// The vectors of some of a user's memories for one model.
    async fn vectors_of(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        revision: i64,
        model: &str,
        ids: &[i64],
    ) -> Result<Vec<(i64, Vec<f32>)>>;

    /// The embeddings of a user's memories (of those of `ids` only, when given), for export
    /// and backup, ordered by memory and model.
    async fn embeddings_of(
        &self,
        db: &DatabaseTransaction,
        user_id: i64,
        with_vectors: bool,
        ids: Option<&[i64]>,
    ) -> Result<Vec<(i64, ExportedEmbedding)>>;

    /// Readies the index for vectors of `dims` dimensions before a transaction writes them
    /// (Postgres creates its HNSW index for them on its own connection, which must not wait
    /// on a transaction that holds locks on the embeddings).
    async fn prepare(&self, _dims: usize) -> Result<()> {
        Ok(())
    }

    /// Bulk loading: stops keeping the approximate index up to date row by row until
    /// [`VectorIndex::resume`] builds it in one pass (Postgres drops its HNSW indexes;
    /// searches stay correct meanwhile, scanning exactly). An error when one is under way.
    async fn suspend(&self) -> Result<()> {
        Ok(())
    }

    /// Ends a bulk load: builds what [`VectorIndex::suspend`] took down; the indexes built.
    async fn resume(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Frees what the index holds in memory (an in-process cache reloads on demand); how
    /// many vectors it released.
    fn compact(&self) -> usize {
        0
    }

    /// Whether [`VectorIndex::committed`] wants the `added` rows (they cost a copy).
    fn tracks_changes(&self) -> bool {
        false
    }

    /// Called after a transaction that changed the user's memories has committed and moved
    /// the user to `revision`.
    fn committed(&self, _user_id: i64, _revision: i64, _delta: Delta) {}
}

/// The statement of [`VectorIndex::embeddings_of`] (the vector is the fourth column when
/// asked for); `None` when `ids` is given and empty.
pub(crate) fn embeddings_statement(
    user_id: i64,
    with_vectors: bool,
    ids: Option<&[i64]>,
) -> Option<(String, Vec<DbValue>)> {
    let cols = if with_vectors { ", embedding" } else { "" };
    let mut values: Vec<DbValue> = vec![user_id.into()];
    let only = match ids {
        Some([]) => return None,
        Some(ids) => {
            values.extend(ids.iter().map(|&id| DbValue::from(id)));
            let list: Vec<String> = (2..=ids.len() + 1).map(|i| format!("${i}")).collect();
            format!(" AND memory_id IN ({})", list.join(", "))
        }
        None => String::new(),
    };
    Some((
        format!(
            "SELECT memory_id, model, dims{cols} FROM memory_embeddings \
             WHERE user_id = $1{only} ORDER BY memory_id, model"
        ),
        values,
    ))
}
