//! `deep-recall eval`: retrieval quality on a LoCoMo-format benchmark, per category.
use std::path::PathBuf;

use chrono::Utc;
use clap::Args;
use indicatif::ProgressBar;
use recall_core::RetrieveOptions;
use recall_core::error::Error;
use recall_core::retrieval::{RankingConfig, SearchMode};
use recall_core::types::Actor;
use serde_json::json;

use super::search::RankingArgs;
use super::spinner_style;
use crate::settings::Settings;
use crate::startup;

#[derive(Debug, Args)]
pub(super) struct EvalArgs {
    /// The dataset (a JSON list of LoCoMo samples).
    file: PathBuf,
    /// Cut-offs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    k: Vec<usize>,
    /// Modes to evaluate (vector, text, hybrid), comma-separated; each is reported
    /// separately, on the same ingested data.
    #[arg(long, value_delimiter = ',', default_value = "hybrid")]
    mode: Vec<SearchMode>,
    #[command(flatten)]
    ranking: RankingArgs,
}

pub(super) async fn run(
    settings: &Settings,
    args: &EvalArgs,
    json: bool,
) -> recall_core::Result<()> {
    let (file, ks, modes, ranking) = (&args.file, &args.k, &args.mode, &args.ranking);
    if ks.is_empty() || ks.contains(&0) {
        return Err(Error::invalid("--k needs cut-offs of at least 1"));
    }
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let (samples, warnings) = recall_core::eval::parse_locomo(&text)?;
    for w in &warnings.bad_evidence {
        eprintln!("warning: skipped evidence id {w}");
    }
    let engine = startup::engine(settings).await?;
    let run = format!("{:x}", Utc::now().timestamp_micros());
    let bar = ProgressBar::new(samples.len() as u64).with_style(spinner_style());
    bar.set_message("ingesting");
    let mut ingested = Vec::with_capacity(samples.len());
    let mut outcome = Ok(());
    for s in samples {
        let user = format!("eval-{run}-{}", s.id);
        match recall_core::eval::ingest_sample(&engine, &user, &s).await {
            Ok(i) => ingested.push((s, i)),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut reports = Vec::new();
    if outcome.is_ok() {
        for mode in modes {
            let options = RetrieveOptions {
                mode: *mode,
                ranking: match ranking.config(*mode, None) {
                    Ok(c) => c,
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                },
                ..RetrieveOptions::default()
            };
            match recall_core::eval::evaluate(&engine, &ingested, ks, &options).await {
                Ok(mut r) => {
                    r["mode"] = json!(mode);
                    r["reranked"] = json!(options.ranking != RankingConfig::plain());
                    r["store"] = json!(engine.backend());
                    r["bad_evidence"] = json!(warnings.bad_evidence.len());
                    r["skipped_questions"] = json!(warnings.skipped_questions);
                    reports.push(r);
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
    }
    // The temporary users go whatever happened.
    for (_, i) in &ingested {
        engine.delete_user(&i.user, &Actor::cli()).await?;
    }
    outcome?;
    for r in &reports {
        if json {
            println!("{r}");
        } else {
            print_eval(r, ks);
        }
    }
    Ok(())
}

fn print_eval(r: &serde_json::Value, ks: &[usize]) {
    let mode = r["mode"].as_str().unwrap_or("?");
    let reranked = if r["reranked"].as_bool() == Some(true) {
        " + re-ranking"
    } else {
        ""
    };
    println!(
        "mode {mode}{reranked} on the {} store: {} questions",
        r["store"].as_str().unwrap_or("?"),
        r["questions"]
    );
    let mut header = format!("{:<10}", "category");
    for k in ks {
        header += &format!(" {:>9} {:>7}", format!("recall@{k}"), format!("hit@{k}"));
    }
    println!("{header} {:>6} {:>5}", "mrr", "n");
    let row = |name: &str, m: &serde_json::Value| {
        let mut line = format!("{name:<10}");
        for k in ks {
            line += &format!(
                " {:>9.3} {:>7.3}",
                m[format!("recall@{k}")].as_f64().unwrap_or(0.0),
                m[format!("hit@{k}")].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "{line} {:>6.3} {:>5}",
            m["mrr"].as_f64().unwrap_or(0.0),
            m["questions"]
        );
    };
    if let Some(cats) = r["by_category"].as_object() {
        for (c, m) in cats {
            row(c, m);
        }
    }
    row("overall", &r["overall"]);
    println!();
}
