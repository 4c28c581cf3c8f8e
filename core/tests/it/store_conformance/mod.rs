//! The store conformance suite: every test runs against Postgres + pgvector and against the
//! embedded store, with the same assertions. One file per area; the helpers are here.
mod data;
mod jobs;
mod memories;
mod search;
mod sessions;
mod streamed;
mod validity;

pub use chrono::SubsecRound;
pub use chrono::{DateTime, Duration, TimeZone, Utc};
pub use recall_core::ErrorKind;
pub use recall_core::jobs::{JobKind, JobOutcome, JobStatus, NewJob};
pub use recall_core::types::{Actor, ExportOptions};
pub use recall_core::types::{
    Filter, MemoryKind, MemoryPatch, MessageWrite, Metric, NewMemory, NewMessage, NewSummary,
    PageRequest, Role, SessionPatch, TextQuery, VectorQuery,
};
pub use serde_json::json;

pub use crate::fixtures::{TEST_MODEL, TestStore, emb};

pub fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, day, hour, 0, 0).unwrap()
}

pub fn msg(
    session: &str,
    role: Role,
    content: &str,
    t: DateTime<Utc>,
    tags: &[&str],
) -> NewMessage {
    NewMessage {
        session: session.into(),
        role,
        content: content.into(),
        created_at: Some(t),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        metadata: json!({ "source": "test" }),
    }
}

/// A message stored with one memory holding `vector`.
fn write(m: NewMessage, vector: &[f32]) -> MessageWrite {
    MessageWrite {
        memories: vec![NewMemory::new(
            MemoryKind::Message,
            m.content.clone(),
            emb(vector),
        )],
        message: m,
        answers: None,
    }
}

pub fn page(first: usize) -> PageRequest {
    PageRequest { first, after: None }
}

pub fn query(v: &[f32], k: usize) -> VectorQuery {
    VectorQuery::new(emb(v), k)
}

pub fn cos(a: &[f32], b: &[f32]) -> f32 {
    recall_core::embed::cosine(a, b)
}

/// Memories (one per text) for `user`, in `session`, a day apart from 1 May, with a dummy vector.
async fn add_texts(t: &TestStore, user: &str, session: &str, texts: &[&str]) -> Vec<i64> {
    let writes = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            write(
                msg(session, Role::User, text, at(i as u32 + 1, 9), &[]),
                &[1.0, 0.0, 0.0],
            )
        })
        .collect();
    t.store()
        .append_messages(user, writes)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.memory_ids[0])
        .collect()
}

pub fn delete_job(run_at: DateTime<Utc>) -> NewJob {
    NewJob {
        kind: JobKind::DeleteUser,
        run_at,
        params: json!({ "actor": "user:alice" }),
    }
}
