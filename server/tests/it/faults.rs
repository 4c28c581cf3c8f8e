//! Faults: the database stopped under a running server and started again. Requests fail fast
//! with `UNAVAILABLE` (never hang), `/ready` says so, the process stays up, and it recovers
//! by itself with nothing lost. The database is a cluster of this test's own
//! (`scripts/pg.sh` with `DEEP_RECALL_PG_CLUSTER`), so that stopping it disturbs no other test.
use std::process::Command;
use std::time::{Duration, Instant};

use recall_core::testing::repo_root;
use serde_json::json;

use super::fixtures::{Server, Store, code, gql, token};

/// A Postgres cluster of its own on a free port; destroyed when dropped.
struct Cluster {
    name: String,
    port: u16,
}

impl Cluster {
    fn pg(&self, command: &str) -> std::process::Output {
        Command::new(repo_root().join("scripts/pg.sh"))
            .arg(command)
            .env("DEEP_RECALL_PG_CLUSTER", &self.name)
            .env("DEEP_RECALL_PG_PORT", self.port.to_string())
            .output()
            .unwrap()
    }

    fn start() -> (Cluster, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            name: format!("faults-{}-{port}", std::process::id()),
            port,
        };
        let out = cluster.pg("start");
        assert!(
            out.status.success(),
            "pg.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        (cluster, url)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg("destroy");
    }
}

async fn ready(server: &Server) -> u16 {
    reqwest::get(format!("{}/ready", server.base))
        .await
        .unwrap()
        .status()
        .as_u16()
}

const ADD: &str = "mutation($c: String!) { addMemory(input: { content: $c }) { id } }";
const SEARCH: &str =
    "query { search(query: \"lighthouse keeper\", topK: 3) { memory { content } } }";

#[tokio::test(flavor = "multi_thread")]
async fn the_database_going_away_and_coming_back() {
    let (cluster, url) = Cluster::start();
    let server = Server::start(&Store::Url(url), &["--no-chat"], &[]);
    let alice = token("alice", false, 600);
    let (_, body) = gql(
        &server,
        Some(&alice),
        ADD,
        json!({ "c": "My grandfather was a lighthouse keeper in Brittany." }),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(ready(&server).await, 200);

    // Stopped under load: every request answers UNAVAILABLE, soon.
    let out = cluster.pg("stop");
    assert!(out.status.success());
    let started = Instant::now();
    let requests: Vec<_> = (0..8)
        .map(|i| {
            let (base, alice) = (server.base.clone(), alice.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let (query, vars) = if i % 2 == 0 {
                    (SEARCH, json!({}))
                } else {
                    (
                        ADD,
                        json!({ "c": format!("written while the database is down {i}") }),
                    )
                };
                let body: serde_json::Value = reqwest::Client::new()
                    .post(format!("{base}/graphql"))
                    .bearer_auth(alice)
                    .json(&json!({ "query": query, "variables": vars }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (body, started.elapsed())
            })
        })
        .collect();
    for r in requests {
        let (body, took) = r.await.unwrap();
        assert_eq!(code(&body), "UNAVAILABLE", "{body}");
        assert!(took < Duration::from_secs(15), "failed fast: {took:?}");
    }
    assert_eq!(ready(&server).await, 503);
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "the process stays up");
    assert!(started.elapsed() < Duration::from_secs(30));

    // Started again: the server recovers by itself, with what was acknowledged.
    let out = cluster.pg("start");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ready(&server).await == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, body) = gql(&server, Some(&alice), SEARCH, json!({})).await;
    let found = body["data"]["search"].to_string();
    assert!(found.contains("lighthouse keeper in Brittany"), "{body}");
    // Nothing half-written by the failed requests.
    let (_, body) = gql(&server, Some(&alice), "{ me { memoryCount } }", json!({})).await;
    assert_eq!(body["data"]["me"]["memoryCount"], 1, "{body}");
    let (_, body) = gql(&server, Some(&alice), ADD, json!({ "c": "back again" })).await;
    assert!(body["errors"].is_null(), "{body}");
}
