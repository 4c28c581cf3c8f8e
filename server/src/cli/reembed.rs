//! `deep-recall reembed`: gives every memory a vector of the configured embedding model and
//! switches each user to it, in the foreground (see `Engine::reembed`); the server does the
//! same as a background job when `models.previous_embedding` is set.
use std::io::Write;
use std::time::Duration;

use recall_core::engine::ReembedOptions;

use crate::settings::Settings;
use crate::startup;

pub(super) async fn run(settings: &Settings, json: bool) -> recall_core::Result<()> {
    let engine = startup::engine(settings).await?;
    let options = ReembedOptions {
        batch: settings.models.reembed_batch.max(1),
        pause: Duration::from_millis(settings.models.reembed_pause_ms),
        ..ReembedOptions::default()
    };
    let mut last = std::time::Instant::now();
    let report = engine
        .reembed(&options, &mut |done, total| {
            if last.elapsed().as_secs() >= 1 || done == total {
                last = std::time::Instant::now();
                let _ = writeln!(std::io::stderr(), "embedded {done} of {total} memories");
            }
        })
        .await?;
    super::print_report(json, &report, |r| {
        format!(
            "embedded {} memories with {} in {:.1}s; {} users switched to it, {} were already",
            r.embedded, r.model, r.seconds, r.users_switched, r.users_already
        )
    });
    Ok(())
}
