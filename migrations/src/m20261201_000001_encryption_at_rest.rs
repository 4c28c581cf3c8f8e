//! Encryption at rest: `messages`, `memories` and `summaries` get a `key_id` column, the id of
//! the data key that sealed the row's text and metadata (NULL: stored in the clear), and
//! `encryption_keys` lists every key id that may still be in use, so that a store opened
//! without one of them fails at start instead of returning garbage. On Postgres the generated
//! `tsv` column now covers clear rows only: sealed rows are searched by an in-process index.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    KeyId,
}

#[derive(DeriveIden)]
enum Memories {
    Table,
    KeyId,
}

#[derive(DeriveIden)]
enum Summaries {
    Table,
    KeyId,
}

#[derive(DeriveIden)]
enum EncryptionKeys {
    Table,
    KeyId,
    CreatedAt,
}

fn tables() -> [DynIden; 3] {
    [
        Messages::Table.into_iden(),
        Memories::Table.into_iden(),
        Summaries::Table.into_iden(),
    ]
}

fn key_ids() -> [DynIden; 3] {
    [
        Messages::KeyId.into_iden(),
        Memories::KeyId.into_iden(),
        Summaries::KeyId.into_iden(),
    ]
}

/// Replaces the generated `tsv` column (and its GIN index) with one computed by `expr`.
fn tsv(expr: &str) -> String {
    format!(
        "DROP INDEX IF EXISTS ix_memories_tsv; \
         ALTER TABLE memories DROP COLUMN tsv; \
         ALTER TABLE memories ADD COLUMN tsv tsvector GENERATED ALWAYS AS ({expr}) STORED; \
         CREATE INDEX ix_memories_tsv ON memories USING gin (tsv)"
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in tables().into_iter().zip(key_ids()) {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(string_len_null(column, 16))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(EncryptionKeys::Table)
                    .col(string_len(EncryptionKeys::KeyId, 16).primary_key())
                    .col(timestamp_with_time_zone(EncryptionKeys::CreatedAt))
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(&tsv(
                    "CASE WHEN key_id IS NULL THEN to_tsvector('english', content) END",
                ))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Sealed rows would be left as ciphertext served as text (nothing would mark them
        // sealed): refused while there are any.
        for table in ["messages", "memories", "summaries"] {
            let sealed = manager
                .get_connection()
                .query_one_raw(Statement::from_string(
                    manager.get_database_backend(),
                    format!("SELECT 1 FROM {table} WHERE key_id IS NOT NULL LIMIT 1"),
                ))
                .await?;
            if sealed.is_some() {
                return Err(DbErr::Migration(format!(
                    "{table} holds sealed rows: going below encryption at rest would serve \
                     their ciphertext as text; restore a backup into an older version instead"
                )));
            }
        }
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(&tsv("to_tsvector('english', content)"))
                .await?;
        }
        manager
            .drop_table(Table::drop().table(EncryptionKeys::Table).to_owned())
            .await?;
        for (table, column) in tables().into_iter().zip(key_ids()) {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
