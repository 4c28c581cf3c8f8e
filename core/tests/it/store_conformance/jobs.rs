//! The job queue: lifecycle and leases.
use super::*;

crate::fixtures::both_backends! {
    jobs_lifecycle;
    job_leases;
    jobs_claimed_by_kind;
    a_job_is_cancelled_or_run_never_both;
}

/// Cancelling and claiming at the same moment: each job is cancelled or claimed, never both
/// (a deletion the user was told is cancelled must not run).
async fn a_job_is_cancelled_or_run_never_both(t: &TestStore) {
    let s = t.store().jobs();
    let lease = std::time::Duration::from_secs(60);
    let mut jobs = Vec::new();
    for i in 0..30 {
        let user = format!("user{i}");
        let job = s
            .create_job(
                &user,
                delete_job(Utc::now() - Duration::seconds(1)),
                &Actor::user(&user),
            )
            .await
            .unwrap();
        jobs.push((user, job.id));
    }
    let claim = async {
        let mut claimed = Vec::new();
        while let Some(job) = s.claim_job("runner", lease, &[]).await.unwrap() {
            claimed.push(job.id);
        }
        claimed
    };
    let cancel = async {
        let mut cancelled = Vec::new();
        for (user, id) in jobs.iter().rev() {
            if s.cancel_job(user, *id, &Actor::user(user)).await.is_ok() {
                cancelled.push(*id);
            }
        }
        cancelled
    };
    let (claimed, cancelled) = futures::join!(claim, cancel);
    for id in &cancelled {
        assert!(!claimed.contains(id), "job {id} was cancelled and claimed");
    }
    assert_eq!(claimed.len() + cancelled.len(), jobs.len());
}

/// A runner that names kinds takes only jobs of those kinds, however old the others; one
/// that names none takes any.
async fn jobs_claimed_by_kind(t: &TestStore) {
    let s = t.store().jobs();
    let lease = std::time::Duration::from_secs(60);
    let older = s
        .create_job(
            "alice",
            delete_job(Utc::now() - Duration::seconds(2)),
            &Actor::user("alice"),
        )
        .await
        .unwrap();
    let keys = s
        .create_job(
            "bob",
            NewJob {
                kind: JobKind::MemoryKeys,
                run_at: Utc::now() - Duration::seconds(1),
                params: serde_json::to_value(recall_core::memory_keys::KeyOptions::default())
                    .unwrap(),
            },
            &Actor::user("bob"),
        )
        .await
        .unwrap();
    let only_keys = [JobKind::MemoryKeys];
    let claimed = s.claim_job("w1", lease, &only_keys).await.unwrap().unwrap();
    assert_eq!((claimed.id, claimed.kind), (keys.id, JobKind::MemoryKeys));
    assert!(
        s.claim_job("w1", lease, &only_keys)
            .await
            .unwrap()
            .is_none()
    );
    let two = [JobKind::Backup, JobKind::DeleteUser];
    assert_eq!(
        s.claim_job("w2", lease, &two).await.unwrap().unwrap().id,
        older.id
    );
    assert!(s.claim_job("w3", lease, &[]).await.unwrap().is_none());
}

async fn jobs_lifecycle(t: &TestStore) {
    let s = t.store().jobs();
    let alice = Actor::user("alice");
    let later = Utc::now() + Duration::hours(1);
    let job = s
        .create_job("alice", delete_job(later), &alice)
        .await
        .unwrap();
    assert_eq!(job.user, "alice");
    assert_eq!(job.kind, JobKind::DeleteUser);
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!((job.progress, job.attempts), (0.0, 0));
    assert_eq!(job.run_at, later.trunc_subsecs(6));
    assert!(job.started_at.is_none() && job.finished_at.is_none());
    assert_eq!(s.get_job("alice", job.id).await.unwrap(), Some(job.clone()));

    // Another user can neither see nor cancel it.
    assert_eq!(s.get_job("bob", job.id).await.unwrap(), None);
    assert!(
        s.list_jobs("bob", &page(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let err = s
        .cancel_job("bob", job.id, &Actor::user("bob"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(
        s.get_job("alice", job.id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );

    // One pending job of a kind per user; other users are not affected.
    let err = s
        .create_job("alice", delete_job(later), &alice)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let bobs = s
        .create_job("bob", delete_job(later), &Actor::user("bob"))
        .await
        .unwrap();
    let err = s
        .create_job(
            "alice",
            NewJob {
                params: json!([1, 2]),
                ..delete_job(later)
            },
            &alice,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // Not due: nothing to claim.
    assert!(
        s.claim_job("w1", std::time::Duration::from_secs(60), &[])
            .await
            .unwrap()
            .is_none()
    );

    let cancelled = s.cancel_job("alice", job.id, &alice).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    let err = s.cancel_job("alice", job.id, &alice).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // Due now: claimed once, by one worker.
    let due = s
        .create_job(
            "alice",
            delete_job(Utc::now() - Duration::seconds(1)),
            &alice,
        )
        .await
        .unwrap();
    let claimed = s
        .claim_job("w1", std::time::Duration::from_secs(60), &[])
        .await
        .unwrap()
        .expect("a due job");
    assert_eq!(claimed.id, due.id);
    assert_eq!(claimed.status, JobStatus::Running);
    assert_eq!(claimed.attempts, 1);
    assert!(claimed.started_at.is_some());
    assert!(
        s.claim_job("w2", std::time::Duration::from_secs(60), &[])
            .await
            .unwrap()
            .is_none(),
        "a held job is not claimed twice (and Bob's is not due)"
    );
    let err = s.cancel_job("alice", due.id, &alice).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "a running job cannot be cancelled"
    );
    assert_eq!(
        s.finish_job(due.id, "w2", JobOutcome::Succeeded(json!({})), None)
            .await
            .unwrap(),
        None,
        "only the holder finishes a job"
    );
    let lease = std::time::Duration::from_secs(60);
    s.report_progress(due.id, "w1", 0.5, Some("deleting".into()), lease)
        .await
        .unwrap()
        .expect("the holder reports progress");
    // The job's last word is written with its outcome.
    let done = s
        .finish_job(
            due.id,
            "w1",
            JobOutcome::Succeeded(json!({ "memories": 3 })),
            Some("3 memories deleted".into()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.progress, 1.0);
    assert_eq!(done.message.as_deref(), Some("3 memories deleted"));
    assert_eq!(done.result, Some(json!({ "memories": 3 })));
    assert!(done.finished_at.is_some());

    let listed = s.list_jobs("alice", &page(1)).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].id, due.id, "newest first");
    let rest = s
        .list_jobs(
            "alice",
            &PageRequest {
                first: 10,
                after: listed.next_cursor.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|j| j.id).collect::<Vec<_>>(),
        [job.id]
    );
    assert_eq!(
        s.list_jobs("bob", &page(10)).await.unwrap().items[0].id,
        bobs.id
    );

    let actions: Vec<String> = t
        .store()
        .audit_log("alice", &page(50))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["schedule_job", "cancel_job", "schedule_job"]);
}

async fn job_leases(t: &TestStore) {
    let s = t.store().jobs();
    let alice = Actor::user("alice");
    let job = s
        .create_job(
            "alice",
            delete_job(Utc::now() - Duration::seconds(1)),
            &alice,
        )
        .await
        .unwrap();
    let first = s
        .claim_job("w1", std::time::Duration::from_millis(1), &[])
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The first runner's lease ran out (it died, say): another takes the job over.
    let second = s
        .claim_job("w2", std::time::Duration::from_secs(60), &[])
        .await
        .unwrap()
        .expect("an expired lease is claimed again");
    assert_eq!(second.id, job.id);
    assert_eq!(second.attempts, 2);
    assert_eq!(second.started_at, first.started_at);
    assert_eq!(
        s.finish_job(job.id, "w1", JobOutcome::Succeeded(json!({})), None)
            .await
            .unwrap(),
        None,
        "the runner that lost its lease cannot finish the job"
    );
    s.report_progress(
        job.id,
        "w2",
        0.25,
        Some("halfway".into()),
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap()
    .expect("the new holder reports progress");
    let failed = s
        .finish_job(job.id, "w2", JobOutcome::Failed("é".repeat(3000)), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(
        failed.message.as_deref(),
        Some("halfway"),
        "without a last word the last progress message stays"
    );
    let error = failed.error.unwrap();
    assert!(
        error.len() <= 2000 && error.starts_with("éé"),
        "{}",
        error.len()
    );
    assert!(
        s.claim_job("w3", std::time::Duration::from_secs(60), &[])
            .await
            .unwrap()
            .is_none()
    );
}
