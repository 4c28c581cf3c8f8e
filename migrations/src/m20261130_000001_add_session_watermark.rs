//! A session remembers how far its rolling summaries reach (`summarized_through`, a message
//! id): the chat path reads only the messages after it, and a summary is written only by the
//! replica that moves it forward (compare and set), so two replicas never fold the same span
//! twice. Existing sessions get the end of their newest summary.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Sessions {
    Table,
    SummarizedThrough,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    crate::in_one_transaction!();

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(big_integer_null(Sessions::SummarizedThrough))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE sessions SET summarized_through = \
                 (SELECT max(last_message_id) FROM summaries WHERE summaries.session_id = sessions.id)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .drop_column(Sessions::SummarizedThrough)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
