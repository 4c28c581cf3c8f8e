//! The job queue on the store's database: jobs claimed with a lease (`FOR UPDATE SKIP LOCKED`
//! on Postgres), so that each runs once across replicas.
use std::time::Duration;

use super::*;
use crate::jobs::{Job, JobKind, JobOutcome, JobStatus, NewJob, SYSTEM_USER};
use crate::store::entity::job;

/// The [`JobQueue`] of both SQL backends.
pub(crate) struct SqlJobQueue {
    pub db: DatabaseConnection,
    pub limits: Limits,
}

fn opt_micros(t: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    t.map(from_micros).transpose()
}

fn job_to_api(m: job::Model) -> Result<Job> {
    Ok(Job {
        id: m.id,
        user: m.user_external_id,
        kind: JobKind::parse(&m.kind)?,
        status: JobStatus::parse(&m.status)?,
        progress: m.progress,
        message: m.message,
        params: m.params,
        result: m.result,
        error: m.error,
        attempts: m.attempts.max(0) as u32,
        run_at: from_micros(m.run_at_us)?,
        created_at: from_micros(m.created_at_us)?,
        updated_at: from_micros(m.updated_at_us)?,
        started_at: opt_micros(m.started_at_us)?,
        finished_at: opt_micros(m.finished_at_us)?,
    })
}

impl SqlJobQueue {
    /// A user's id, or [`SYSTEM_USER`] for operators' jobs.
    fn check_owner(&self, user: &str) -> Result<()> {
        if user == SYSTEM_USER {
            return Ok(());
        }
        self.limits.check_user_id(user)
    }
}

/// The job, if `worker` holds it (running under its lease); `None` when another runner took
/// it over after this one's lease ran out, or it is gone. The row stays locked (Postgres) to
/// the end of `txn`, so that no runner takes it over between this read and the write.
async fn held_by(txn: &DatabaseTransaction, id: i64, worker: &str) -> Result<Option<job::Model>> {
    Ok(job::Entity::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?
        .filter(|row| {
            row.status == JobStatus::Running.as_str() && row.locked_by.as_deref() == Some(worker)
        }))
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Longest error (or progress message) text kept on a job.
const MAX_JOB_ERROR: usize = 2000;

#[async_trait]
impl JobQueue for SqlJobQueue {
    async fn create_job(&self, user: &str, new: NewJob, actor: &Actor) -> Result<Job> {
        if new.kind.is_system() != (user == SYSTEM_USER) {
            return Err(Error::invalid(format!(
                "{} jobs belong to {}",
                new.kind.as_str(),
                if new.kind.is_system() {
                    "the operators"
                } else {
                    "a user"
                }
            )));
        }
        if !new.kind.is_system() {
            self.limits.check_user_id(user)?;
        }
        if !new.params.is_object() {
            return Err(Error::invalid("job parameters must be a JSON object"));
        }
        let t = micros(now());
        let txn = begin_write(&self.db).await?;
        if let Some(pending) = job::Entity::find()
            .filter(job::Column::UserExternalId.eq(user))
            .filter(job::Column::Kind.eq(new.kind.as_str()))
            .filter(
                job::Column::Status
                    .is_in([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]),
            )
            .one(&txn)
            .await?
        {
            return Err(Error::invalid(format!(
                "a {} job is already pending (job {}); cancel it first",
                new.kind.as_str(),
                pending.id
            )));
        }
        let inserted = job::Entity::insert(job::ActiveModel {
            id: NotSet,
            user_external_id: Set(user.to_owned()),
            kind: Set(new.kind.as_str().to_owned()),
            status: Set(JobStatus::Queued.as_str().to_owned()),
            progress: Set(0.0),
            message: Set(None),
            params: Set(new.params),
            result: Set(None),
            error: Set(None),
            attempts: Set(0),
            run_at_us: Set(micros(new.run_at)),
            locked_by: Set(None),
            locked_until_us: Set(None),
            created_at_us: Set(t),
            updated_at_us: Set(t),
            started_at_us: Set(None),
            finished_at_us: Set(None),
        })
        .exec_with_returning(&txn)
        .await;
        let row = match inserted {
            Ok(row) => row,
            // A concurrent request scheduled the same kind first (the partial unique index).
            Err(e)
                if matches!(
                    e.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) =>
            {
                return Err(Error::invalid(format!(
                    "a {} job is already pending; cancel it first",
                    new.kind.as_str()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        audit(
            &txn,
            user,
            actor,
            "schedule_job",
            serde_json::json!({ "job": row.id, "kind": row.kind, "run_at_us": row.run_at_us }),
        )
        .await?;
        txn.commit().await?;
        job_to_api(row)
    }

    async fn get_job(&self, user: &str, id: i64) -> Result<Option<Job>> {
        self.check_owner(user)?;
        job::Entity::find_by_id(id)
            .filter(job::Column::UserExternalId.eq(user))
            .one(&self.db)
            .await?
            .map(job_to_api)
            .transpose()
    }

    async fn list_jobs(&self, user: &str, page: &PageRequest) -> Result<Page<Job>> {
        self.check_owner(user)?;
        let after = page_start(&self.limits, page)?;
        let keyset = Keyset {
            time: None,
            id: job::Column::Id,
            descending: true,
        };
        let q = job::Entity::find().filter(job::Column::UserExternalId.eq(user));
        keyset_page(&self.db, q, page.first, after, keyset, |j| ListCursor {
            t: 0,
            i: j.id,
        })
        .await?
        .try_map(job_to_api)
    }

    async fn cancel_job(&self, user: &str, id: i64, actor: &Actor) -> Result<Job> {
        self.check_owner(user)?;
        let txn = begin_write(&self.db).await?;
        // Locked (Postgres) to the end of the transaction: a runner claiming the job waits
        // for the cancellation, or the cancellation sees it running and refuses.
        let Some(row) = job::Entity::find_by_id(id)
            .filter(job::Column::UserExternalId.eq(user))
            .lock_exclusive()
            .one(&txn)
            .await?
        else {
            return Err(Error::not_found("job", id.to_string()));
        };
        if row.status != JobStatus::Queued.as_str() {
            return Err(Error::invalid(format!(
                "job {id} is {}; only a queued job can be cancelled",
                row.status
            )));
        }
        let t = micros(now());
        let mut change: job::ActiveModel = row.into();
        change.status = Set(JobStatus::Cancelled.as_str().to_owned());
        change.updated_at_us = Set(t);
        change.finished_at_us = Set(Some(t));
        let row = sea_orm::ActiveModelTrait::update(change, &txn).await?;
        audit(
            &txn,
            user,
            actor,
            "cancel_job",
            serde_json::json!({ "job": row.id, "kind": row.kind }),
        )
        .await?;
        txn.commit().await?;
        job_to_api(row)
    }

    async fn claim_job(
        &self,
        worker: &str,
        lease: Duration,
        kinds: &[JobKind],
    ) -> Result<Option<Job>> {
        let t = micros(now());
        // The kinds' names are constants (`JobKind::as_str`), never input.
        let of_kinds = if kinds.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
            format!(" AND kind IN ({})", names.join(", "))
        };
        let backend = self.db.get_database_backend();
        // Postgres: replicas claim concurrently; SKIP LOCKED hands each a different job.
        // SQLite: one process, and the write transaction is exclusive.
        let lock = if backend == DbBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let txn = begin_write(&self.db).await?;
        let due = txn
            .query_one_raw(stmt(
                backend,
                &format!(
                    "SELECT id FROM jobs WHERE ((status = 'queued' AND run_at_us <= $1) \
                     OR (status = 'running' AND locked_until_us < $1)){of_kinds} \
                     ORDER BY run_at_us, id LIMIT 1{lock}"
                ),
                vec![t.into()],
            ))
            .await?;
        let Some(due) = due else {
            txn.commit().await?;
            return Ok(None);
        };
        let id: i64 = due.try_get_by_index(0)?;
        let row = job::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or_else(|| internal("claimed job vanished"))?;
        let (attempts, started) = (row.attempts, row.started_at_us);
        let mut change: job::ActiveModel = row.into();
        change.status = Set(JobStatus::Running.as_str().to_owned());
        change.locked_by = Set(Some(worker.to_owned()));
        change.locked_until_us = Set(Some(t + lease.as_micros() as i64));
        change.attempts = Set(attempts + 1);
        change.started_at_us = Set(started.or(Some(t)));
        change.updated_at_us = Set(t);
        let row = sea_orm::ActiveModelTrait::update(change, &txn).await?;
        txn.commit().await?;
        job_to_api(row).map(Some)
    }

    async fn report_progress(
        &self,
        id: i64,
        worker: &str,
        progress: f64,
        message: Option<String>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        let txn = begin_write(&self.db).await?;
        let Some(row) = held_by(&txn, id, worker).await? else {
            txn.commit().await?;
            return Ok(None);
        };
        let t = now();
        let mut change: job::ActiveModel = row.into();
        change.progress = Set(progress.clamp(0.0, 1.0));
        change.message = Set(message.map(|m| clip(m, MAX_JOB_ERROR)));
        change.updated_at_us = Set(micros(t));
        change.locked_until_us = Set(Some(
            micros(t) + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2),
        ));
        let row = sea_orm::ActiveModelTrait::update(change, &txn).await?;
        txn.commit().await?;
        job_to_api(row).map(Some)
    }

    async fn finish_job(
        &self,
        id: i64,
        worker: &str,
        outcome: JobOutcome,
        message: Option<String>,
    ) -> Result<Option<Job>> {
        let txn = begin_write(&self.db).await?;
        let Some(row) = held_by(&txn, id, worker).await? else {
            txn.commit().await?;
            return Ok(None);
        };
        let t = micros(now());
        let mut change: job::ActiveModel = row.into();
        match outcome {
            JobOutcome::Succeeded(result) => {
                change.status = Set(JobStatus::Succeeded.as_str().to_owned());
                change.progress = Set(1.0);
                change.result = Set(Some(result));
            }
            JobOutcome::Failed(error) => {
                change.status = Set(JobStatus::Failed.as_str().to_owned());
                change.error = Set(Some(clip(error, MAX_JOB_ERROR)));
            }
        }
        if let Some(m) = message {
            change.message = Set(Some(clip(m, MAX_JOB_ERROR)));
        }
        change.locked_by = Set(None);
        change.locked_until_us = Set(None);
        change.updated_at_us = Set(t);
        change.finished_at_us = Set(Some(t));
        let row = sea_orm::ActiveModelTrait::update(change, &txn).await?;
        txn.commit().await?;
        job_to_api(row).map(Some)
    }
}
