//! Background jobs across two replicas on one Postgres: scheduled deletion, job progress over
//! graphql-ws, memory events fanned out between replicas.
use std::time::Duration;

use serde_json::{Value, json};

use super::fixtures::{Server, Store, Ws, add, code, data, gql, token};

const JOB_FIELDS: &str = "id kind status progress result error attempts runAt startedAt finishedAt";

/// Follows an operator's job over `jobProgress` until it succeeds; its last state.
async fn watch_system_job(server: &Server, admin: &str, id: &str) -> Value {
    let init = json!({ "authorization": format!("Bearer {admin}") });
    let mut watch = Ws::connect(server, init).await.unwrap();
    watch
        .subscribe(
            "job",
            &format!(
                "subscription($id: ID!) {{ jobProgress(id: $id, system: true) {{ {JOB_FIELDS} }} }}"
            ),
            json!({ "id": id }),
        )
        .await;
    loop {
        let m = watch.next().await.unwrap();
        assert_eq!(m["type"], "next", "{m}");
        let j = m["payload"]["data"]["jobProgress"].clone();
        if j["status"] == "SUCCEEDED" {
            return j;
        }
        assert!(j["status"] == "QUEUED" || j["status"] == "RUNNING", "{j}");
    }
}

/// Two replicas over one Postgres database: memory events and job progress reach a
/// subscriber on the other replica; a scheduled deletion runs at its time, once; another
/// user's job ids are refused everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_deletion_and_job_progress_across_replicas() {
    let store = Store::postgres().await;
    let env = [("DEEP_RECALL__JOBS__POLL_MS", "100")];
    let a = Server::start(&store, &["--no-chat"], &env);
    let b = Server::start(&store, &["--no-chat"], &env);
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    let init = |t: &str| json!({ "authorization": format!("Bearer {t}") });

    // A memory written through A is announced to Alice's subscriber on B.
    let mut on_b = Ws::connect(&b, init(&alice)).await.unwrap();
    on_b.subscribe(
        "ev",
        "subscription { memoryEvents { action memory { content } } }",
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    add(&a, &alice, "s", "Alice's spare key is under the blue pot").await;
    let ev = on_b.next().await.unwrap();
    assert_eq!(
        ev["payload"]["data"]["memoryEvents"]["memory"]["content"],
        "Alice's spare key is under the blue pot",
        "{ev}"
    );
    add(&a, &bob, "s", "Bob's bike is red").await;

    // Scheduling: bad times are refused.
    let schedule =
        format!("mutation($at: DateTime!) {{ scheduleDeleteMyData(at: $at) {{ {JOB_FIELDS} }} }}");
    let far = (chrono::Utc::now() + chrono::Duration::days(800)).to_rfc3339();
    let (_, body) = gql(&a, Some(&alice), &schedule, json!({ "at": far })).await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");
    let (_, body) = gql(&a, Some(&alice), &schedule, json!({ "at": "next tuesday" })).await;
    assert!(body["errors"].is_array(), "{body}");

    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (_, body) = gql(
        &a,
        Some(&alice),
        &schedule,
        json!({ "at": at.to_rfc3339() }),
    )
    .await;
    let job = data(&body)["scheduleDeleteMyData"].clone();
    assert_eq!(
        (job["kind"].as_str(), job["status"].as_str()),
        (Some("DELETE_USER"), Some("QUEUED"))
    );
    let id = job["id"].as_str().unwrap().to_owned();
    let (_, body) = gql(
        &a,
        Some(&alice),
        &schedule,
        json!({ "at": at.to_rfc3339() }),
    )
    .await;
    assert_eq!(
        code(&body),
        "BAD_INPUT",
        "one scheduled deletion at a time: {body}"
    );

    // Bob cannot see, cancel or watch Alice's job.
    let (_, body) = gql(
        &b,
        Some(&bob),
        "query($id: ID!) { job(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await;
    assert!(data(&body)["job"].is_null(), "{body}");
    let (_, body) = gql(
        &b,
        Some(&bob),
        "query { jobs { edges { node { id } } } }",
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["jobs"]["edges"], json!([]));
    let cancel = "mutation($id: ID!) { cancelJob(id: $id) { id status } }";
    let (_, body) = gql(&b, Some(&bob), cancel, json!({ "id": id })).await;
    assert_eq!(code(&body), "NOT_FOUND", "{body}");
    let mut bob_ws = Ws::connect(&b, init(&bob)).await.unwrap();
    bob_ws
        .subscribe(
            "job",
            "subscription($id: ID!) { jobProgress(id: $id) { id status } }",
            json!({ "id": id }),
        )
        .await;
    let refused = bob_ws.next().await.unwrap();
    // (An execution error of a subscription arrives as a `next` with errors, then `complete`.)
    assert_eq!(refused["payload"]["data"], Value::Null, "{refused}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{refused}"
    );
    assert_eq!(bob_ws.next().await.unwrap()["type"], "complete");

    // Bob schedules his own and changes his mind.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, body) = gql(&b, Some(&bob), &schedule, json!({ "at": later })).await;
    let bobs = data(&body)["scheduleDeleteMyData"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = gql(&a, Some(&bob), cancel, json!({ "id": bobs })).await;
    assert_eq!(data(&body)["cancelJob"]["status"], "CANCELLED");
    let (_, body) = gql(&a, Some(&bob), cancel, json!({ "id": bobs })).await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");

    // Alice watches her deletion on B while the replicas' runners race for it.
    let mut watch = Ws::connect(&b, init(&alice)).await.unwrap();
    watch
        .subscribe(
            "job",
            &format!("subscription($id: ID!) {{ jobProgress(id: $id) {{ {JOB_FIELDS} }} }}"),
            json!({ "id": id }),
        )
        .await;
    let mut states = Vec::new();
    let last = loop {
        let m = watch.next().await.unwrap();
        if m["type"] == "complete" {
            break None;
        }
        assert_eq!(m["type"], "next", "{m}");
        let j = m["payload"]["data"]["jobProgress"].clone();
        states.push(j["status"].as_str().unwrap().to_owned());
        if j["status"] == "SUCCEEDED" {
            assert_eq!(watch.next().await.unwrap()["type"], "complete");
            break Some(j);
        }
    };
    let last = last.unwrap_or_else(|| panic!("ended without success: {states:?}"));
    assert_eq!(
        states.first().map(String::as_str),
        Some("QUEUED"),
        "{states:?}"
    );
    assert!(states.contains(&"RUNNING".to_owned()), "{states:?}");
    assert_eq!(last["attempts"], 1, "ran once: {last}");
    assert_eq!(last["progress"], 1.0);
    assert_eq!(last["result"]["memories"], 1, "{last}");
    let started =
        chrono::DateTime::parse_from_rfc3339(last["startedAt"].as_str().unwrap()).unwrap();
    assert!(
        started >= at - chrono::Duration::milliseconds(1),
        "not before its time: {last}"
    );

    // Alice's data is gone from both replicas; Bob's is intact.
    for server in [&a, &b] {
        let (_, body) = gql(server, Some(&alice), "{ me { memoryCount } }", json!({})).await;
        assert_eq!(data(&body)["me"]["memoryCount"], 0);
        let (_, body) = gql(server, Some(&bob), "{ me { memoryCount } }", json!({})).await;
        assert_eq!(data(&body)["me"]["memoryCount"], 1);
    }
    let (_, body) = gql(
        &a,
        Some(&alice),
        "query { jobs { edges { node { id status } } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["jobs"]["edges"][0]["node"]["status"],
        "SUCCEEDED",
        "the record stays: {body}"
    );

    drop((a, b));
    if let Store::Postgres(db) = store {
        db.drop_db().await;
    }
}

/// Scheduled backups on two replicas over one Postgres: each slot's backup runs once, old
/// files are pruned to `keep`, and a file restores. Admins run and watch operators' jobs
/// (progress over graphql-ws); users can neither start nor see them.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_and_operators_jobs() {
    let store = Store::postgres().await;
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().to_str().unwrap();
    let env = [
        ("DEEP_RECALL__JOBS__POLL_MS", "100"),
        ("DEEP_RECALL__BACKUP__DIR", dir),
        ("DEEP_RECALL__BACKUP__EVERY", "1s"),
        ("DEEP_RECALL__BACKUP__KEEP", "2"),
    ];
    let a = Server::start(&store, &["--no-chat"], &env);
    let b = Server::start(&store, &["--no-chat"], &env);
    let alice = token("alice", false, 600);
    add(
        &a,
        &alice,
        "s",
        "Alice keeps her passport in the desk drawer",
    )
    .await;

    // Several slots pass; every run is recorded by one replica only. A backup being
    // written at the moment of the listing (`….backup.partial-N`, renamed when complete)
    // is not one of the kept backups yet.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let files: Vec<String> = std::fs::read_dir(backups.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| !f.contains(".backup.partial-"))
        .collect();
    assert_eq!(files.len(), 2, "pruned to keep = 2: {files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("deep-recall-") && f.ends_with(".backup"))
    );
    let ran = |s: &Server| s.logs().matches("backup scheduled").count();
    assert!(ran(&a) + ran(&b) >= 3, "a: {}\nb: {}", a.logs(), b.logs());
    let newest = files.iter().max().unwrap();
    let restored = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deep-recall"))
        .arg("--data-dir")
        .arg(restored.path())
        .args(["--json", "restore"])
        .arg(backups.path().join(newest))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["users"], 1, "{report}");

    // An admin starts maintenance and watches it to the end.
    let admin = token("ops", true, 600);
    let run =
        format!("mutation($k: SystemJobKind!) {{ runSystemJob(kind: $k) {{ {JOB_FIELDS} }} }}");
    let (_, body) = gql(&a, Some(&admin), &run, json!({ "k": "OPTIMIZE" })).await;
    let job = data(&body)["runSystemJob"].clone();
    assert_eq!(job["kind"], "OPTIMIZE", "{body}");
    let id = job["id"].as_str().unwrap().to_owned();
    let init = |t: &str| json!({ "authorization": format!("Bearer {t}") });
    let done = watch_system_job(&b, &admin, &id).await;
    assert_eq!(done["result"]["backend"], "postgres", "{done}");
    assert!(
        done["result"]["reindexed"].as_array().unwrap().len() >= 2,
        "{done}"
    );

    // Users: refused, and the operators' job is not theirs to see.
    let (_, body) = gql(&a, Some(&alice), &run, json!({ "k": "BACKUP" })).await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    let (_, body) = gql(
        &a,
        Some(&alice),
        "query($id: ID!) { job(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await;
    assert!(data(&body)["job"].is_null(), "{body}");
    let mut peek = Ws::connect(&a, init(&alice)).await.unwrap();
    for system in [false, true] {
        peek.subscribe(
            "p",
            "subscription($id: ID!, $s: Boolean!) { jobProgress(id: $id, system: $s) { id } }",
            json!({ "id": id, "s": system }),
        )
        .await;
        let refused = peek.next().await.unwrap();
        let want = if system { "FORBIDDEN" } else { "NOT_FOUND" };
        assert_eq!(
            refused["payload"]["errors"][0]["extensions"]["code"], want,
            "{refused}"
        );
        assert_eq!(peek.next().await.unwrap()["type"], "complete");
    }
    drop((a, b));

    // Without backup.dir a backup cannot be started.
    let c = Server::start(&store, &["--no-chat"], &[]);
    let (_, body) = gql(&c, Some(&admin), &run, json!({ "k": "BACKUP" })).await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");
    drop(c);

    // With a data key, an admin seals the rows written in the clear.
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), [5u8; 32]).unwrap();
    let key_env = [(
        "DEEP_RECALL_ENCRYPTION_KEY_FILE",
        key.path().to_str().unwrap(),
    )];
    let d = Server::start(&store, &["--no-chat"], &key_env);
    let (_, body) = gql(&d, Some(&admin), &run, json!({ "k": "ROTATE_KEYS" })).await;
    let id = data(&body)["runSystemJob"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = watch_system_job(&d, &admin, &id).await;
    let key_id = recall_core::crypto::DataKey::from_bytes([5u8; 32]).id();
    assert_eq!(done["result"]["key_id"], key_id.as_str(), "{done}");
    assert!(done["result"]["resealed"].as_u64().unwrap() >= 1, "{done}");
    let (_, body) = gql(
        &d,
        Some(&alice),
        "{ search(query: \"where is the passport?\", topK: 1) { memory { content } } }",
        json!({}),
    )
    .await;
    let top = &data(&body)["search"][0]["memory"]["content"];
    assert!(top.as_str().unwrap().contains("desk drawer"), "{body}");
    drop(d);
    // Now the key is needed: a server without it refuses to start, naming the key.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_deep-recall"));
    let Store::Postgres(db) = &store else {
        unreachable!()
    };
    let mut refused = cmd
        .args(["--database-url", &db.url, "--models-dir"])
        .arg(recall_core::testing::models_dir())
        .args([
            "serve",
            "--no-chat",
            "--allow-anonymous",
            "--bind",
            "127.0.0.1:0",
        ])
        .env_remove("DEEP_RECALL_ENCRYPTION_KEY_FILE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself; a server that started is killed and fails the test.
    let started = std::time::Instant::now();
    while refused.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = refused.kill();
    let refused = refused.wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&key_id), "{stderr}");
    if let Store::Postgres(db) = store {
        db.drop_db().await;
    }
}

/// A change of embedding model rolled out by the server: started with the new model and the
/// old one as previous, it queues the re-embedding job itself; searches answer throughout, and
/// at the end every memory has a vector of the new model only.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_embedding_model_is_rolled_out_in_the_background() {
    let store = Store::embedded();
    let a = Server::start(&store, &["--no-chat"], &[]);
    let alice = token("alice", false, 600);
    for text in [
        "Alice keeps her passport in the desk drawer",
        "Alice's sister lives in Porto",
        "Alice adopted a cat named Miso",
    ] {
        add(&a, &alice, "s", text).await;
    }
    let query = "{ search(query: \"where is the passport?\", topK: 1) { memory { content } } }";
    let top = |s: &Server| {
        let (s, alice) = (s.base.clone(), alice.clone());
        async move {
            let body: Value = reqwest::Client::new()
                .post(format!("{s}/graphql"))
                .bearer_auth(&alice)
                .json(&json!({ "query": query }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            data(&body)["search"][0]["memory"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let before = top(&a).await;
    assert!(before.contains("passport"));
    drop(a);

    let root = tempfile::tempdir().unwrap();
    let two = recall_core::testing::two_layer_minilm(root.path());
    let b = Server::start(
        &store,
        &[
            "--no-chat",
            "--embedding-model",
            two.to_str().unwrap(),
            "--previous-embedding-model",
            "all-MiniLM-L6-v2",
        ],
        &[("DEEP_RECALL__JOBS__POLL_MS", "100")],
    );
    assert_eq!(
        top(&b).await,
        before,
        "answered while the job runs or waits"
    );
    let Store::Embedded(dir) = &store else {
        unreachable!()
    };
    let models = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_deep-recall"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["export", "--user", "alice"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let export: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut models: Vec<String> = export["memories"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["embeddings"].as_array().unwrap().clone())
            .map(|e| e["model"].as_str().unwrap().to_owned())
            .collect();
        models.sort();
        models.dedup();
        models
    };
    let started = std::time::Instant::now();
    while models() != ["minilm-2-layers"] {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not re-embedded: {:?}\n{}",
            models(),
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(b.logs().contains("re-embedding queued"), "{}", b.logs());
    assert_eq!(top(&b).await, before, "the new model finds it too");
}
