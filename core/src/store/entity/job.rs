use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_external_id: String,
    pub kind: String,
    pub status: String,
    pub progress: f64,
    pub message: Option<String>,
    pub params: Json,
    pub result: Option<Json>,
    pub error: Option<String>,
    pub attempts: i32,
    pub run_at_us: i64,
    pub locked_by: Option<String>,
    pub locked_until_us: Option<i64>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub started_at_us: Option<i64>,
    pub finished_at_us: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
