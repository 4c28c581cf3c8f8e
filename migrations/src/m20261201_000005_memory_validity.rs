//! Memories that stay true: a memory can expire (`expires_at`, from a TTL given when it is
//! stored or from its tags), and a new memory can supersede an old one (`supersedes` on the
//! new, `superseded_by` and `superseded_at` on the old). Search reads the current memories;
//! history stays queryable as of a time. Expired memories are deleted by the purge, found
//! through `ix_memories_expires`.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::Statement;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Memories {
    Table,
    ExpiresAt,
    Supersedes,
    SupersededBy,
    SupersededAt,
}

const NAME: &str = "ix_memories_expires";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column a statement: SQLite alters a table one change at a time.
        for column in [
            timestamp_with_time_zone_null(Memories::ExpiresAt),
            big_integer_null(Memories::Supersedes),
            big_integer_null(Memories::SupersededBy),
            timestamp_with_time_zone_null(Memories::SupersededAt),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(Memories::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Memories::Table)
                    .col(Memories::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The older version reads every memory as current and keeps it for ever: superseded
        // facts would come back as true and memories due to expire would stay. Refused while
        // there are any (the operator deletes them, or restores a backup into the older
        // version); dropping them here would lose history that going up again cannot bring back.
        let kept = manager
            .get_connection()
            .query_one_raw(Statement::from_string(
                manager.get_database_backend(),
                "SELECT 1 FROM memories WHERE superseded_by IS NOT NULL \
                 OR expires_at IS NOT NULL LIMIT 1",
            ))
            .await?;
        if kept.is_some() {
            return Err(DbErr::Migration(
                "memories holds superseded or expiring memories: going below memory validity \
                 would make superseded facts current again and keep expiring ones for ever; \
                 delete them, or restore a backup into an older version instead"
                    .to_owned(),
            ));
        }
        manager
            .drop_index(Index::drop().name(NAME).table(Memories::Table).to_owned())
            .await?;
        for column in [
            Memories::SupersededAt,
            Memories::SupersededBy,
            Memories::Supersedes,
            Memories::ExpiresAt,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Memories::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
