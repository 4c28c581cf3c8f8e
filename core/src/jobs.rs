//! Background jobs: work that runs later or for a while (a scheduled deletion of a user's
//! data), persisted in the store so that it survives restarts and runs exactly once across
//! replicas.
//!
//! A job is created `queued` with a time to run at. A [`JobRunner`] (one per server process)
//! claims due jobs with a lease, runs them, reports progress and records the outcome. A
//! replica that dies mid-job leaves an expired lease; another runner claims the job again
//! (every kind of job is idempotent). Each change of a job is published on the engine's
//! event bus, so `jobProgress` subscribers see it wherever the job runs.
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::store::Actor;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Deletes everything stored about the job's user (a scheduled `deleteMyData`).
    DeleteUser,
}

impl JobKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::DeleteUser => "delete_user",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "delete_user" => Ok(JobKind::DeleteUser),
            other => Err(Error::Internal(format!("unknown job kind {other:?}"))),
        }
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

/// Settings of a [`JobRunner`].
#[derive(Debug, Clone)]
pub struct JobRunnerConfig {
    /// This runner's name in leases (unique per process: host and pid, say).
    pub worker: String,
    /// How often to look for due jobs.
    pub poll_interval: Duration,
    /// How long a claim holds before another runner may take the job over; renewed while
    /// the job reports progress.
    pub lease: Duration,
    /// Runs after which a job that keeps failing (or keeps losing its runner) is failed.
    pub max_attempts: u32,
}

impl Default for JobRunnerConfig {
    fn default() -> Self {
        Self {
            worker: format!("pid-{}", std::process::id()),
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            max_attempts: 3,
        }
    }
}

/// Runs due jobs in the background until dropped (or [`JobRunner::stop`]).
pub struct JobRunner {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl JobRunner {
    /// Starts polling for due jobs on the current tokio runtime.
    pub fn start(engine: Engine, config: JobRunnerConfig) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let engine = Arc::new(engine);
            loop {
                // Drain every due job before sleeping again.
                loop {
                    if *stopped.borrow() {
                        return;
                    }
                    match run_one(&engine, &config).await {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "job runner: claiming a job failed");
                            break;
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(config.poll_interval) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops taking jobs and waits for the one running now to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Claims and runs one due job; false when none was due.
async fn run_one(engine: &Engine, config: &JobRunnerConfig) -> Result<bool> {
    let store = engine.store();
    let Some(job) = store.claim_job(&config.worker, config.lease).await? else {
        return Ok(false);
    };
    engine.publish(Event::Job(Box::new(job.clone())));
    let outcome = if job.attempts > config.max_attempts {
        JobOutcome::Failed(format!("gave up after {} attempts", config.max_attempts))
    } else {
        match execute(engine, &job).await {
            Ok(result) => JobOutcome::Succeeded(result),
            Err(e)
                if e.kind() == crate::error::ErrorKind::Internal
                    && job.attempts < config.max_attempts =>
            {
                // Transient (database) trouble: leave the lease to expire and try again.
                tracing::warn!(job = job.id, error = %e, "job failed; will retry");
                return Ok(true);
            }
            Err(e) => JobOutcome::Failed(e.to_string()),
        }
    };
    if let Some(done) = store.finish_job(job.id, &config.worker, outcome).await? {
        engine.publish(Event::Job(Box::new(done)));
    }
    Ok(true)
}

async fn execute(engine: &Engine, job: &Job) -> Result<Value> {
    match job.kind {
        JobKind::DeleteUser => {
            let actor = job
                .params
                .get("actor")
                .and_then(Value::as_str)
                .map(|a| Actor(a.to_owned()))
                .unwrap_or_else(|| Actor::user(&job.user));
            let report = engine.delete_user(&job.user, &actor).await?;
            serde_json::to_value(report).map_err(|e| Error::Internal(e.to_string()))
        }
    }
}
