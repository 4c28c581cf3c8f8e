//! Deep memory: the (question, memory) pairs a user's query adapter is trained on, and the
//! adapter itself (one per user). Both belong to the user (foreign keys cascade from `users`);
//! a pair also goes with its memory. A pair's question is sealed like the memory it paraphrases
//! (`content`, `key_id`: see `recall_core::store::sql::keys`).
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Memories {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum DeepMemoryPairs {
    Table,
    Id,
    UserId,
    MemoryId,
    Content,
    KeyId,
    Source,
    Model,
    PromptVersion,
    CreatedAt,
}

#[derive(DeriveIden)]
enum DeepMemoryAdapters {
    Table,
    UserId,
    EmbeddingModel,
    Version,
    Dims,
    Rank,
    Weights,
    Metrics,
    Enabled,
    Memories,
    Pairs,
    TrainedAt,
    UpdatedAt,
}

fn owner(from: DeepMemoryPairs, name: &str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from_tbl(DeepMemoryPairs::Table)
        .from_col(from)
        .to(Users::Table, Users::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DeepMemoryPairs::Table)
                    .col(big_pk_auto(DeepMemoryPairs::Id))
                    .col(big_integer(DeepMemoryPairs::UserId))
                    .col(big_integer(DeepMemoryPairs::MemoryId))
                    .col(text(DeepMemoryPairs::Content))
                    .col(string_len_null(DeepMemoryPairs::KeyId, 64))
                    .col(string_len(DeepMemoryPairs::Source, 16))
                    .col(string_len_null(DeepMemoryPairs::Model, 128))
                    .col(integer_null(DeepMemoryPairs::PromptVersion))
                    .col(timestamp_with_time_zone(DeepMemoryPairs::CreatedAt))
                    .foreign_key(&mut owner(DeepMemoryPairs::UserId, "fk_dm_pairs_user"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_dm_pairs_memory")
                            .from(DeepMemoryPairs::Table, DeepMemoryPairs::MemoryId)
                            .to(Memories::Table, Memories::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_dm_pairs_user_memory")
                    .table(DeepMemoryPairs::Table)
                    .col(DeepMemoryPairs::UserId)
                    .col(DeepMemoryPairs::MemoryId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_dm_pairs_memory")
                    .table(DeepMemoryPairs::Table)
                    .col(DeepMemoryPairs::MemoryId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeepMemoryAdapters::Table)
                    .col(big_integer(DeepMemoryAdapters::UserId).primary_key())
                    .col(string_len(DeepMemoryAdapters::EmbeddingModel, 128))
                    .col(integer(DeepMemoryAdapters::Version))
                    .col(integer(DeepMemoryAdapters::Dims))
                    .col(integer(DeepMemoryAdapters::Rank))
                    .col(blob(DeepMemoryAdapters::Weights))
                    .col(text(DeepMemoryAdapters::Metrics))
                    .col(boolean(DeepMemoryAdapters::Enabled))
                    .col(big_integer(DeepMemoryAdapters::Memories))
                    .col(big_integer(DeepMemoryAdapters::Pairs))
                    .col(timestamp_with_time_zone(DeepMemoryAdapters::TrainedAt))
                    .col(timestamp_with_time_zone(DeepMemoryAdapters::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_dm_adapters_user")
                            .from(DeepMemoryAdapters::Table, DeepMemoryAdapters::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(DeepMemoryAdapters::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(DeepMemoryPairs::Table).to_owned())
            .await
    }
}
