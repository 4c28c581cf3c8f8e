//! Background jobs through the engine (scheduled deletion run by a job runner), and the
//! fan-out of events between two engines sharing one Postgres database (two replicas).
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use recall_core::events::{Event, Received, Subscription};
use recall_core::jobs::{Job, JobKind, JobStatus};
use recall_core::runner::{JobRunner, JobRunnerConfig};
use recall_core::types::PageRequest;
use recall_core::types::{Actor, Filter};
use recall_core::{Embedder, Engine, RetrieveOptions, StoreConfig};

use crate::fixtures::{PgDb, cpu_embedder, fact, minilm_dir};

fn embedder() -> Arc<dyn Embedder> {
    cpu_embedder(&minilm_dir())
}

fn runner(engine: &Engine, worker: &str) -> JobRunner {
    JobRunner::start(
        engine.clone(),
        JobRunnerConfig {
            worker: worker.into(),
            poll_interval: Duration::from_millis(50),
            ..JobRunnerConfig::default()
        },
    )
}

/// The next event of the subscription within `wait`.
async fn next_event(sub: &mut Subscription, wait: Duration) -> Option<Event> {
    match tokio::time::timeout(wait, sub.next()).await {
        Ok(Some(Received::Event(e))) => Some(*e),
        Ok(Some(Received::Lagged(n))) => panic!("lagged {n}"),
        Ok(None) | Err(_) => None,
    }
}

/// Job states seen on the subscription until the job reaches a final status.
async fn job_states(sub: &mut Subscription, id: i64) -> Vec<JobStatus> {
    let mut seen = Vec::new();
    while let Some(e) = next_event(sub, Duration::from_secs(20)).await {
        if let Event::Job(j) = e
            && j.id == id
        {
            seen.push(j.status);
            if j.status.is_final() {
                return seen;
            }
        }
    }
    panic!("job {id} did not finish; saw {seen:?}");
}

/// The operators' jobs are reached only as such: no user id (not even the empty one that
/// stores them) reads, lists or cancels them through a user's calls.
#[tokio::test(flavor = "multi_thread")]
async fn operators_jobs_are_not_a_users() {
    let dir = tempfile::tempdir().unwrap();
    let store = recall_core::store::open(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let engine = Engine::new(store, embedder());
    let at = Utc::now() + chrono::Duration::hours(1);
    let op = Actor::user("op");
    let system = engine
        .schedule_system_job(JobKind::Optimize, at, serde_json::json!({}), &op)
        .await
        .unwrap();
    let mine = engine
        .schedule_delete_user("alice", at, &Actor::user("alice"))
        .await
        .unwrap();
    let page = PageRequest::default();
    let invalid =
        |r: recall_core::Result<()>| matches!(r, Err(recall_core::Error::InvalidInput { .. }));
    for user in ["", "   "] {
        assert!(invalid(engine.job(user, system.id).await.map(|_| ())));
        assert!(invalid(engine.jobs(user, &page).await.map(|_| ())));
        assert!(invalid(
            engine.cancel_job(user, system.id, &op).await.map(|_| ())
        ));
    }
    // A user reaches their own job, and neither the operators' nor another user's.
    assert_eq!(
        engine.job("alice", mine.id).await.unwrap().unwrap().id,
        mine.id
    );
    assert!(engine.job("alice", system.id).await.unwrap().is_none());
    assert!(engine.job("bob", mine.id).await.unwrap().is_none());
    let listed = engine.jobs("alice", &page).await.unwrap();
    assert_eq!(
        listed.items.iter().map(|j| j.id).collect::<Vec<_>>(),
        [mine.id]
    );
    let still = engine.system_job(system.id).await.unwrap().unwrap();
    assert_eq!(still.status, JobStatus::Queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_deletion_runs_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = recall_core::store::open(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let engine = Engine::new(store, embedder());
    engine
        .add_memory("alice", fact("Alice keeps bees"))
        .await
        .unwrap();
    engine
        .add_memory("bob", fact("Bob keeps goats"))
        .await
        .unwrap();
    let mut alice = engine.events().subscribe("alice");
    let mut bob = engine.events().subscribe("bob");
    let _runner = runner(&engine, "w1");

    let at = Utc::now() + chrono::Duration::milliseconds(700);
    let job = engine
        .schedule_delete_user("alice", at, &Actor::user("alice"))
        .await
        .unwrap();
    assert_eq!(
        (job.kind, job.status),
        (JobKind::DeleteUser, JobStatus::Queued)
    );
    // A second one is refused while the first is pending; Bob's is cancelled before it runs.
    assert!(
        engine
            .schedule_delete_user("alice", at, &Actor::user("alice"))
            .await
            .is_err()
    );
    let bobs = engine
        .schedule_delete_user(
            "bob",
            Utc::now() + chrono::Duration::milliseconds(300),
            &Actor::user("bob"),
        )
        .await
        .unwrap();
    engine
        .cancel_job("bob", bobs.id, &Actor::user("bob"))
        .await
        .unwrap();
    // Too far ahead.
    assert!(
        engine
            .schedule_delete_user(
                "carol",
                Utc::now() + chrono::Duration::days(400),
                &Actor::user("carol")
            )
            .await
            .is_err()
    );

    // Nothing is deleted before its time.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(engine.count_memories("alice").await.unwrap(), 1);

    let states = job_states(&mut alice, job.id).await;
    assert_eq!(
        states,
        [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded]
    );
    let done: Job = engine.job("alice", job.id).await.unwrap().unwrap();
    assert!(done.started_at.unwrap() >= at.trunc_subsecs_micros());
    assert_eq!(done.result.as_ref().unwrap()["memories"], 1);
    assert_eq!(engine.count_memories("alice").await.unwrap(), 0);
    assert!(engine.user("alice").await.unwrap().is_none());
    let audit: Vec<String> = engine
        .audit_log(
            "alice",
            &PageRequest {
                first: 10,
                after: None,
            },
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(audit, ["schedule_job", "delete_user"]);

    // Bob's cancelled deletion never ran, and Bob heard only about his own job.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(engine.count_memories("bob").await.unwrap(), 1);
    let bob_job = engine.job("bob", bobs.id).await.unwrap().unwrap();
    assert_eq!(
        (bob_job.status, bob_job.attempts),
        (JobStatus::Cancelled, 0)
    );
    while let Some(e) = next_event(&mut bob, Duration::from_millis(100)).await {
        assert_eq!(e.user(), "bob");
    }
}

trait TruncMicros {
    fn trunc_subsecs_micros(self) -> Self;
}

impl TruncMicros for chrono::DateTime<Utc> {
    fn trunc_subsecs_micros(self) -> Self {
        chrono::SubsecRound::trunc_subsecs(self, 6)
    }
}

/// Two engines over one database, as two server replicas are.
async fn replicas(pg: &PgDb) -> (Engine, Engine) {
    let embedder = embedder();
    let a = recall_core::store::open(&StoreConfig::postgres(pg.url.clone()))
        .await
        .unwrap();
    let b = recall_core::store::open(&StoreConfig::postgres(pg.url.clone()))
        .await
        .unwrap();
    (Engine::new(a, embedder.clone()), Engine::new(b, embedder))
}

/// A process that runs no fan-out (the command line beside the servers) still drops the
/// servers' cached queries of a user it deletes, before it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_without_a_fan_out_still_reaches_the_replicas() {
    let pg = PgDb::create().await;
    let (server, cli) = replicas(&pg).await;
    let _fan = server
        .start_fanout()
        .await
        .unwrap()
        .expect("postgres fans out");
    let options = RetrieveOptions {
        now: Some(Utc::now()),
        ..RetrieveOptions::default()
    };
    for (user, text) in [
        ("alice", "Alice's locker code is 4721"),
        ("bob", "Bob's locker code is 1234"),
    ] {
        server.add_memory(user, fact(text)).await.unwrap();
        for _ in 0..2 {
            let got = server
                .retrieve(user, "what is the code?", &options)
                .await
                .unwrap();
            assert_eq!(got.len(), 1);
        }
    }
    let hits = server.cache_stats().hits;
    assert!(hits >= 2, "the repeated retrievals were cached");

    let page = PageRequest {
        first: 1,
        after: None,
    };
    let bobs = cli
        .memories("bob", &Filter::default(), &page)
        .await
        .unwrap()
        .items[0]
        .id;
    cli.delete_memories("bob", &[bobs]).await.unwrap();
    cli.delete_user("alice", &Actor::cli()).await.unwrap();
    // The notices travel through Postgres; the server hears them within moments.
    let mut left = (1, 1);
    for _ in 0..100 {
        let alice = server
            .retrieve("alice", "what is the code?", &options)
            .await
            .unwrap();
        let bob = server
            .retrieve("bob", "what is the code?", &options)
            .await
            .unwrap();
        left = (alice.len(), bob.len());
        if left == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, (0, 0), "the server still answered from its cache");
}

/// What `engine` retrieves for the user, by content.
async fn retrieved(engine: &Engine, user: &str, options: &RetrieveOptions) -> Vec<String> {
    engine
        .retrieve(user, "what is the locker code?", options)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.memory.content)
        .collect()
}

/// A redaction, a replacement and a session's deletion made by a process that runs no
/// fan-out (the command line) reach the servers' cached queries before it returns, as
/// deletions do: none of them may be served from a cache for the cache's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_without_a_fan_out_reach_the_replicas() {
    let pg = PgDb::create().await;
    let (server, cli) = replicas(&pg).await;
    let _fan = server
        .start_fanout()
        .await
        .unwrap()
        .expect("postgres fans out");
    let options = RetrieveOptions {
        now: Some(Utc::now()),
        ..RetrieveOptions::default()
    };
    let carol = server
        .add_memory("carol", fact("Carol's locker code is 4721"))
        .await
        .unwrap();
    let dan = server
        .add_memory("dan", fact("Dan's locker code is 1234"))
        .await
        .unwrap();
    let gym = recall_core::NewMemoryText {
        session: Some("gym".into()),
        ..fact("Erin's locker code is 9876")
    };
    server.add_memory("erin", gym).await.unwrap();
    for user in ["carol", "dan", "erin", "carol", "dan", "erin"] {
        assert_eq!(retrieved(&server, user, &options).await.len(), 1);
    }
    assert!(
        server.cache_stats().hits >= 3,
        "the repeated retrievals were cached"
    );

    let redacted = "Carol's locker code is [redacted]";
    let update = recall_core::MemoryUpdate {
        content: Some(redacted.into()),
        ..Default::default()
    };
    cli.update_memory("carol", carol.id, update).await.unwrap();
    let now = "Dan's locker code is now 5555";
    let replacement = recall_core::NewMemoryText {
        supersedes: Some(dan.id),
        ..fact(now)
    };
    cli.add_memory("dan", replacement).await.unwrap();
    cli.delete_session("erin", "gym").await.unwrap();
    // The notices travel through Postgres; the server hears them within moments.
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = vec![
            retrieved(&server, "carol", &options).await,
            retrieved(&server, "dan", &options).await,
            retrieved(&server, "erin", &options).await,
        ];
        if seen == [vec![redacted.to_owned()], vec![now.to_owned()], vec![]] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server still answered from its cache: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_cache_invalidation_cross_replicas() {
    let pg = PgDb::create().await;
    let (a, b) = replicas(&pg).await;
    let fan_a = a.start_fanout().await.unwrap().expect("postgres fans out");
    let fan_b = b.start_fanout().await.unwrap().expect("postgres fans out");
    assert!(a.start_fanout().await.is_err(), "one fan-out per engine");

    let mut alice_on_b = b.events().subscribe("alice");
    let mut bob_on_b = b.events().subscribe("bob");
    let mut alice_on_a = a.events().subscribe("alice");

    // A write on A reaches B's subscriber of that user, with the memory read on B.
    let m = a
        .add_memory("alice", fact("Alice's locker code is 4721"))
        .await
        .unwrap();
    match next_event(&mut alice_on_b, Duration::from_secs(10)).await {
        Some(Event::Memory(e)) => {
            assert_eq!(e.memory_id, m.id);
            assert_eq!(e.memory.unwrap().content, "Alice's locker code is 4721");
        }
        other => panic!("expected alice's event on B, got {other:?}"),
    }
    // A's own subscriber hears it once (its own echo through Postgres is ignored).
    assert!(matches!(
        next_event(&mut alice_on_a, Duration::from_secs(5)).await,
        Some(Event::Memory(_))
    ));
    assert!(
        next_event(&mut alice_on_a, Duration::from_millis(500))
            .await
            .is_none(),
        "no duplicate from the echo"
    );
    assert!(
        next_event(&mut bob_on_b, Duration::from_millis(300))
            .await
            .is_none(),
        "Bob hears nothing of Alice's"
    );

    // B caches a retrieval; a write on A makes B's cached result stale at once.
    // (Only results that do not depend on the clock are cached: fix `now`.)
    let options = RetrieveOptions {
        now: Some(Utc::now()),
        ..RetrieveOptions::default()
    };
    let before = b
        .retrieve("alice", "what is the code?", &options)
        .await
        .unwrap();
    assert_eq!(before.len(), 1);
    let _ = b
        .retrieve("alice", "what is the code?", &options)
        .await
        .unwrap();
    assert!(b.cache_stats().hits >= 1, "the second retrieval was cached");
    a.add_memory("alice", fact("Alice changed the locker code to 9915"))
        .await
        .unwrap();
    let _ = next_event(&mut alice_on_b, Duration::from_secs(10)).await;
    let after = b
        .retrieve("alice", "what is the code?", &options)
        .await
        .unwrap();
    assert_eq!(after.len(), 2, "B saw the write made on A: {after:?}");

    // A job run by A's runner is followed on B.
    let _runner = runner(&a, "replica-a");
    let job = b
        .schedule_delete_user("alice", Utc::now(), &Actor::user("alice"))
        .await
        .unwrap();
    let states = job_states(&mut alice_on_b, job.id).await;
    assert_eq!(states.last(), Some(&JobStatus::Succeeded), "{states:?}");
    assert!(states.contains(&JobStatus::Running), "{states:?}");
    let gone = b
        .retrieve("alice", "what is the code?", &options)
        .await
        .unwrap();
    assert!(
        gone.is_empty(),
        "B's cache dropped the deleted user's results"
    );

    drop((fan_a, fan_b));
    drop((a, b));
    pg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_runs_once_across_replicas() {
    let pg = PgDb::create().await;
    let (a, b) = replicas(&pg).await;
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    for u in &users {
        a.add_memory(u, fact("a fact")).await.unwrap();
        a.schedule_delete_user(u, Utc::now(), &Actor::user(u))
            .await
            .unwrap();
    }
    let runners = [runner(&a, "replica-a"), runner(&b, "replica-b")];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut finished = Vec::new();
    while std::time::Instant::now() < deadline {
        finished.clear();
        for u in &users {
            let page = a
                .jobs(
                    u,
                    &PageRequest {
                        first: 5,
                        after: None,
                    },
                )
                .await
                .unwrap();
            finished.extend(page.items.into_iter().filter(|j| j.status.is_final()));
        }
        if finished.len() == users.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(finished.len(), users.len(), "every job finished");
    for j in &finished {
        assert_eq!((j.status, j.attempts), (JobStatus::Succeeded, 1), "{j:?}");
        let deletions = a
            .audit_log(
                &j.user,
                &PageRequest {
                    first: 10,
                    after: None,
                },
            )
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| e.action == "delete_user")
            .count();
        assert_eq!(deletions, 1, "{} deleted once", j.user);
    }
    for r in runners {
        r.stop().await;
    }
    drop((a, b));
    pg.drop_db().await;
}

/// Deleting a user's data cancels their queued jobs, and whoever follows one hears it end,
/// however many of their jobs came after it (jobs are read newest first, a page at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_ends_every_queued_job_for_its_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::embedded(dir.path());
    config.limits.max_page_size = 2;
    let store = recall_core::store::open(&config).await.unwrap();
    let engine = Engine::new(store, embedder());
    let alice = Actor::user("alice");
    engine
        .add_memory("alice", fact("Alice keeps bees"))
        .await
        .unwrap();
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    let scheduled = engine
        .schedule_delete_user("alice", tomorrow, &alice)
        .await
        .unwrap();
    // Three newer jobs, ended: the scheduled one is on the second page.
    engine.set_memory_keys("alice", true).await.unwrap();
    let options = recall_core::memory_keys::KeyOptions::default();
    for _ in 0..3 {
        let keys = engine
            .queue_memory_keys_job("alice", &options, &alice)
            .await
            .unwrap();
        engine.cancel_job("alice", keys.id, &alice).await.unwrap();
    }
    let mut events = engine.events().subscribe("alice");
    engine.delete_user("alice", &alice).await.unwrap();
    assert_eq!(
        job_states(&mut events, scheduled.id).await,
        [JobStatus::Cancelled]
    );
}
