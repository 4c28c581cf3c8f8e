//! Background jobs (scheduled deletions, re-embedding): one row per job with its schedule,
//! state, progress and the lease of the replica running it.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    UserExternalId,
    Kind,
    Status,
    Progress,
    Message,
    Params,
    Result,
    Error,
    Attempts,
    RunAtUs,
    LockedBy,
    LockedUntilUs,
    CreatedAtUs,
    UpdatedAtUs,
    StartedAtUs,
    FinishedAtUs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Like the audit log, a job names its user by external id with no foreign key: the
        // record of a scheduled deletion outlives the deleted user. Jobs never hold message
        // content. Times are microseconds since the epoch so that both backends compare them
        // the same way when replicas claim due jobs.
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(big_pk_auto(Jobs::Id))
                    .col(string_len(Jobs::UserExternalId, 128))
                    .col(string_len(Jobs::Kind, 32))
                    .col(string_len(Jobs::Status, 16))
                    .col(double(Jobs::Progress))
                    .col(text_null(Jobs::Message))
                    .col(json_binary(Jobs::Params))
                    .col(json_binary_null(Jobs::Result))
                    .col(text_null(Jobs::Error))
                    .col(integer(Jobs::Attempts))
                    .col(big_integer(Jobs::RunAtUs))
                    .col(string_len_null(Jobs::LockedBy, 128))
                    .col(big_integer_null(Jobs::LockedUntilUs))
                    .col(big_integer(Jobs::CreatedAtUs))
                    .col(big_integer(Jobs::UpdatedAtUs))
                    .col(big_integer_null(Jobs::StartedAtUs))
                    .col(big_integer_null(Jobs::FinishedAtUs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_jobs_user")
                    .table(Jobs::Table)
                    .col(Jobs::UserExternalId)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_jobs_due")
                    .table(Jobs::Table)
                    .col(Jobs::Status)
                    .col(Jobs::RunAtUs)
                    .to_owned(),
            )
            .await?;
        // One pending job of each kind per user (one scheduled deletion, say).
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX ux_jobs_pending ON jobs (user_external_id, kind) \
                 WHERE status IN ('queued', 'running')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}
