//! `deep-recall optimize`: database maintenance (see `MemoryStore::optimize`), after deleting
//! the memories that expired. Loads no model.
use recall_core::store::OptimizeReport;

use crate::settings::Settings;
use crate::startup;

pub(super) async fn run(settings: &Settings, json: bool) -> recall_core::Result<()> {
    let engine = startup::data_engine(settings).await?;
    let purged = engine.purge_expired(500).await?;
    let report = engine.optimize().await?;
    let report = Report {
        expired_deleted: purged,
        store: report,
    };
    super::print_report(
        json,
        &report,
        |Report {
             expired_deleted,
             store: r,
         }| {
            format!(
                "deleted {expired_deleted} expired memories; optimized the {} store in {:.1}s: \
             {} -> {} bytes; rebuilt {}",
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
        },
    );
    Ok(())
}

/// What `optimize` did: the purge, then the store's maintenance (its fields inline).
#[derive(serde::Serialize)]
struct Report {
    expired_deleted: u64,
    #[serde(flatten)]
    store: OptimizeReport,
}
