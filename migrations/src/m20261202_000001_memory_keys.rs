//! Extra keys: a memory of kind `key` holds text written about another memory of the same
//! user (an extracted fact with its names and dates resolved) and points at it
//! (`memories.key_for`). Search finds keys like any memory and returns the memory they point
//! at; a key goes with its memory (the store deletes them together). `users.memory_keys`
//! records whether the user has turned the background key writing on, and
//! `users.memory_keys_through` the last memory (by id) the key job has read.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Memories {
    Table,
    KeyFor,
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    MemoryKeys,
    MemoryKeysThrough,
}

const NAME: &str = "ix_memories_key_for";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Memories::Table)
                    .add_column(big_integer_null(Memories::KeyFor))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(boolean(Users::MemoryKeys).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(big_integer_null(Users::MemoryKeysThrough))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Memories::Table)
                    .col(Memories::KeyFor)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Keys go with the column that ties them to their memory: the older version knows no
        // memory of kind `key`, and refuses every read that meets one.
        manager
            .get_connection()
            .execute_unprepared("DELETE FROM memories WHERE kind = 'key'")
            .await?;
        manager
            .drop_index(Index::drop().name(NAME).table(Memories::Table).to_owned())
            .await?;
        for column in [Users::MemoryKeysThrough, Users::MemoryKeys] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Memories::Table)
                    .drop_column(Memories::KeyFor)
                    .to_owned(),
            )
            .await
    }
}
