//! Background jobs of a user: scheduled, watched, cancelled.
use super::*;
use crate::error::Error;
use crate::jobs::{self, Job, JobKind, NewJob, SYSTEM_USER};
use crate::types::{Actor, Page, PageRequest};

impl Engine {
    /// Schedules the deletion of everything of the user at `at` (a time in the past means
    /// as soon as a job runner looks; at most [`jobs::MAX_SCHEDULE_AHEAD`] ahead). The
    /// returned job can be watched and, until it starts, cancelled. One scheduled deletion
    /// per user at a time.
    pub async fn schedule_delete_user(
        &self,
        user: &str,
        at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Job> {
        let ahead = at - Utc::now();
        if ahead.num_seconds() > jobs::MAX_SCHEDULE_AHEAD.as_secs() as i64 {
            return Err(Error::invalid(format!(
                "a deletion can be scheduled at most {} days ahead",
                jobs::MAX_SCHEDULE_AHEAD.as_secs() / 86_400
            )));
        }
        let job = self
            .jobs
            .create_job(
                user,
                NewJob {
                    kind: JobKind::DeleteUser,
                    run_at: at,
                    params: json!({ "actor": actor.0 }),
                },
                actor,
            )
            .await?;
        self.publish(Event::Job(Box::new(job.clone())));
        Ok(job)
    }

    /// Queues an operator's job ([`JobKind::is_system`]: a backup into a directory, keeping
    /// the newest `keep`; maintenance) to run at `at`. One of each kind pending at a time:
    /// replicas that schedule the same job find it pending ([`crate::Error::InvalidInput`]).
    pub async fn schedule_system_job(
        &self,
        kind: JobKind,
        at: DateTime<Utc>,
        params: Value,
        actor: &Actor,
    ) -> Result<Job> {
        if kind == JobKind::Backup {
            let dir = params.get("dir").and_then(Value::as_str).unwrap_or("");
            if dir.is_empty() {
                return Err(Error::invalid(
                    "a backup job needs a directory (backup.dir)",
                ));
            }
            if params.get("keep").and_then(Value::as_u64).unwrap_or(0) == 0 {
                return Err(Error::invalid("a backup job must keep at least one file"));
            }
        }
        let job = self
            .jobs
            .create_job(
                SYSTEM_USER,
                NewJob {
                    kind,
                    run_at: at,
                    params,
                },
                actor,
            )
            .await?;
        self.publish(Event::Job(Box::new(job.clone())));
        Ok(job)
    }

    /// Queues a deep memory job for the user to run now: writing pairs
    /// ([`JobKind::DeepMemoryGenerate`], `params` a [`crate::deep_memory::GenerateOptions`])
    /// or training ([`JobKind::DeepMemoryTrain`], `params` a
    /// [`jobs::DeepMemoryTrainParams`]). One of each kind pending per user.
    pub async fn queue_deep_memory_job(
        &self,
        user: &str,
        kind: JobKind,
        params: Value,
        actor: &Actor,
    ) -> Result<Job> {
        self.limits().check_user_id(user)?;
        let bad = |e: serde_json::Error| Error::invalid(format!("deep memory job: {e}"));
        match kind {
            JobKind::DeepMemoryGenerate => {
                serde_json::from_value::<crate::deep_memory::GenerateOptions>(params.clone())
                    .map_err(bad)?
                    .validate()?;
            }
            JobKind::DeepMemoryTrain => {
                let p: jobs::DeepMemoryTrainParams =
                    serde_json::from_value(params.clone()).map_err(bad)?;
                p.options.validate()?;
                if let Some(g) = &p.generate {
                    g.validate()?;
                }
            }
            other => {
                return Err(Error::invalid(format!(
                    "{} is not a deep memory job",
                    other.as_str()
                )));
            }
        }
        let job = self
            .jobs
            .create_job(
                user,
                NewJob {
                    kind,
                    run_at: Utc::now(),
                    params,
                },
                actor,
            )
            .await?;
        self.publish(Event::Job(Box::new(job.clone())));
        Ok(job)
    }

    /// One of the operators' jobs.
    pub async fn system_job(&self, id: i64) -> Result<Option<Job>> {
        self.jobs.get_job(SYSTEM_USER, id).await
    }

    /// One of the user's jobs.
    /// (A user id is never empty: the operators' jobs are [`Engine::system_job`]'s.)
    pub async fn job(&self, user: &str, id: i64) -> Result<Option<Job>> {
        self.limits().check_user_id(user)?;
        self.jobs.get_job(user, id).await
    }

    /// The user's jobs, newest first.
    pub async fn jobs(&self, user: &str, page: &PageRequest) -> Result<Page<Job>> {
        self.limits().check_user_id(user)?;
        self.jobs.list_jobs(user, page).await
    }

    /// Cancels one of the user's queued jobs.
    pub async fn cancel_job(&self, user: &str, id: i64, actor: &Actor) -> Result<Job> {
        self.limits().check_user_id(user)?;
        let job = self.jobs.cancel_job(user, id, actor).await?;
        self.publish(Event::Job(Box::new(job.clone())));
        Ok(job)
    }
}
