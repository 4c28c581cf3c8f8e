//! The user's memories by `updated_at` (`user_id, updated_at`): a server that holds a large
//! user's full-text index in process (Postgres) brings it up to date by reading only the rows
//! written since it last looked.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Memories {
    Table,
    UserId,
    UpdatedAt,
}

const NAME: &str = "ix_memories_user_updated";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Memories::Table)
                    .col(Memories::UserId)
                    .col(Memories::UpdatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(NAME).table(Memories::Table).to_owned())
            .await
    }
}
