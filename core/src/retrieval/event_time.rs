//! The times a memory's text names ("last month", said on 3 August, is July), resolved at
//! ingest and stored in its metadata, and whether a memory belongs to the windows of time a
//! query names.
use chrono::{DateTime, Utc};

use crate::types::Memory;
use crate::when::TimeWindow;

/// The metadata key of the windows of time a memory's text names, resolved at ingest against
/// the time it was written ([`crate::when::mentions`]): `[{"since": …, "until": …}]`.
pub const EVENT_WINDOWS_KEY: &str = "event_windows";

/// Whether a memory was written in one of `windows`, or names a time that lies mostly inside
/// one ("last week", resolved at ingest: [`EVENT_WINDOWS_KEY`]). "Mostly" is at least half
/// of the named span: "last month" is not an answer to "on 31 July", but "yesterday" is.
pub fn in_windows(memory: &Memory, windows: &[TimeWindow]) -> bool {
    if windows.is_empty() {
        return false;
    }
    if windows.iter().any(|w| w.contains(memory.created_at)) {
        return true;
    }
    event_windows(memory).iter().any(|e| {
        let span = (e.until - e.since).num_seconds();
        span > 0
            && windows.iter().any(|w| {
                let inside = (e.until.min(w.until) - e.since.max(w.since)).num_seconds();
                2 * inside >= span
            })
    })
}

/// The event windows stored on a memory (none when absent or malformed).
pub fn event_windows(memory: &Memory) -> Vec<TimeWindow> {
    memory
        .metadata
        .get(EVENT_WINDOWS_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Sets (or, when the text names no time, removes) a memory's event windows in `metadata`,
/// reading `text` as written at `said_at`.
pub fn set_event_windows(metadata: &mut serde_json::Value, text: &str, said_at: DateTime<Utc>) {
    let Some(map) = metadata.as_object_mut() else {
        return;
    };
    let windows = crate::when::mentions(text, said_at);
    if windows.is_empty() {
        map.remove(EVENT_WINDOWS_KEY);
    } else if let Ok(v) = serde_json::to_value(windows) {
        map.insert(EVENT_WINDOWS_KEY.to_owned(), v);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::types::MemoryKind;

    fn memory(at: DateTime<Utc>) -> Memory {
        Memory {
            id: 1,
            kind: MemoryKind::Message,
            content: String::new(),
            session: None,
            message_id: None,
            summary_id: None,
            role: None,
            tags: vec![],
            metadata: json!({ "kept": true }),
            importance: 0.5,
            emotion: None,
            created_at: at,
            updated_at: at,
            expires_at: None,
            supersedes: None,
            superseded_by: None,
            superseded_at: None,
            key_for: None,
        }
    }

    #[test]
    fn a_named_time_counts_when_it_lies_mostly_inside_the_window() {
        let day =
            |m: u32, d: u32| chrono::TimeZone::with_ymd_and_hms(&Utc, 2023, m, d, 0, 0, 0).unwrap();
        let span = |a, b| TimeWindow { since: a, until: b };
        // Said on 3 August: "last month" (July) and "yesterday" (2 August).
        let mut said = memory(day(8, 3));
        said.content = "We moved last month, and yesterday the sofa came".into();
        set_event_windows(&mut said.metadata, &said.content, said.created_at);
        assert_eq!(
            event_windows(&said),
            vec![span(day(7, 1), day(8, 1)), span(day(8, 2), day(8, 3))]
        );
        assert_eq!(said.metadata["kept"], true);
        // July, or a day around 2 August: inside. A day in July is a sliver of a month: not.
        assert!(in_windows(&said, &[span(day(7, 1), day(8, 1))]));
        assert!(in_windows(&said, &[span(day(8, 1), day(8, 4))]));
        assert!(!in_windows(&said, &[span(day(7, 30), day(8, 2))]));
        assert!(!in_windows(&said, &[span(day(5, 1), day(6, 1))]));
        assert!(!in_windows(&said, &[]));
        // Text without a time removes the key; a malformed key counts for nothing.
        set_event_windows(&mut said.metadata, "We moved.", said.created_at);
        assert!(said.metadata.get(EVENT_WINDOWS_KEY).is_none());
        said.metadata[EVENT_WINDOWS_KEY] = json!("July");
        assert!(event_windows(&said).is_empty());
    }
}
