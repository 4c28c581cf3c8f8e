//! Extra keys through GraphQL with the packaged chat model: off until turned on (typed
//! errors), a key job followed over `jobProgress`, keys listed with the memory they are for
//! and never returned by search, the schedule that keys new messages, nothing of Alice's in
//! Bob's results, and keys deleted when turned off. With the default settings new users
//! start with keys on and the schedule writes their context keys as they write.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::fixtures::{Server, Store, Ws, code, data, gql, token};

const JOB: &str = "id kind status progress message result error";
const STATUS: &str = "{ enabled keys }";

const TURNS: [&str; 4] = [
    "I adopted a puppy from the shelter last weekend, his name is Biscuit.",
    "My sister Anna moved to Lisbon in March for her new job.",
    "The pottery class I signed up for starts on Thursday evening.",
    "We are driving to the lake house for my birthday in July.",
];

async fn add_messages(server: &Server, user: &str, texts: &[&str]) -> Vec<String> {
    let messages: Vec<Value> = texts
        .iter()
        .map(|t| json!({ "session": "s1", "role": "USER", "content": t }))
        .collect();
    let (_, body) = gql(
        server,
        Some(user),
        "mutation($m: [MessageInput!]!) { addMessages(messages: $m) { id } }",
        json!({ "m": messages }),
    )
    .await;
    data(&body)["addMessages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The caller's keys: (key text, the memory it is for).
async fn keys(server: &Server, user: &str) -> Vec<(String, String)> {
    let (_, body) = gql(
        server,
        Some(user),
        "{ memories(filter: { kinds: [KEY] }, first: 100) { nodes { kind content keyFor } } }",
        json!({}),
    )
    .await;
    data(&body)["memories"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["kind"], "KEY", "{m}");
            (
                m["content"].as_str().unwrap().to_owned(),
                m["keyFor"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The memories (all kinds but keys) of the caller: their id by text.
async fn memory_of(server: &Server, user: &str) -> HashMap<String, String> {
    let (_, body) = gql(
        server,
        Some(user),
        "{ memories(filter: { kinds: [MESSAGE, FACT] }, first: 100) { nodes { id content } } }",
        json!({}),
    )
    .await;
    data(&body)["memories"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["content"].as_str().unwrap().to_owned(),
                m["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The ids of the memories (all kinds but keys) of the caller.
async fn memory_ids(server: &Server, user: &str) -> Vec<String> {
    memory_of(server, user).await.into_values().collect()
}

async fn status(server: &Server, user: &str) -> Value {
    let (_, body) = gql(
        server,
        Some(user),
        &format!("{{ memoryKeysStatus {STATUS} }}"),
        json!({}),
    )
    .await;
    data(&body)["memoryKeysStatus"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_from_graphql() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &[],
        &[
            ("DEEP_RECALL__JOBS__POLL_MS", "100"),
            ("DEEP_RECALL__MEMORY_KEYS__CHECK_SECS", "1"),
            // Off until turned on here: new users' keys have their own test below.
            ("DEEP_RECALL__MEMORY_KEYS__NEW_USERS", "false"),
            // Facts only here: context keys have their own test below.
            ("DEEP_RECALL__MEMORY_KEYS__FACTS", "true"),
            ("DEEP_RECALL__MEMORY_KEYS__CONTEXT", "false"),
        ],
    );
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    add_messages(&server, &alice, &TURNS).await;
    add_messages(&server, &bob, &TURNS).await;
    let search = |user: String| {
        let server = &server;
        async move {
            let (_, body) = gql(
                server,
                Some(&user),
                "{ search(query: \"Did I get a dog?\", topK: 10) { memory { id kind } } }",
                json!({}),
            )
            .await;
            data(&body)["search"].as_array().unwrap().clone()
        }
    };
    let bob_before = search(bob.clone()).await;

    // Off by default: no job, and no key added by hand.
    assert_eq!(
        status(&server, &alice).await,
        json!({ "enabled": false, "keys": 0 })
    );
    let (_, body) = gql(
        &server,
        Some(&alice),
        &format!("mutation {{ memoryKeysWrite {{ {JOB} }} }}"),
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { addMemory(input: { content: \"a key\", kind: KEY }) { id } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");

    // On, then a job that the packaged model runs, followed over jobProgress.
    let (_, body) = gql(
        &server,
        Some(&alice),
        &format!("mutation {{ memoryKeysEnable(enabled: true) {STATUS} }}"),
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["memoryKeysEnable"]["enabled"], true);
    let (_, body) = gql(
        &server,
        Some(&alice),
        &format!("mutation {{ memoryKeysWrite(input: {{ pauseMs: 10 }}) {{ {JOB} }} }}"),
        json!({}),
    )
    .await;
    // The schedule (every second here) may have queued Alice's job first: that one is
    // followed instead (a second one is refused while it is pending).
    let job = if body["errors"].is_null() {
        data(&body)["memoryKeysWrite"].clone()
    } else {
        assert_eq!(code(&body), "BAD_INPUT", "{body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("already pending")),
            "{body}"
        );
        let (_, body) = gql(
            &server,
            Some(&alice),
            &format!("{{ jobs(first: 50) {{ nodes {{ {JOB} }} }} }}"),
            json!({}),
        )
        .await;
        data(&body)["jobs"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kind"] == "MEMORY_KEYS")
            .cloned()
            .unwrap_or_else(|| panic!("no pending key job: {body}"))
    };
    assert_eq!(job["kind"], "MEMORY_KEYS", "{job}");
    let mut ws = Ws::as_user(&server, &alice).await;
    ws.subscribe(
        "job",
        &format!("subscription($id: ID!) {{ jobProgress(id: $id) {{ {JOB} }} }}"),
        json!({ "id": job["id"] }),
    )
    .await;
    let done = loop {
        let m = ws.next().await.unwrap();
        let j = m["payload"]["data"]["jobProgress"].clone();
        match j["status"].as_str() {
            Some("SUCCEEDED") => break j,
            Some("QUEUED") | Some("RUNNING") => {}
            _ => panic!("job ended badly: {j}"),
        }
    };
    assert_eq!(done["progress"], 1.0, "{done}");
    let result = &done["result"];
    // A fact asked for each turn (session keys are off by default).
    let written = result["keys"].as_u64().unwrap();
    assert_eq!(
        written + result["rejected"].as_u64().unwrap(),
        TURNS.len() as u64,
        "{result}"
    );
    assert_eq!(result["windows"], 0, "{result}");
    assert_eq!(result["session_keys"], 0, "{result}");
    assert!(written > 0, "the packaged model wrote no key: {result}");

    // Each key points at one of Alice's messages and says when it was said.
    let own = memory_ids(&server, &alice).await;
    let found = keys(&server, &alice).await;
    assert_eq!(found.len() as u64, written);
    for (text, target) in &found {
        assert!(own.contains(target), "{target} not Alice's");
        assert!(text.contains("(said on "), "{text}");
    }
    assert_eq!(status(&server, &alice).await["keys"], written);

    // Search returns memories, never keys; Bob's results are his own and unchanged.
    for hit in search(alice.clone()).await {
        assert_ne!(hit["memory"]["kind"], "KEY", "{hit}");
        assert!(own.contains(&hit["memory"]["id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(search(bob.clone()).await, bob_before);
    assert_eq!(
        status(&server, &bob).await,
        json!({ "enabled": false, "keys": 0 })
    );
    assert!(keys(&server, &bob).await.is_empty());

    // A new message gets its key from the schedule (every second here).
    let new = add_messages(
        &server,
        &alice,
        &["My brother Tom just finished his marathon in Chicago."],
    )
    .await;
    let _ = new;
    // The scheduled job asks about it (and only it): a job that read one memory.
    let started = Instant::now();
    loop {
        let (_, body) = gql(
            &server,
            Some(&alice),
            "{ jobs(first: 50) { nodes { kind status result } } }",
            json!({}),
        )
        .await;
        let jobs = data(&body)["jobs"]["nodes"].as_array().unwrap().clone();
        if jobs.iter().any(|j| {
            j["kind"] == "MEMORY_KEYS" && j["status"] == "SUCCEEDED" && j["result"]["memories"] == 1
        }) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no scheduled key job read the new message: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Off: every key goes.
    let (_, body) = gql(
        &server,
        Some(&alice),
        &format!("mutation {{ memoryKeysEnable(enabled: false) {STATUS} }}"),
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["memoryKeysEnable"],
        json!({ "enabled": false, "keys": 0 })
    );
    assert!(keys(&server, &alice).await.is_empty());
}

/// Which keys a job writes: the server's `memory_keys.facts`/`sessions`/`context`, or the
/// job's own (not none: a typed error).
#[tokio::test(flavor = "multi_thread")]
async fn session_keys_from_settings_and_input() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &[],
        &[
            ("DEEP_RECALL__JOBS__POLL_MS", "100"),
            ("DEEP_RECALL__MEMORY_KEYS__CHECK_SECS", "0"),
            ("DEEP_RECALL__MEMORY_KEYS__SESSIONS", "true"),
            ("DEEP_RECALL__MEMORY_KEYS__CONTEXT", "false"),
        ],
    );
    let alice = token("alice", false, 600);
    add_messages(&server, &alice, &TURNS).await;
    let (_, body) = gql(
        &server,
        Some(&alice),
        &format!("mutation {{ memoryKeysEnable(enabled: true) {STATUS} }}"),
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["memoryKeysEnable"]["enabled"], true);
    let write = |input: &'static str| {
        let server = &server;
        let alice = alice.clone();
        async move {
            let (_, body) = gql(
                server,
                Some(&alice),
                &format!("mutation {{ memoryKeysWrite(input: {input}) {{ {JOB} }} }}"),
                json!({}),
            )
            .await;
            body
        }
    };
    let body = write("{ facts: false, sessions: false }").await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");

    // Topics only (sessions from the settings, facts off for this job): the session's four
    // turns are one window, no fact is asked.
    let body = write("{ facts: false }").await;
    let result = finished(&server, &alice, &data(&body)["memoryKeysWrite"]["id"]).await;
    assert_eq!(result["windows"], 1, "{result}");
    assert_eq!(result["memories"], 0, "{result}");
    assert_eq!(result["keys"], result["session_keys"], "{result}");
    let own = memory_ids(&server, &alice).await;
    let found = keys(&server, &alice).await;
    assert_eq!(found.len() as u64, result["keys"].as_u64().unwrap());
    for (text, target) in &found {
        assert!(own.contains(target), "{target} not Alice's");
        assert!(text.contains("(conversation of "), "{text}");
    }

    // Context keys asked for by the job (off in the settings): each turn after the first
    // gets one, the turn before and then its own text, without the model.
    let body = write("{ facts: false, sessions: false, context: true }").await;
    let result = finished(&server, &alice, &data(&body)["memoryKeysWrite"]["id"]).await;
    assert_eq!(result["context_keys"], 3, "{result}");
    assert_eq!(result["keys"], 3, "{result}");
    assert_eq!(result["memories"], 0, "{result}");
    let context: Vec<String> = keys(&server, &alice)
        .await
        .into_iter()
        .map(|(text, _)| text)
        .filter(|t| !t.contains("(conversation of "))
        .collect();
    assert_eq!(context.len(), 3, "{context:?}");
    assert!(
        context.contains(&format!("{}\n{}", TURNS[0], TURNS[1])),
        "{context:?}"
    );
}

/// The result of a job, once it has succeeded.
async fn finished(server: &Server, user: &str, id: &Value) -> Value {
    let started = Instant::now();
    loop {
        let (_, body) = gql(
            server,
            Some(user),
            "query($id: ID!) { job(id: $id) { status result } }",
            json!({ "id": id }),
        )
        .await;
        let job = data(&body)["job"].clone();
        match job["status"].as_str() {
            Some("SUCCEEDED") => return job["result"].clone(),
            Some("QUEUED") | Some("RUNNING") => {}
            _ => panic!("job ended badly: {job}"),
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The MEMORY_KEYS jobs of the caller: (status, result).
async fn key_jobs(server: &Server, user: &str) -> Vec<(String, Value)> {
    let (_, body) = gql(
        server,
        Some(user),
        "{ jobs(first: 100) { nodes { kind status result } } }",
        json!({}),
    )
    .await;
    data(&body)["jobs"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "MEMORY_KEYS")
        .map(|j| {
            (
                j["status"].as_str().unwrap().to_owned(),
                j["result"].clone(),
            )
        })
        .collect()
}

/// Waits until the caller has `n` keys (at most a minute), then returns them.
async fn wait_for_keys(server: &Server, user: &str, n: usize) -> Vec<(String, String)> {
    let started = Instant::now();
    loop {
        let found = keys(server, user).await;
        if found.len() >= n {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} keys, {n} expected: {:?}",
            found.len(),
            key_jobs(server, user).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Default settings (the schedule every second here): a new user starts with keys on and
/// gets a context key for each turn after the first, without asking; a user who turns keys
/// off has none; a user who writes nothing more gets no more jobs; a new turn gets its key.
#[tokio::test(flavor = "multi_thread")]
async fn new_users_get_context_keys_as_they_write() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &[],
        &[
            ("DEEP_RECALL__JOBS__POLL_MS", "100"),
            ("DEEP_RECALL__MEMORY_KEYS__CHECK_SECS", "1"),
        ],
    );
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    add_messages(&server, &alice, &TURNS).await;
    assert_eq!(status(&server, &alice).await["enabled"], true);
    add_messages(&server, &bob, &TURNS).await;
    let (_, body) = gql(
        &server,
        Some(&bob),
        &format!("mutation {{ memoryKeysEnable(enabled: false) {STATUS} }}"),
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["memoryKeysEnable"],
        json!({ "enabled": false, "keys": 0 })
    );

    // Each turn after the first: the turn before, then the turn.
    let mut found = wait_for_keys(&server, &alice, 3).await;
    found.sort_by(|a, b| a.1.cmp(&b.1));
    let ids = memory_of(&server, &alice).await;
    let mut expected: Vec<(String, String)> = (1..TURNS.len())
        .map(|i| {
            (
                format!("{}\n{}", TURNS[i - 1], TURNS[i]),
                ids[TURNS[i]].clone(),
            )
        })
        .collect();
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(found, expected);
    assert_eq!(
        status(&server, &bob).await,
        json!({ "enabled": false, "keys": 0 })
    );
    assert!(keys(&server, &bob).await.is_empty());

    // Nothing new written: no new job, however many times the schedule looks.
    let started = Instant::now();
    let jobs = loop {
        let jobs = key_jobs(&server, &alice).await;
        if !jobs.is_empty() && jobs.iter().all(|(status, _)| status == "SUCCEEDED") {
            break jobs;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{jobs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(key_jobs(&server, &alice).await.len(), jobs.len());

    // A new turn: a job keys it (and only it) with the turn before.
    const NEW: &str = "Biscuit already knows how to sit and give a paw.";
    add_messages(&server, &alice, &[NEW]).await;
    let found = wait_for_keys(&server, &alice, 4).await;
    assert_eq!(found.len(), 4, "{found:?}");
    let new = memory_of(&server, &alice).await[NEW].clone();
    assert!(
        found.contains(&(format!("{}\n{NEW}", TURNS[3]), new)),
        "{found:?}"
    );
    let started = Instant::now();
    loop {
        let jobs = key_jobs(&server, &alice).await;
        if jobs.iter().any(|(status, result)| {
            status == "SUCCEEDED" && result["context_keys"] == 1 && result["keys"] == 1
        }) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{jobs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
