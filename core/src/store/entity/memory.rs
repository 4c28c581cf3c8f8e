use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "memories")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub session_id: Option<i64>,
    pub message_id: Option<i64>,
    pub summary_id: Option<i64>,
    pub kind: String,
    pub role: Option<String>,
    pub content: String,
    pub tags: Json,
    pub metadata: Json,
    pub importance: f32,
    pub emotion: Option<String>,
    pub created_at: DateTimeUtc,
    /// The data key that sealed the row's text and metadata (NULL: in the clear).
    pub key_id: Option<String>,
    pub updated_at: DateTimeUtc,
    /// When the memory stops being returned (and the purge deletes it).
    pub expires_at: Option<DateTimeUtc>,
    /// The memory this one replaced.
    pub supersedes: Option<i64>,
    /// The memory that replaced this one.
    pub superseded_by: Option<i64>,
    /// Since when this memory is no longer current.
    pub superseded_at: Option<DateTimeUtc>,
    /// The memory this key points at (a memory of kind `key`).
    pub key_for: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
