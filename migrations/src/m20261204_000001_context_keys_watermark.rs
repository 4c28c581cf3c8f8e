//! Context keys get a watermark too: `users.memory_context_through`, the last memory (by id)
//! the key job has read for context keys, so that a run reads only what came after it
//! instead of every memory of the user. A context key quotes the turn before its own: when
//! a turn changes or goes, the keys quoting it are deleted and the watermark moves back
//! before it (`memory_context_epoch` counts those moves, so that a run that read the old
//! watermark cannot move it forward again over them).
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    MemoryContextThrough,
    MemoryContextEpoch,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(big_integer_null(Users::MemoryContextThrough))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(big_integer(Users::MemoryContextEpoch).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Users::MemoryContextEpoch, Users::MemoryContextThrough] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
