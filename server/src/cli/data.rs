//! `deep-recall export` and `forget`: a user's data rights from the command line (audited,
//! like the API's). They load no model.
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use recall_core::error::Error;
use recall_core::types::{Actor, ExportOptions};

use crate::settings::Settings;
use crate::startup;

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    /// Whose data.
    #[arg(long)]
    user: String,
    /// Include the embedding vectors.
    #[arg(long)]
    with_vectors: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct ForgetArgs {
    /// Whose data.
    #[arg(long)]
    user: String,
}

pub(super) async fn export(
    settings: &Settings,
    args: &ExportArgs,
    json: bool,
) -> recall_core::Result<()> {
    let (user, output) = (args.user.as_str(), args.output.as_deref());
    let engine = startup::data_engine(settings).await?;
    let data = engine
        .export(
            user,
            &ExportOptions {
                include_vectors: args.with_vectors,
            },
            &Actor::cli(),
        )
        .await?;
    let text = serde_json::to_string_pretty(&data)
        .map_err(|e| Error::Internal(format!("export serialisation: {e}")))?;
    match output {
        Some(path) => {
            std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
            if !json {
                eprintln!(
                    "exported {} messages and {} memories of user {user} to {}",
                    data.messages.len(),
                    data.memories.len(),
                    path.display()
                );
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").map_err(|e| Error::io("<stdout>", e))?;
        }
    }
    Ok(())
}

pub(super) async fn forget(
    settings: &Settings,
    args: &ForgetArgs,
    json: bool,
) -> recall_core::Result<()> {
    let user = args.user.as_str();
    let engine = startup::data_engine(settings).await?;
    let report = engine.delete_user(user, &Actor::cli()).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serialises")
        );
    } else if report.existed {
        println!(
            "deleted user {user}: {} sessions, {} messages, {} memories, {} vectors, {} summaries",
            report.sessions, report.messages, report.memories, report.embeddings, report.summaries
        );
    } else {
        println!("user {user} had no data");
    }
    Ok(())
}
