//! `deep-recall optimize`: database maintenance (see `MemoryStore::optimize`). Loads no model.
use crate::settings::Settings;
use crate::startup;

pub(super) async fn run(settings: &Settings, json: bool) -> recall_core::Result<()> {
    let engine = startup::data_engine(settings).await?;
    let report = engine.optimize().await?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serialises")
        );
    } else {
        println!(
            "optimized the {} store in {:.1}s: {} -> {} bytes; rebuilt {}",
            report.backend,
            report.seconds,
            report.bytes_before,
            report.bytes_after,
            if report.reindexed.is_empty() {
                "no index".to_owned()
            } else {
                report.reindexed.join(", ")
            }
        );
    }
    Ok(())
}
