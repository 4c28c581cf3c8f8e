//! `deep-recall keys rotate`: re-seals every stored row with the current data key (see
//! `MemoryStore::rotate_keys`), printing progress on standard error. Loads no model.
use std::io::Write;

use crate::settings::Settings;
use crate::startup;

pub(super) async fn rotate(settings: &Settings, json: bool) -> recall_core::Result<()> {
    let engine = startup::data_engine(settings).await?;
    let mut last = std::time::Instant::now();
    let report = engine
        .rotate_keys(&mut |done, total| {
            if last.elapsed().as_secs() >= 1 || done == total {
                last = std::time::Instant::now();
                let _ = writeln!(std::io::stderr(), "re-sealed {done} of {total} rows");
            }
        })
        .await?;
    super::print_report(json, &report, |r| {
        let mut text = format!(
            "re-sealed {} rows in {:.1}s; every row is now {}",
            r.resealed,
            r.seconds,
            match &r.key_id {
                Some(id) => format!("under key {id}"),
                None => "in the clear".to_owned(),
            }
        );
        if !r.retired.is_empty() {
            text += &format!(
                "; retired key(s) {} (the store no longer needs them; backups made with \
                 them do, given as --previous-encryption-key-file to restore)",
                r.retired.join(", ")
            );
        }
        if r.remaining > 0 {
            text += &format!(
                "; {} rows are still under an old key (written by a replica without the new \
                 key): run again once every replica has it",
                r.remaining
            );
        }
        text
    });
    Ok(())
}
