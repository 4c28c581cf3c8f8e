//! `deep-recall ingest`: a JSON Lines conversation, checked whole, then embedded and stored;
//! then the user's extra keys written, as the server's key job would write them.
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::ProgressBar;
use recall_core::error::Error;
use serde_json::json;

use super::spinner_style;
use crate::settings::Settings;
use crate::startup;

#[derive(Debug, Args)]
pub(super) struct IngestArgs {
    /// The user who owns the conversation.
    #[arg(long)]
    user: String,
    /// The file; `-` reads standard input.
    file: PathBuf,
    /// Leave the user's extra keys to the server's key job (`memory_keys.check_secs`)
    /// instead of writing them before returning. Without it, a user whose keys are on (new
    /// users by default: `memory_keys.new_users`) has the keys that need no chat model
    /// written now: the next search finds them, with or without a server.
    #[arg(long)]
    no_keys: bool,
}

pub(super) async fn run(
    settings: &Settings,
    args: &IngestArgs,
    json: bool,
) -> recall_core::Result<()> {
    let (user, file) = (args.user.as_str(), args.file.as_path());
    let started = Instant::now();
    // A file that is not there is said before the models load.
    let input = (file != Path::new("-"))
        .then(|| std::fs::File::open(file).map_err(|e| Error::input_file(file, e)))
        .transpose()?;
    let engine = startup::engine(settings).await?;
    let limits = engine.limits().clone();
    let messages = if let Some(f) = input {
        recall_core::ingest::parse_jsonl(BufReader::new(f), &limits)?
    } else {
        recall_core::ingest::parse_jsonl(std::io::stdin().lock(), &limits)?
    };
    let total = messages.len();
    let sessions: std::collections::HashSet<&str> =
        messages.iter().map(|m| m.session.as_str()).collect();
    let sessions = sessions.len();
    let bar = ProgressBar::new(total as u64).with_style(spinner_style());
    bar.set_message("embedding");
    let written = engine
        .add_messages_with_progress(user, messages, &|done| bar.set_position(done as u64))
        .await?;
    bar.finish_and_clear();
    let keys = if args.no_keys {
        0
    } else {
        write_keys(settings, &engine, user).await?
    };
    let memories: usize = written.iter().map(|w| w.memory_ids.len()).sum();
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            json!({
                "user": user,
                "messages": written.len(),
                "sessions": sessions,
                "memories": memories,
                "keys": keys,
                "store": engine.backend(),
                "seconds": seconds,
            })
        );
    } else {
        println!(
            "ingested {} messages ({} sessions, {} memories, {keys} keys) for user {user} into the {} store in {seconds:.1}s",
            written.len(),
            sessions,
            memories,
            engine.backend(),
        );
    }
    Ok(())
}

/// Writes the user's extra keys now, when their keys are on: the key job's passes that need
/// no chat model (context keys, `memory_keys.context`; facts and session keys are the
/// server's job, which loads the model), until none is left. The keys written.
async fn write_keys(
    settings: &Settings,
    engine: &recall_core::Engine,
    user: &str,
) -> recall_core::Result<u64> {
    let options = settings.memory_keys.options(false);
    if !options.context || !engine.memory_keys_status(user).await?.enabled {
        return Ok(0);
    }
    let bar = ProgressBar::new(0).with_style(spinner_style());
    bar.set_message("writing keys");
    let keys = engine
        .write_all_memory_keys(user, &options, &mut |done, total, _| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await?;
    bar.finish_and_clear();
    Ok(keys)
}
