use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub external_id: String,
    /// Bumped by every write to the user's memories (keeps in-process caches coherent).
    pub revision: i64,
    pub created_at: DateTimeUtc,
    /// The embedding model the user's searches use (NULL: the configured one).
    pub embedding_model: Option<String>,
    /// Whether the background job writes extra keys for the user's memories.
    pub memory_keys: bool,
    /// The last memory (by id) the key job has read for facts.
    pub memory_keys_through: Option<i64>,
    /// The last memory (by id) the key job has read for session topics.
    pub memory_sessions_through: Option<i64>,
    /// The last memory (by id) the key job has read for context keys.
    pub memory_context_through: Option<i64>,
    /// How many times `memory_context_through` was moved back (a changed or deleted turn).
    pub memory_context_epoch: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
