//! `deep-recall backup` and `restore`: a consistent snapshot of every user (or one) in one
//! checksummed file, and its restore into either store (see `recall_core::backup`). They load
//! no model.
use std::path::PathBuf;

use clap::Args;
use recall_core::backup::{BackupOptions, RestoreOptions};
use recall_core::types::Actor;

use crate::settings::Settings;
use crate::startup;

#[derive(Debug, Args)]
pub(super) struct BackupArgs {
    /// The file to write (gzip-compressed JSON lines; it appears only once complete).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Back up this user only.
    #[arg(long)]
    user: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// Restore this user of the backup only (replacing them in the store, if present).
    #[arg(long)]
    user: Option<String>,
    /// Restore into a store that already holds users: the backup's users replace the same
    /// users there; the store's other users stay.
    #[arg(long)]
    force: bool,
    /// Restore users whose data was deleted after the backup was taken (refused otherwise).
    #[arg(long)]
    include_deleted: bool,
}

pub(super) async fn backup(
    settings: &Settings,
    args: &BackupArgs,
    json: bool,
) -> recall_core::Result<()> {
    let engine = startup::data_engine(settings).await?;
    let report = engine
        .backup(
            &args.out,
            &BackupOptions {
                user: args.user.clone(),
            },
        )
        .await?;
    super::print_report(json, &report, |r| {
        format!(
            "backed up {} users ({} messages, {} memories, {} vectors) to {} ({} bytes, sha256 {})",
            r.users,
            r.messages,
            r.memories,
            r.embeddings,
            r.path.display(),
            r.bytes,
            r.sha256
        )
    });
    Ok(())
}

pub(super) async fn restore(
    settings: &Settings,
    args: &RestoreArgs,
    json: bool,
) -> recall_core::Result<()> {
    let engine = startup::data_engine(settings).await?;
    let report = engine
        .restore(
            &args.file,
            &RestoreOptions {
                user: args.user.clone(),
                force: args.force,
                include_deleted: args.include_deleted,
            },
            &Actor::cli(),
        )
        .await?;
    super::print_report(json, &report, |r| {
        format!(
            "restored {} users ({} replaced; {} messages, {} memories, {} vectors){}{}",
            r.users,
            r.replaced,
            r.messages,
            r.memories,
            r.embeddings,
            if r.ids_shifted {
                "; row ids moved past the store's own"
            } else {
                ""
            },
            if r.indexes_built.is_empty() {
                String::new()
            } else {
                format!("; built {} after the rows", r.indexes_built.join(", "))
            }
        )
    });
    Ok(())
}
