//! Deep memory through the front doors: GraphQL jobs (the packaged chat model writes
//! questions; training), their progress over `jobProgress`, enabling only what helps, searches
//! that use the adapter while it is on, typed errors, and the CLI on the same store after the
//! server stopped (the adapter survives the restart).
use std::process::Command;

use serde_json::{Value, json};

use super::fixtures::{Server, Store, Ws, code, data, gql, token};
use recall_core::testing::deep_memory::{NAMES, desk, facts};
use recall_core::testing::models_dir;

const JOB: &str = "id kind status progress message result error";

/// Follows one of the user's jobs over `jobProgress` until it ends: its messages and last
/// state.
async fn watch(server: &Server, user: &str, id: &str) -> (Vec<String>, Value) {
    let mut ws = Ws::as_user(server, user).await;
    ws.subscribe(
        "job",
        &format!("subscription($id: ID!) {{ jobProgress(id: $id) {{ {JOB} }} }}"),
        json!({ "id": id }),
    )
    .await;
    let mut messages = Vec::new();
    loop {
        let m = ws.next().await.unwrap();
        assert_eq!(m["type"], "next", "{m}");
        let j = m["payload"]["data"]["jobProgress"].clone();
        if let Some(msg) = j["message"].as_str() {
            messages.push(msg.to_owned());
        }
        match j["status"].as_str() {
            Some("SUCCEEDED") => return (messages, j),
            Some("QUEUED") | Some("RUNNING") => {}
            _ => panic!("job ended badly: {j}"),
        }
    }
}

async fn top(server: &Server, user: &str, q: &str) -> (String, f64) {
    let (_, body) = gql(
        server,
        Some(user),
        "query($q: String!) { search(query: $q, topK: 1, mode: VECTOR) { memory { id } score } }",
        json!({ "q": q }),
    )
    .await;
    let hit = &data(&body)["search"][0];
    (
        hit["memory"]["id"].as_str().unwrap().to_owned(),
        hit["score"].as_f64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_memory_from_graphql_and_the_cli() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &[],
        &[
            ("DEEP_RECALL__JOBS__POLL_MS", "100"),
            // Retrain after two new memories, looking every second, two questions per job.
            ("DEEP_RECALL__DEEP_MEMORY__RETRAIN_AFTER", "2"),
            ("DEEP_RECALL__DEEP_MEMORY__CHECK_SECS", "1"),
            ("DEEP_RECALL__DEEP_MEMORY__MAX_PAIRS_PER_RUN", "2"),
        ],
    );
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    let add = "mutation($c: String!) { addMemory(input: { content: $c }) { id } }";
    // Ten people, five facts each (50 pairs), and each one's memory of the help desk.
    let facts = facts(10, 5);
    let mut pairs = Vec::new();
    for (i, (memory, question)) in facts.iter().enumerate() {
        let (_, body) = gql(&server, Some(&alice), add, json!({ "c": memory })).await;
        let id = data(&body)["addMemory"]["id"].as_str().unwrap().to_owned();
        pairs.push(json!({ "question": question, "memoryId": id }));
        if i % 5 == 4 {
            gql(
                &server,
                Some(&alice),
                add,
                json!({ "c": desk(NAMES[i / 5]) }),
            )
            .await;
        }
    }
    let (_, body) = gql(&server, Some(&bob), add, json!({ "c": "Bob keeps bees." })).await;
    let bobs = data(&body)["addMemory"]["id"].as_str().unwrap().to_owned();

    let status = "query { deepMemoryStatus { pairs generatedPairs heldOutPairs trained enabled \
                  active version evaluation { helps pairs before { recallAt10 mrr } after { \
                  recallAt10 mrr } } } }";
    let (_, body) = gql(&server, Some(&alice), status, json!({})).await;
    assert_eq!(data(&body)["deepMemoryStatus"]["trained"], false, "{body}");

    // Nothing to enable yet.
    let enable = "mutation { deepMemoryEnable { enabled active } }";
    let (_, body) = gql(&server, Some(&alice), enable, json!({})).await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");

    // The packaged chat model writes questions in a job (at most the server's two here).
    let (_, body) = gql(
        &server,
        Some(&alice),
        &format!("mutation {{ deepMemoryGenerate(input: {{ maxPairs: 5 }}) {{ {JOB} }} }}"),
        json!({}),
    )
    .await;
    let job = data(&body)["deepMemoryGenerate"].clone();
    assert_eq!(job["kind"], "DEEP_MEMORY_GENERATE", "{body}");
    let (_, done) = watch(&server, &alice, job["id"].as_str().unwrap()).await;
    assert_eq!(done["result"]["pairs"], 2, "{done}");
    let (_, body) = gql(&server, Some(&alice), status, json!({})).await;
    assert_eq!(
        data(&body)["deepMemoryStatus"]["generatedPairs"],
        2,
        "{body}"
    );

    // The user's own pairs: only of their own memories, well formed.
    let add_pairs = "mutation($p: [DeepMemoryPairInput!]!) { deepMemoryAddPairs(pairs: $p) }";
    let (_, body) = gql(
        &server,
        Some(&alice),
        add_pairs,
        json!({ "p": [{ "question": "Who keeps bees?", "memoryId": bobs }] }),
    )
    .await;
    assert_eq!(code(&body), "NOT_FOUND", "{body}");
    let (_, body) = gql(
        &server,
        Some(&alice),
        add_pairs,
        json!({ "p": [{ "question": "Who?", "memoryId": "x" }] }),
    )
    .await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");
    let (_, body) = gql(&server, Some(&alice), add_pairs, json!({ "p": pairs })).await;
    assert_eq!(data(&body)["deepMemoryAddPairs"], 50, "{body}");

    // Training, watched epoch by epoch.
    let (_, body) = gql(
        &server,
        Some(&alice),
        &format!("mutation {{ deepMemoryTrain(input: {{ epochs: 30 }}) {{ {JOB} }} }}"),
        json!({}),
    )
    .await;
    let job = data(&body)["deepMemoryTrain"].clone();
    assert_eq!(job["kind"], "DEEP_MEMORY_TRAIN", "{body}");
    let (messages, done) = watch(&server, &alice, job["id"].as_str().unwrap()).await;
    // The last word is the evaluation (epochs are reported as they end, at most four times a
    // second: this training is quicker than that).
    assert!(
        messages
            .last()
            .is_some_and(|m| m.starts_with("held-out recall@10")),
        "{messages:?}"
    );
    assert_eq!(done["result"]["version"], 1, "{done}");
    let (_, body) = gql(&server, Some(&alice), status, json!({})).await;
    let s = data(&body)["deepMemoryStatus"].clone();
    assert_eq!(
        (s["trained"].clone(), s["enabled"].clone()),
        (json!(true), json!(false)),
        "{s}"
    );
    let e = &s["evaluation"];
    assert_eq!(e["helps"], true, "{s}");
    assert!(
        e["after"]["mrr"].as_f64() > e["before"]["mrr"].as_f64(),
        "{s}"
    );

    // On: searches use it; off: they do not. Bob is untouched.
    // What is Hugo allergic to?
    let question = facts[7 * 5 + 3].1.clone();
    let plain = top(&server, &alice, &question).await;
    let bob_plain = top(&server, &bob, &question).await;
    let (_, body) = gql(&server, Some(&alice), enable, json!({})).await;
    assert_eq!(
        data(&body)["deepMemoryEnable"],
        json!({ "enabled": true, "active": true })
    );
    let adapted = top(&server, &alice, &question).await;
    assert_ne!(plain.1, adapted.1);
    assert_eq!(top(&server, &bob, &question).await, bob_plain);
    let (_, body) = gql(&server, Some(&bob), status, json!({})).await;
    assert_eq!(data(&body)["deepMemoryStatus"]["trained"], false, "{body}");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { deepMemoryDisable { enabled active } }",
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["deepMemoryDisable"]["enabled"], false, "{body}");
    assert_eq!(top(&server, &alice, &question).await, plain);
    gql(&server, Some(&alice), enable, json!({})).await;

    // Two new memories: the server retrains on its own (writing their questions first).
    for c in [
        "Keiko took up archery in June.",
        "Lars repainted his boat green.",
    ] {
        gql(&server, Some(&alice), add, json!({ "c": c })).await;
    }
    let retrained = loop {
        let (_, body) = gql(
            &server,
            Some(&alice),
            "query { jobs(first: 5) { edges { node { kind status result } } } }",
            json!({}),
        )
        .await;
        let job = data(&body)["jobs"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"].clone())
            .find(|j| {
                j["kind"] == "DEEP_MEMORY_TRAIN"
                    && (j["status"] != "SUCCEEDED" || j["result"]["version"] == 2)
            });
        match job {
            Some(j) if j["status"] == "SUCCEEDED" => break j,
            Some(j) => assert!(j["status"] == "QUEUED" || j["status"] == "RUNNING", "{j}"),
            None => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // Only the two memories stored since the last training were asked about.
    assert_eq!(
        retrained["result"]["generated"]["memories"], 2,
        "{retrained}"
    );
    gql(&server, Some(&alice), enable, json!({})).await;
    drop(server);

    // The CLI on the same store: the adapter survived the restart.
    let cli = |args: &[&str]| {
        let Store::Embedded(dir) = &store else {
            unreachable!()
        };
        let out = Command::new(env!("CARGO_BIN_EXE_deep-recall"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--models-dir")
            .arg(models_dir())
            .args(["--device", "cpu", "--json", "deep-memory"])
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("DEEP_RECALL_DATA_DIR")
            .env("DEEP_RECALL__DEEP_MEMORY__MAX_PAIRS_PER_RUN", "1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (rc, out, err) = cli(&["status", "--user", "alice"]);
    assert_eq!(rc, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["enabled"].clone(), v["active"].clone()),
        (json!(true), json!(true)),
        "{v}"
    );
    let (rc, out, err) = cli(&["eval", "--user", "alice"]);
    assert_eq!(rc, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["pairs"].as_u64().unwrap() >= 5, "{v}");
    assert!(
        v["after"]["recall@10"].as_f64() >= v["before"]["recall@10"].as_f64(),
        "{v}"
    );
    assert!(
        v["after"]["mrr"].as_f64() > v["before"]["mrr"].as_f64(),
        "{v}"
    );
    // `generate` writes at most the settings' pairs per run, unless told.
    let (rc, out, err) = cli(&["generate", "--user", "alice"]);
    assert_eq!(rc, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pairs"], 1, "{v}");
    let (rc, out, err) = cli(&["train", "--user", "alice", "--epochs", "10"]);
    assert_eq!(rc, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], 3, "{v}");
    let (rc, out, _) = cli(&["disable", "--user", "alice"]);
    assert_eq!(rc, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["enabled"],
        false
    );
    // Bad input: an exit code of 2 and a message.
    let (rc, _, err) = cli(&["enable", "--user", "nobody"]);
    assert_eq!(rc, Some(2), "{err}");
    assert!(err.contains("no deep memory adapter"), "{err}");
}
