use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "summaries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub session_id: i64,
    pub content: String,
    pub first_message_id: Option<i64>,
    pub last_message_id: Option<i64>,
    pub model: Option<String>,
    pub created_at: DateTimeUtc,
    /// The data key that sealed the row's text and metadata (NULL: in the clear).
    pub key_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
