//! Session keys have their own watermark: `users.memory_sessions_through`, the last memory
//! (by id) whose session the key job has read for topics. A job may write facts, session
//! keys or both (`KeyOptions`); each kind moves only its own watermark, so that turning
//! session keys on later still reads the turns stored before.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    MemorySessionsThrough,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(big_integer_null(Users::MemorySessionsThrough))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::MemorySessionsThrough)
                    .to_owned(),
            )
            .await
    }
}
