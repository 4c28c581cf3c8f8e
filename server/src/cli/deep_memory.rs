//! `deep-recall deep-memory generate|train|eval|enable|disable|status --user U`: a user's
//! query adapter in the foreground (see `recall_core::deep_memory`); the server runs the same
//! as jobs (`deepMemoryGenerate`, `deepMemoryTrain`).
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use recall_core::deep_memory::{Evaluation, GenerateOptions, TrainOptions};
use recall_core::engine::TrainProgress;
use serde_json::json;

use super::spinner_style;
use crate::settings::Settings;
use crate::startup;

#[derive(Debug, Args)]
pub(super) struct DeepMemoryArgs {
    #[command(subcommand)]
    command: DeepMemoryCommand,
}

#[derive(Debug, Subcommand)]
enum DeepMemoryCommand {
    /// Have the chat model write questions that the user's memories answer (memories with
    /// generated questions already are skipped: run it again to resume).
    Generate {
        /// The user.
        #[arg(long)]
        user: String,
        /// Questions per memory (1 to 5) [deep_memory.questions_per_memory].
        #[arg(long)]
        questions_per_memory: Option<usize>,
        /// Pairs written in this run at most [deep_memory.max_pairs_per_run].
        #[arg(long)]
        max_pairs: Option<usize>,
    },
    /// Train the user's adapter on their pairs and judge it on the held-out ones. A new
    /// adapter starts off; `enable` turns it on.
    Train {
        /// The user.
        #[arg(long)]
        user: String,
        /// Rank of the adapter.
        #[arg(long, default_value_t = TrainOptions::default().rank)]
        rank: usize,
        /// Passes over the pairs.
        #[arg(long, default_value_t = TrainOptions::default().epochs)]
        epochs: usize,
        /// Learning rate.
        #[arg(long, default_value_t = TrainOptions::default().learning_rate)]
        learning_rate: f64,
    },
    /// Judge the user's adapter on the held-out pairs as they are now: recall@1/5/10 and MRR
    /// before and after.
    Eval {
        /// The user.
        #[arg(long)]
        user: String,
    },
    /// Turn the user's adapter on (refused when it does not help).
    Enable {
        /// The user.
        #[arg(long)]
        user: String,
    },
    /// Turn the user's adapter off.
    Disable {
        /// The user.
        #[arg(long)]
        user: String,
    },
    /// Where the user's deep memory stands.
    Status {
        /// The user.
        #[arg(long)]
        user: String,
    },
}

fn figures(e: &Evaluation) -> String {
    format!(
        "recall@1 {:.3} -> {:.3}, recall@5 {:.3} -> {:.3}, recall@10 {:.3} -> {:.3}, MRR {:.3} \
         -> {:.3} on {} held-out pairs",
        e.before.recall_at_1,
        e.after.recall_at_1,
        e.before.recall_at_5,
        e.after.recall_at_5,
        e.before.recall_at_10,
        e.after.recall_at_10,
        e.before.mrr,
        e.after.mrr,
        e.pairs
    )
}

pub(super) async fn run(
    settings: &Settings,
    args: &DeepMemoryArgs,
    json: bool,
) -> recall_core::Result<()> {
    match &args.command {
        DeepMemoryCommand::Generate {
            user,
            questions_per_memory,
            max_pairs,
        } => {
            let options = GenerateOptions {
                questions_per_memory: questions_per_memory
                    .unwrap_or(settings.deep_memory.questions_per_memory),
                max_pairs: max_pairs.unwrap_or(settings.deep_memory.max_pairs_per_run),
                ..settings.deep_memory.generate()
            };
            options.validate()?;
            let model = startup::chat_model(settings, 1, true).await?;
            let engine = startup::engine(settings).await?.with_llm(Some(model));
            let bar = ProgressBar::new(0).with_style(spinner_style());
            bar.set_message("writing questions");
            let report = engine
                .deep_memory_generate(user, &options, &mut |done, total, pairs| {
                    bar.set_length(total);
                    bar.set_position(done);
                    bar.set_message(format!("{pairs} pairs"));
                })
                .await?;
            bar.finish_and_clear();
            super::print_report(json, &report, |r| {
                format!(
                    "wrote {} questions with {} for {} memories of {user} in {:.1}s ({:.2} \
                     pairs/s); {} replies rejected, {} memories skipped",
                    r.pairs,
                    r.model,
                    r.memories,
                    r.seconds,
                    r.pairs_per_second,
                    r.rejected,
                    r.skipped
                )
            });
        }
        DeepMemoryCommand::Train {
            user,
            rank,
            epochs,
            learning_rate,
        } => {
            let engine = startup::engine(settings).await?;
            let options = TrainOptions {
                rank: *rank,
                epochs: *epochs,
                learning_rate: *learning_rate,
                ..TrainOptions::default()
            };
            let bar = ProgressBar::new(*epochs as u64).with_style(spinner_style());
            let stored = engine
                .deep_memory_train(user, &options, &mut |p| match p {
                    TrainProgress::Embedding { done, total } => {
                        bar.set_message(format!("embedding questions {done}/{total}"))
                    }
                    TrainProgress::Epoch { epoch, loss, .. } => {
                        bar.set_position(epoch as u64);
                        bar.set_message(format!("loss {loss:.4}"));
                    }
                    TrainProgress::Evaluated(_) => {}
                })
                .await?;
            bar.finish_and_clear();
            let r = &stored.report;
            if json {
                println!(
                    "{}",
                    json!({
                        "user": user,
                        "version": stored.version,
                        "enabled": stored.enabled,
                        "helps": r.evaluation.helps(),
                        "report": r,
                    })
                );
            } else {
                println!(
                    "trained adapter v{} of {user} (rank {}) on {} pairs over {} memories in \
                     {:.1}s, kept epoch {} of {}; {}; {}",
                    stored.version,
                    r.rank,
                    r.train_pairs,
                    r.memories,
                    r.seconds,
                    r.best_epoch,
                    r.epochs,
                    figures(&r.evaluation),
                    match (stored.enabled, r.evaluation.helps()) {
                        (true, _) => "it is on",
                        (false, true) => "it helps: `deep-memory enable` turns it on",
                        (false, false) => "it does not help, so it stays off",
                    }
                );
            }
        }
        DeepMemoryCommand::Eval { user } => {
            let engine = startup::engine(settings).await?;
            let e = engine.deep_memory_evaluate(user).await?;
            if json {
                println!(
                    "{}",
                    json!({
                        "before": e.before,
                        "after": e.after,
                        "pairs": e.pairs,
                        "helps": e.helps(),
                    })
                );
            } else {
                println!("{}", figures(&e));
            }
        }
        DeepMemoryCommand::Enable { user }
        | DeepMemoryCommand::Disable { user }
        | DeepMemoryCommand::Status { user } => {
            let engine = startup::engine(settings).await?;
            let status = match &args.command {
                DeepMemoryCommand::Enable { .. } => engine.deep_memory_enable(user).await?,
                DeepMemoryCommand::Disable { .. } => engine.deep_memory_disable(user).await?,
                _ => engine.deep_memory_status(user).await?,
            };
            super::print_report(json, &status, |s| {
                let adapter = if !s.trained {
                    "no adapter trained".to_owned()
                } else {
                    format!(
                        "adapter v{} {}{}",
                        s.version.unwrap_or(0),
                        if s.active {
                            "on"
                        } else if s.enabled {
                            "on but inactive"
                        } else {
                            "off"
                        },
                        s.report
                            .as_ref()
                            .map(|r| format!(" ({})", figures(&r.evaluation)))
                            .unwrap_or_default()
                    )
                };
                format!(
                    "{user}: {} pairs ({} generated, {} held out) over {} of {} memories; {}{}",
                    s.pairs,
                    s.generated_pairs,
                    s.held_out_pairs,
                    s.memories_with_pairs,
                    s.memories,
                    adapter,
                    s.inactive_reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            });
        }
    }
    Ok(())
}
