//! Background jobs: what they are and where they wait. A job is work that runs later or for a
//! while (a scheduled deletion of a user's data), persisted in the store so that it survives
//! restarts and runs exactly once across replicas.
//!
//! A job is created `queued` with a time to run at. A runner (`crate::runner::JobRunner`,
//! one per server process) claims due jobs from the [`JobQueue`] with a lease, runs them,
//! reports progress and records the outcome. A replica that dies mid-job leaves an expired
//! lease; another runner claims the job again (every kind of job is idempotent).
use std::time::Duration;

use crate::error::{Error, Result};
use crate::types::{Actor, Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Deletes everything stored about the job's user (a scheduled `deleteMyData`).
    DeleteUser,
    /// An operator's job: a backup of every user into a directory, keeping the newest few
    /// (`params`: `dir`, `keep`).
    Backup,
    /// An operator's job: database maintenance (`Engine::optimize`).
    Optimize,
    /// An operator's job: re-seal every row with the current data key
    /// (`Engine::rotate_keys`).
    RotateKeys,
    /// An operator's job: give every memory a vector of the configured embedding model and
    /// switch each user to it (`Engine::reembed`; `params`: `batch`, `pause_ms`).
    Reembed,
    /// Has the chat model write deep memory pairs for the job's user (`params`:
    /// [`crate::deep_memory::GenerateOptions`]).
    DeepMemoryGenerate,
    /// Trains the job's user's query adapter (`params`: [`DeepMemoryTrainParams`]).
    DeepMemoryTrain,
    /// Has the chat model write extra keys for the job's user's memories (`params`:
    /// [`crate::memory_keys::KeyOptions`]).
    MemoryKeys,
}

/// Parameters of a [`JobKind::DeepMemoryTrain`] job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeepMemoryTrainParams {
    /// How to train.
    pub options: crate::deep_memory::TrainOptions,
    /// Write pairs for memories that have none first (a retraining after new memories
    /// arrived), when the job runner has a chat model.
    pub generate: Option<crate::deep_memory::GenerateOptions>,
    /// A scheduled retraining: runs only while the user is still due, this many memories
    /// past their adapter's training ([`crate::Engine::deep_memory_is_due`]); another
    /// retraining may have ended between the schedule's look and its queueing.
    pub due_after: Option<u64>,
}

/// The owner of operators' jobs ([`JobKind::is_system`]): the empty string, which is never a
/// user's id (user ids cannot be empty), so no user can see or cancel them.
pub const SYSTEM_USER: &str = "";

impl JobKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::DeleteUser => "delete_user",
            JobKind::Backup => "backup",
            JobKind::Optimize => "optimize",
            JobKind::RotateKeys => "rotate_keys",
            JobKind::Reembed => "reembed",
            JobKind::DeepMemoryGenerate => "deep_memory_generate",
            JobKind::DeepMemoryTrain => "deep_memory_train",
            JobKind::MemoryKeys => "memory_keys",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "delete_user" => Ok(JobKind::DeleteUser),
            "backup" => Ok(JobKind::Backup),
            "optimize" => Ok(JobKind::Optimize),
            "rotate_keys" => Ok(JobKind::RotateKeys),
            "reembed" => Ok(JobKind::Reembed),
            "deep_memory_generate" => Ok(JobKind::DeepMemoryGenerate),
            "deep_memory_train" => Ok(JobKind::DeepMemoryTrain),
            "memory_keys" => Ok(JobKind::MemoryKeys),
            other => Err(Error::Internal(format!("unknown job kind {other:?}"))),
        }
    }

    /// Whether it is an operator's job, owned by [`SYSTEM_USER`] rather than a user.
    pub fn is_system(self) -> bool {
        matches!(
            self,
            JobKind::Backup | JobKind::Optimize | JobKind::RotateKeys | JobKind::Reembed
        )
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its time (or for a runner).
    Queued,
    /// A runner holds it.
    Running,
    /// Done; `result` says what it did.
    Succeeded,
    /// Gave up; `error` says why.
    Failed,
    /// Cancelled before it ran.
    Cancelled,
}

impl JobStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status of a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(Error::Internal(format!("unknown job status {other:?}"))),
        })
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One background job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Store-assigned id.
    pub id: i64,
    /// Whose job.
    pub user: String,
    /// What it does.
    pub kind: JobKind,
    /// Where it is.
    pub status: JobStatus,
    /// Share done, 0 to 1.
    pub progress: f64,
    /// What it is doing now (no message content).
    pub message: Option<String>,
    /// Its parameters.
    pub params: Value,
    /// What it did, once it succeeded.
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// How many times a runner took it.
    pub attempts: u32,
    /// Not before this time.
    pub run_at: DateTime<Utc>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When a runner first took it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final status.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// What it does.
    pub kind: JobKind,
    /// Not before this time.
    pub run_at: DateTime<Utc>,
    /// Its parameters.
    pub params: Value,
}

/// How a run of a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Done, with what it did.
    Succeeded(Value),
    /// Failed for good, with why.
    Failed(String),
}

/// Furthest ahead a job may be scheduled.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);

/// Where jobs wait: a persisted queue shared by every replica of one database. Reached through
/// [`crate::store::MemoryStore::jobs`].
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Queues a background job for the user (operators' jobs for [`SYSTEM_USER`] only);
    /// audited. At most one job of each kind may be pending (queued or running) per user.
    async fn create_job(&self, user: &str, job: NewJob, actor: &Actor) -> Result<Job>;

    /// One of the user's jobs.
    async fn get_job(&self, user: &str, id: i64) -> Result<Option<Job>>;

    /// The user's jobs, newest first.
    async fn list_jobs(&self, user: &str, page: &PageRequest) -> Result<Page<Job>>;

    /// Cancels one of the user's queued jobs; audited. [`Error::NotFound`] if it is not the
    /// user's, [`Error::InvalidInput`] once it has started.
    async fn cancel_job(&self, user: &str, id: i64, actor: &Actor) -> Result<Job>;

    /// For job runners (any user's job): takes the oldest due job (queued and due, or running
    /// with an expired lease) of one of `kinds` (of any kind when empty) and holds it for
    /// `lease`.
    async fn claim_job(
        &self,
        worker: &str,
        lease: Duration,
        kinds: &[JobKind],
    ) -> Result<Option<Job>>;

    /// For job runners: records the progress of a claimed job (share done, 0 to 1, and what
    /// it is doing) and renews its lease for `lease`. `None` if `worker` no longer holds it.
    async fn report_progress(
        &self,
        id: i64,
        worker: &str,
        progress: f64,
        message: Option<String>,
        lease: Duration,
    ) -> Result<Option<Job>>;

    /// For job runners: records how a claimed job ended, with its last progress message when
    /// `message` is given (in the same write, so that a job's last word is never lost to a
    /// failed progress write). `None` if `worker` no longer holds the job (its lease ran out
    /// and another runner took it).
    async fn finish_job(
        &self,
        id: i64,
        worker: &str,
        outcome: JobOutcome,
        message: Option<String>,
    ) -> Result<Option<Job>>;
}
