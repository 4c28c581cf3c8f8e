//! Memories in conversation order within a session (`session_id, message_id, id`): retrieval
//! reads the turns next to a hit ("neighbours") with one short range scan per hit.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Memories {
    Table,
    SessionId,
    MessageId,
    Id,
}

const NAME: &str = "ix_memories_session_order";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Memories::Table)
                    .col(Memories::SessionId)
                    .col(Memories::MessageId)
                    .col(Memories::Id)
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
