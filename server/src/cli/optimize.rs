//! `deep-recall optimize`: database maintenance (see `MemoryStore::optimize`). Loads no model.
use crate::settings::Settings;
use crate::startup;

pub(super) async fn run(settings: &Settings, json: bool) -> recall_core::Result<()> {
    let engine = startup::data_engine(settings).await?;
    let report = engine.optimize().await?;
    super::print_report(json, &report, |r| {
        format!(
            "optimized the {} store in {:.1}s: {} -> {} bytes; rebuilt {}",
            r.backend,
            r.seconds,
            r.bytes_before,
            r.bytes_after,
            if r.reindexed.is_empty() {
                "no index".to_owned()
            } else {
                r.reindexed.join(", ")
            }
        )
    });
    Ok(())
}
