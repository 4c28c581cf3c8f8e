//! The job runner: claims due background jobs (see [`crate::jobs`]) and runs them through the
//! engine. Each change of a job is published on the engine's event bus, so `jobProgress`
//! subscribers see it wherever the job runs.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::backup::BackupOptions;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::events::{Event, MemoryAction, Received};
use crate::jobs::{Job, JobKind, JobOutcome};
use crate::memory_keys::{KEYED_KINDS, KeyOptions};
use crate::types::Actor;

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
    /// The kinds of job this runner takes (every kind when empty): a process embedding the
    /// engine runs its users' key jobs, and leaves an operator's backups to the server.
    pub kinds: Vec<JobKind>,
}

impl Default for JobRunnerConfig {
    fn default() -> Self {
        Self {
            worker: format!("pid-{}", std::process::id()),
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            max_attempts: 3,
            kinds: Vec::new(),
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

/// Every `every`, queues the key job ([`Engine::queue_memory_keys_job`] with `options`) of
/// each user with keys on who wrote a memory since the last time (their new memories get
/// keys): the engine's events (this process's and, over Postgres, other replicas') say who; a
/// user who wrote nothing costs nothing. The first time, and after missing events (a burst
/// the watch fell behind on), every user with keys on is queued: writes made while nothing
/// listened are found then or with the user's next write (a job keys all that lack keys). The
/// queue keeps one pending per user, so replicas that look at the same time queue it once; a
/// job with nothing to do ends at once. A [`JobRunner`] runs the jobs. Runs on the current
/// tokio runtime until the returned task is aborted.
pub fn schedule_memory_keys(
    engine: Engine,
    every: Duration,
    options: KeyOptions,
) -> tokio::task::JoinHandle<()> {
    let mut watch = engine.events().watch_all();
    let every = every.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut all = true;
        let mut wrote = BTreeSet::new();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = watch.next() => match received {
                    Some(Received::Event(e)) => {
                        if let Event::Memory(m) = *e
                            && m.action != MemoryAction::Deleted
                            && m.kind.is_some_and(|k| KEYED_KINDS.contains(&k))
                        {
                            wrote.insert(m.user);
                        }
                    }
                    Some(Received::Lagged(_)) => all = true,
                    None => return,
                },
                _ = tick.tick() => {
                    let users = if std::mem::take(&mut all) {
                        wrote.clear();
                        match engine.memory_keys_users().await {
                            Ok(users) => users,
                            Err(e) => {
                                tracing::warn!(error = %e, "looking for users with keys on failed");
                                all = true;
                                continue;
                            }
                        }
                    } else {
                        std::mem::take(&mut wrote).into_iter().collect()
                    };
                    for user in users {
                        match engine
                            .queue_memory_keys_job(&user, &options, &Actor("schedule".into()))
                            .await
                        {
                            Ok(job) => tracing::debug!(job = job.id, "key job queued"),
                            // Keys off for the user, or their job already pending.
                            Err(e) if e.kind() == ErrorKind::InvalidInput => {}
                            Err(e) => tracing::warn!(error = %e, "queueing a key job failed"),
                        }
                    }
                }
            }
        }
    })
}

/// Memory keys in a process that embeds the engine (the Python and Node packages): a
/// [`JobRunner`] that takes key jobs only (an operator's backups and re-embedding stay with the
/// server, when one shares the store) and [`schedule_memory_keys`] queueing them every
/// `every` for the users who wrote, with `options`. Both stop when it is dropped.
pub struct KeyWriter {
    runner: Option<JobRunner>,
    schedule: tokio::task::JoinHandle<()>,
}

impl KeyWriter {
    /// Starts both on the current tokio runtime; `worker` names the runner in job leases.
    pub fn start(engine: Engine, every: Duration, options: KeyOptions, worker: String) -> Self {
        let schedule = schedule_memory_keys(engine.clone(), every, options);
        let runner = JobRunner::start(
            engine,
            JobRunnerConfig {
                worker,
                kinds: vec![JobKind::MemoryKeys],
                ..Default::default()
            },
        );
        Self {
            runner: Some(runner),
            schedule,
        }
    }

    /// Stops both, waiting for a key job under way to finish (dropping it stops them
    /// without waiting).
    pub async fn stop(mut self) {
        self.schedule.abort();
        if let Some(runner) = self.runner.take() {
            runner.stop().await;
        }
    }
}

impl Drop for KeyWriter {
    fn drop(&mut self) {
        self.schedule.abort();
    }
}

/// Claims and runs one due job; false when none was due.
async fn run_one(engine: &Engine, config: &JobRunnerConfig) -> Result<bool> {
    let queue = engine.job_queue();
    let Some(job) = queue
        .claim_job(&config.worker, config.lease, &config.kinds)
        .await?
    else {
        return Ok(false);
    };
    engine.publish(Event::Job(Box::new(job.clone())));
    let mut last_word = None;
    let outcome = if job.attempts > config.max_attempts {
        JobOutcome::Failed(format!("gave up after {} attempts", config.max_attempts))
    } else {
        // The job reports progress into a watch; it is written to the queue (renewing the
        // lease) and published at most every PROGRESS_EVERY.
        let (progress, seen) = watch::channel((0.0f64, None::<String>));
        let work = unpanicked(execute(engine, &job, &progress));
        let renew = |share: f64, message: Option<String>| {
            queue.report_progress(job.id, &config.worker, share, message, config.lease)
        };
        let Some((result, last)) = keep_lease(work, seen, renew, config.lease, |j| {
            engine.publish(Event::Job(Box::new(j)))
        })
        .await
        else {
            // Another runner holds the job now (this one was too slow to renew), or it is
            // gone: this run's work was dropped, and its end is not this runner's to record.
            tracing::warn!(job = job.id, "job lease lost; its work here was stopped");
            return Ok(true);
        };
        last_word = last;
        match result {
            Ok(Ok(result)) => JobOutcome::Succeeded(result),
            // A panic is a bug, not trouble that passes: failed at once, not retried.
            Err(panicked) => {
                tracing::error!(job = job.id, error = %panicked, "job panicked");
                JobOutcome::Failed(panicked)
            }
            Ok(Err(e)) if e.kind() == ErrorKind::Internal && job.attempts < config.max_attempts => {
                // Transient (database) trouble: leave the lease to expire and try again.
                tracing::warn!(job = job.id, error = %e, "job failed; will retry");
                return Ok(true);
            }
            Ok(Err(e)) => JobOutcome::Failed(e.to_string()),
        }
    };
    if let Some(done) = queue
        .finish_job(job.id, &config.worker, outcome, last_word)
        .await?
    {
        engine.publish(Event::Job(Box::new(done)));
    }
    Ok(true)
}

/// Runs `work`, turning a panic inside it into `Err` with the panic's message: a job that
/// panics fails, and the runner (and the lease's renewals) go on; unwound, the panic would
/// end the runner's task, and no job would run in this process again.
async fn unpanicked<W, T>(work: W) -> std::result::Result<T, String>
where
    W: std::future::Future<Output = T>,
{
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|payload| {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            format!("the job panicked: {what}")
        })
}

/// How often a running job's progress is recorded.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Runs `work` while holding its lease: what it reports into `seen` is written with `renew`
/// (which renews the lease) at most every [`PROGRESS_EVERY`] when it changed, and the lease is
/// renewed at least every third of `lease` when it did not (a job may work a long time
/// without a word: a reindex, one large user's backup), so that no other runner takes it
/// while it runs. Each recorded state goes to `published`. Returns the work's result with the
/// last message not yet recorded; `None` when a renewal found the lease lost (the job was
/// taken by another runner or is gone): the work is dropped.
async fn keep_lease<W, T, R, F>(
    work: W,
    mut seen: watch::Receiver<(f64, Option<String>)>,
    renew: R,
    lease: Duration,
    published: impl Fn(Job),
) -> Option<(T, Option<String>)>
where
    W: std::future::Future<Output = T>,
    R: Fn(f64, Option<String>) -> F,
    F: std::future::Future<Output = Result<Option<Job>>>,
{
    tokio::pin!(work);
    let renew_every = (lease / 3).max(PROGRESS_EVERY);
    let mut renewed = tokio::time::Instant::now();
    // The latest message whose progress write failed, until one succeeds.
    let mut unrecorded = None::<String>;
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tokio::time::sleep(PROGRESS_EVERY) => {
                let changed = seen.has_changed().unwrap_or(false);
                if !changed && renewed.elapsed() < renew_every {
                    continue;
                }
                // A renewal without news writes the same state again.
                let (share, message) = seen.borrow_and_update().clone();
                match renew(share, message.clone()).await {
                    Ok(Some(j)) => {
                        renewed = tokio::time::Instant::now();
                        unrecorded = None;
                        if changed {
                            published(j);
                        }
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!(error = %e, "job progress not recorded");
                        if changed {
                            unrecorded = message.or(unrecorded);
                        }
                    }
                }
            }
        }
    };
    // What the job said last and has not been recorded is written with its outcome (a job
    // quicker than PROGRESS_EVERY too, or one whose last progress write failed).
    let last = if seen.has_changed().unwrap_or(false) {
        seen.borrow_and_update().1.clone().or(unrecorded)
    } else {
        unrecorded
    };
    Some((result, last))
}

type Progress = watch::Sender<(f64, Option<String>)>;

/// Records `done` of `total` (a share of 1 when there is nothing to do) with a message.
fn tell(progress: &Progress, done: u64, total: u64, message: String) {
    let share = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let _ = progress.send((share, Some(message)));
}

fn json<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(e.to_string()))
}

async fn execute(engine: &Engine, job: &Job, progress: &Progress) -> Result<Value> {
    match job.kind {
        JobKind::Backup => {
            let dir = PathBuf::from(job.params.get("dir").and_then(Value::as_str).unwrap_or(""));
            let keep = job
                .params
                .get("keep")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let path = dir.join(crate::backup::scheduled_name(chrono::Utc::now()));
            let report = engine
                .backup_with_progress(&path, &BackupOptions::default(), &mut |done, total| {
                    tell(
                        progress,
                        done,
                        total,
                        format!("user {} of {total}", done + 1),
                    );
                })
                .await?;
            progress.send_replace((1.0, Some("pruning old backups".into())));
            let pruned = crate::backup::prune(&dir, keep as usize)?;
            let mut out = json(&report)?;
            out["pruned"] = pruned
                .iter()
                .map(|p| Value::from(p.display().to_string()))
                .collect();
            Ok(out)
        }
        JobKind::Optimize => {
            progress.send_replace((0.0, Some("optimizing".into())));
            json(&engine.optimize().await?)
        }
        JobKind::Reembed => {
            let defaults = crate::engine::ReembedOptions::default();
            let options = crate::engine::ReembedOptions {
                batch: job
                    .params
                    .get("batch")
                    .and_then(Value::as_u64)
                    .map_or(defaults.batch, |b| b as usize),
                pause: job
                    .params
                    .get("pause_ms")
                    .and_then(Value::as_u64)
                    .map_or(defaults.pause, std::time::Duration::from_millis),
                ..defaults
            };
            let report = engine
                .reembed(&options, &mut |done, total| {
                    tell(progress, done, total, format!("{done} of {total} memories"));
                })
                .await?;
            json(&report)
        }
        JobKind::RotateKeys => {
            let report = engine
                .rotate_keys(&mut |done, total| {
                    tell(progress, done, total, format!("{done} of {total} rows"));
                })
                .await?;
            json(&report)
        }
        JobKind::DeepMemoryGenerate => {
            let options: crate::deep_memory::GenerateOptions =
                serde_json::from_value(job.params.clone())
                    .map_err(|e| Error::invalid(format!("job parameters: {e}")))?;
            let report = engine
                .deep_memory_generate(&job.user, &options, &mut |done, total, pairs| {
                    tell(
                        progress,
                        done,
                        total,
                        format!("{done} of {total} memories, {pairs} pairs"),
                    );
                })
                .await?;
            json(&report)
        }
        JobKind::MemoryKeys => {
            let options: crate::memory_keys::KeyOptions =
                serde_json::from_value(job.params.clone())
                    .map_err(|e| Error::invalid(format!("job parameters: {e}")))?;
            let report = engine
                .write_memory_keys(&job.user, &options, &mut |done, total, keys| {
                    tell(
                        progress,
                        done,
                        total,
                        format!("{done} of {total} memories, {keys} keys"),
                    );
                })
                .await?;
            json(&report)
        }
        JobKind::DeepMemoryTrain => {
            let params: crate::jobs::DeepMemoryTrainParams =
                serde_json::from_value(job.params.clone())
                    .map_err(|e| Error::invalid(format!("job parameters: {e}")))?;
            let mut out = serde_json::Map::new();
            if let Some(n) = params.due_after
                && !engine.deep_memory_is_due(&job.user, n).await?
            {
                out.insert(
                    "skipped".into(),
                    Value::from("no longer due: retrained since it was queued"),
                );
                return Ok(Value::Object(out));
            }
            if let (Some(generate), true) = (&params.generate, engine.has_llm()) {
                // A retraining asks about the memories stored since the last training only
                // (older ones were asked then, whatever the model made of them).
                let mut generate = generate.clone();
                if generate.since.is_none() {
                    generate.since = engine.deep_memory_status(&job.user).await?.trained_at;
                }
                let report = engine
                    .deep_memory_generate(&job.user, &generate, &mut |done, total, pairs| {
                        tell(
                            progress,
                            done,
                            total,
                            format!("writing pairs: {done} of {total} memories, {pairs} pairs"),
                        );
                    })
                    .await?;
                out.insert("generated".into(), json(&report)?);
            }
            let stored = engine
                .deep_memory_train(&job.user, &params.options, &mut |p| match p {
                    crate::engine::TrainProgress::Embedding { done, total } => tell(
                        progress,
                        0,
                        1,
                        format!("embedding questions: {done} of {total}"),
                    ),
                    crate::engine::TrainProgress::Epoch {
                        epoch,
                        epochs,
                        loss,
                    } => tell(
                        progress,
                        epoch as u64,
                        epochs as u64,
                        format!("epoch {epoch} of {epochs}, loss {loss:.4}"),
                    ),
                    crate::engine::TrainProgress::Evaluated(e) => {
                        let _ = progress.send((
                            1.0,
                            Some(format!(
                                "held-out recall@10 {:.3} -> {:.3}, MRR {:.3} -> {:.3} ({} pairs)",
                                e.before.recall_at_10,
                                e.after.recall_at_10,
                                e.before.mrr,
                                e.after.mrr,
                                e.pairs
                            )),
                        ));
                    }
                })
                .await?;
            out.insert("version".into(), Value::from(stored.version));
            out.insert("enabled".into(), Value::from(stored.enabled));
            out.insert("report".into(), json(&stored.report)?);
            Ok(Value::Object(out))
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::jobs::JobStatus;

    fn job(progress: f64, message: Option<String>) -> Job {
        Job {
            id: 1,
            user: "u".into(),
            kind: JobKind::Optimize,
            status: JobStatus::Running,
            progress,
            message,
            params: Value::Null,
            result: None,
            error: None,
            attempts: 1,
            run_at: Utc::now(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }

    /// A job that says nothing for longer than its lease keeps the lease: it is renewed every
    /// third of it, writing the same state again; what it said is published once.
    #[tokio::test]
    async fn a_silent_job_keeps_its_lease() {
        let (tx, seen) = watch::channel((0.0, None::<String>));
        let writes = Mutex::new(Vec::new());
        let published = Mutex::new(0);
        let work = async {
            tx.send((0.5, Some("half".into()))).unwrap();
            tokio::time::sleep(Duration::from_millis(1600)).await;
            Ok::<_, Error>(json!("done"))
        };
        let renew = |share: f64, message: Option<String>| {
            writes.lock().unwrap().push((share, message.clone()));
            std::future::ready(Ok(Some(job(share, message))))
        };
        let out = keep_lease(work, seen, renew, Duration::from_millis(900), |_| {
            *published.lock().unwrap() += 1
        })
        .await;
        let (result, last) = out.expect("the lease held");
        assert_eq!(result.unwrap(), json!("done"));
        assert_eq!(last, None, "everything said was recorded");
        let writes = writes.into_inner().unwrap();
        // The news once, then renewals (every 300 ms at the next tick) of the same state
        // over the lease's worth of silence and more.
        assert!(writes.len() >= 3, "{writes:?}");
        assert!(
            writes.iter().all(|w| *w == (0.5, Some("half".into()))),
            "{writes:?}"
        );
        assert_eq!(*published.lock().unwrap(), 1);
    }

    /// When a renewal finds the lease gone (another runner took the job), the work stops.
    #[tokio::test]
    async fn a_lost_lease_stops_the_work() {
        let (_tx, seen) = watch::channel((0.0, None::<String>));
        let started = tokio::time::Instant::now();
        let work = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, Error>(json!("too late"))
        };
        let renew = |_: f64, _: Option<String>| std::future::ready(Ok(None));
        let out = keep_lease(work, seen, renew, Duration::from_millis(600), |_| {}).await;
        assert!(out.is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A job that panics part-way fails with the panic's message; its runner is not unwound
    /// (the test's task goes on past it), and what the job said before is still recorded.
    #[tokio::test]
    async fn a_panicking_job_fails_and_its_runner_goes_on() {
        let (tx, seen) = watch::channel((0.0, None::<String>));
        let work = async {
            tx.send((0.25, Some("a quarter".into()))).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tx.is_closed() {
                return Ok(json!("unreachable"));
            }
            panic!("index out of bounds: the len is 3 but the index is 7");
        };
        let renew =
            |share: f64, message: Option<String>| std::future::ready(Ok(Some(job(share, message))));
        let out = keep_lease(
            unpanicked::<_, Result<Value>>(work),
            seen,
            renew,
            Duration::from_secs(60),
            |_| {},
        )
        .await;
        let (result, last) = out.expect("the lease held");
        let error = result.expect_err("the panic is the job's failure");
        assert!(
            error.starts_with("the job panicked: index out of bounds"),
            "{error}"
        );
        assert_eq!(last.as_deref(), Some("a quarter"));
        // A panic with a formatted message (a String payload) is read too.
        let n = 7;
        let formatted = unpanicked(async move {
            if n > 3 {
                panic!("no row {n}");
            }
        })
        .await;
        assert_eq!(formatted, Err("the job panicked: no row 7".into()));
    }
}
