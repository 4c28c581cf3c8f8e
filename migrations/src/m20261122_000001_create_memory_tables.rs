//! The first schema: users, sessions, messages, memories and their embeddings, summaries,
//! per-user settings and the audit log.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::DEFAULT_EMBEDDING_DIMS;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    ExternalId,
    Revision,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    ExternalId,
    Title,
    Persona,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    UserId,
    SessionId,
    Role,
    Content,
    Tags,
    Metadata,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Summaries {
    Table,
    Id,
    UserId,
    SessionId,
    Content,
    FirstMessageId,
    LastMessageId,
    Model,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Memories {
    Table,
    Id,
    UserId,
    SessionId,
    MessageId,
    SummaryId,
    Kind,
    Role,
    Content,
    Tags,
    Metadata,
    Importance,
    Emotion,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum MemoryEmbeddings {
    Table,
    MemoryId,
    Model,
    UserId,
    Dims,
    Embedding,
    CreatedAt,
}

#[derive(DeriveIden)]
enum UserSettings {
    Table,
    UserId,
    Settings,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    UserExternalId,
    Actor,
    Action,
    Detail,
    CreatedAt,
}

/// A `user_id` column that references `users.id` and goes with its user.
fn owner_fk(from: impl IntoIden + 'static, name: &str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from_tbl(from)
        .from_col(Alias::new("user_id"))
        .to(Users::Table, Users::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

fn ts(col: impl IntoIden) -> ColumnDef {
    timestamp_with_time_zone(col)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let db = manager.get_connection();
        if backend == DbBackend::Postgres {
            db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS vector")
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(big_pk_auto(Users::Id))
                    .col(string_len_uniq(Users::ExternalId, 128))
                    .col(big_integer(Users::Revision).default(0))
                    .col(ts(Users::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Sessions::Table)
                    .col(big_pk_auto(Sessions::Id))
                    .col(big_integer(Sessions::UserId))
                    .col(string_len(Sessions::ExternalId, 256))
                    .col(text_null(Sessions::Title))
                    .col(text_null(Sessions::Persona))
                    .col(ts(Sessions::CreatedAt))
                    .col(ts(Sessions::UpdatedAt))
                    .foreign_key(&mut owner_fk(Sessions::Table, "fk_sessions_user"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_sessions_user_external")
                    .table(Sessions::Table)
                    .col(Sessions::UserId)
                    .col(Sessions::ExternalId)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .col(big_pk_auto(Messages::Id))
                    .col(big_integer(Messages::UserId))
                    .col(big_integer(Messages::SessionId))
                    .col(string_len(Messages::Role, 16))
                    .col(text(Messages::Content))
                    .col(json_binary(Messages::Tags))
                    .col(json_binary(Messages::Metadata))
                    .col(ts(Messages::CreatedAt))
                    .foreign_key(&mut owner_fk(Messages::Table, "fk_messages_user"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_messages_session")
                            .from(Messages::Table, Messages::SessionId)
                            .to(Sessions::Table, Sessions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_messages_session_time")
                    .table(Messages::Table)
                    .col(Messages::SessionId)
                    .col(Messages::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_messages_user_time")
                    .table(Messages::Table)
                    .col(Messages::UserId)
                    .col(Messages::CreatedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Summaries::Table)
                    .col(big_pk_auto(Summaries::Id))
                    .col(big_integer(Summaries::UserId))
                    .col(big_integer(Summaries::SessionId))
                    .col(text(Summaries::Content))
                    .col(big_integer_null(Summaries::FirstMessageId))
                    .col(big_integer_null(Summaries::LastMessageId))
                    .col(string_len_null(Summaries::Model, 128))
                    .col(ts(Summaries::CreatedAt))
                    .foreign_key(&mut owner_fk(Summaries::Table, "fk_summaries_user"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_summaries_session")
                            .from(Summaries::Table, Summaries::SessionId)
                            .to(Sessions::Table, Sessions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_summaries_session")
                    .table(Summaries::Table)
                    .col(Summaries::SessionId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Memories::Table)
                    .col(big_pk_auto(Memories::Id))
                    .col(big_integer(Memories::UserId))
                    .col(big_integer_null(Memories::SessionId))
                    .col(big_integer_null(Memories::MessageId))
                    .col(big_integer_null(Memories::SummaryId))
                    .col(string_len(Memories::Kind, 16))
                    .col(string_len_null(Memories::Role, 16))
                    .col(text(Memories::Content))
                    .col(json_binary(Memories::Tags))
                    .col(json_binary(Memories::Metadata))
                    .col(float(Memories::Importance))
                    .col(string_len_null(Memories::Emotion, 32))
                    .col(ts(Memories::CreatedAt))
                    .col(ts(Memories::UpdatedAt))
                    .foreign_key(&mut owner_fk(Memories::Table, "fk_memories_user"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_memories_session")
                            .from(Memories::Table, Memories::SessionId)
                            .to(Sessions::Table, Sessions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_memories_message")
                            .from(Memories::Table, Memories::MessageId)
                            .to(Messages::Table, Messages::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_memories_summary")
                            .from(Memories::Table, Memories::SummaryId)
                            .to(Summaries::Table, Summaries::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            (
                "ix_memories_user_time",
                vec![Memories::UserId, Memories::CreatedAt],
            ),
            ("ix_memories_session", vec![Memories::SessionId]),
            ("ix_memories_message", vec![Memories::MessageId]),
            ("ix_memories_summary", vec![Memories::SummaryId]),
        ] {
            let mut index = Index::create();
            index.name(name).table(Memories::Table);
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }

        let mut embeddings = Table::create();
        embeddings
            .table(MemoryEmbeddings::Table)
            .col(big_integer(MemoryEmbeddings::MemoryId))
            .col(string_len(MemoryEmbeddings::Model, 128))
            .col(big_integer(MemoryEmbeddings::UserId))
            .col(integer(MemoryEmbeddings::Dims))
            .col(ts(MemoryEmbeddings::CreatedAt))
            .primary_key(
                Index::create()
                    .col(MemoryEmbeddings::MemoryId)
                    .col(MemoryEmbeddings::Model),
            )
            .foreign_key(&mut owner_fk(
                MemoryEmbeddings::Table,
                "fk_memory_embeddings_user",
            ))
            .foreign_key(
                ForeignKey::create()
                    .name("fk_memory_embeddings_memory")
                    .from(MemoryEmbeddings::Table, MemoryEmbeddings::MemoryId)
                    .to(Memories::Table, Memories::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            );
        if backend == DbBackend::Postgres {
            // No fixed dimension: several embedding models can coexist while a re-embedding job
            // runs. Each dimension gets its own partial expression index (below).
            embeddings.col(
                ColumnDef::new(MemoryEmbeddings::Embedding)
                    .vector(None)
                    .not_null(),
            );
        } else {
            embeddings.col(blob(MemoryEmbeddings::Embedding));
        }
        manager.create_table(embeddings.to_owned()).await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_memory_embeddings_user_model")
                    .table(MemoryEmbeddings::Table)
                    .col(MemoryEmbeddings::UserId)
                    .col(MemoryEmbeddings::Model)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UserSettings::Table)
                    .col(big_integer(UserSettings::UserId).primary_key())
                    .col(json_binary(UserSettings::Settings))
                    .col(ts(UserSettings::UpdatedAt))
                    .foreign_key(&mut owner_fk(UserSettings::Table, "fk_user_settings_user"))
                    .to_owned(),
            )
            .await?;

        // The audit log keeps the external user id as text, with no foreign key: the record of
        // a deletion must outlive the deleted user. It never holds message content.
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .col(big_pk_auto(AuditLog::Id))
                    .col(string_len(AuditLog::UserExternalId, 128))
                    .col(string_len(AuditLog::Actor, 128))
                    .col(string_len(AuditLog::Action, 64))
                    .col(json_binary(AuditLog::Detail))
                    .col(ts(AuditLog::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_audit_log_user_time")
                    .table(AuditLog::Table)
                    .col(AuditLog::UserExternalId)
                    .col(AuditLog::CreatedAt)
                    .to_owned(),
            )
            .await?;

        if backend == DbBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE memories ADD COLUMN tsv tsvector \
                 GENERATED ALWAYS AS (to_tsvector('english', content)) STORED",
            )
            .await?;
            db.execute_unprepared("CREATE INDEX ix_memories_tsv ON memories USING gin (tsv)")
                .await?;
            db.execute_unprepared(
                "CREATE INDEX ix_memories_tags ON memories USING gin (tags jsonb_path_ops)",
            )
            .await?;
            let dims = DEFAULT_EMBEDDING_DIMS;
            db.execute_unprepared(&format!(
                "CREATE INDEX ix_memory_embeddings_hnsw_cosine_{dims} ON memory_embeddings \
                 USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Children first. Indexes go with their tables; the `vector` extension stays, as other
        // schemas in the database may use it.
        for table in [
            AuditLog::Table.into_iden(),
            UserSettings::Table.into_iden(),
            MemoryEmbeddings::Table.into_iden(),
            Memories::Table.into_iden(),
            Summaries::Table.into_iden(),
            Messages::Table.into_iden(),
            Sessions::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
