//! Re-embedding: each user records the embedding model their searches use
//! (`users.embedding_model`; NULL: whichever the server is configured with, or the model being
//! migrated from while a re-embedding runs). The re-embedding job sets it when every memory of
//! the user has a vector of the new model, then drops the old vectors.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    EmbeddingModel,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(string_len_null(Users::EmbeddingModel, 128))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::EmbeddingModel)
                    .to_owned(),
            )
            .await
    }
}
