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

/// A small tmpfs of the test's own, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` where this process may not mount (not root): the test says so and skips.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Fills the file system with `path` until a write fails with "no space".
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // Single pages may still fit; take those too.
    while f.write_all(&block[..512]).is_ok() {}
    let _ = f.sync_all();
}

const ADD_BATCH: &str = "mutation($m: [MessageInput!]!) { addMessages(messages: $m) { id } }";

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_on_the_embedded_store() {
    let Some(disk) = Tmpfs::mount("48m") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let store = Store::Embedded(tempfile::tempdir_in(disk.0.path()).unwrap());
    let args = ["--no-chat"];
    let env = [("DEEP_RECALL__LIMITS__REQUESTS_PER_MINUTE", "0")];
    let server = Server::start(&store, &args, &env);
    let alice = token("alice", false, 600);
    let batch = |n: usize| -> serde_json::Value {
        let m: Vec<_> = (0..5)
            .map(|i| {
                json!({ "session": "disk", "role": "USER",
                    "content": format!("batch {n} message {i}: {}", "the tide came in. ".repeat(40)) })
            })
            .collect();
        json!({ "m": m })
    };
    let (_, body) = gql(&server, Some(&alice), ADD_BATCH, batch(0)).await;
    assert!(body["errors"].is_null(), "{body}");

    fill(&disk.0.path().join("filler"));
    // Writes go on until the database has no room left; each answer is a whole success or a
    // clear refusal.
    let mut acked: u64 = 1;
    let mut refused = None;
    for n in 1..2000 {
        let (_, body) = gql(&server, Some(&alice), ADD_BATCH, batch(n)).await;
        if body["errors"].is_null() {
            acked += 1;
        } else {
            refused = Some(body);
            break;
        }
    }
    let refused = refused.expect("a full disk refuses writes");
    assert_eq!(code(&refused), "UNAVAILABLE", "{refused}");
    let message = refused["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("disk is full"), "{message}");
    // Reads still work, and the process stays up.
    let (_, body) = gql(&server, Some(&alice), "{ me { memoryCount } }", json!({})).await;
    assert_eq!(body["data"]["me"]["memoryCount"], acked * 5, "{body}");
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // Room again: writes succeed without a restart, and after one everything acknowledged is
    // there.
    std::fs::remove_file(disk.0.path().join("filler")).unwrap();
    let (_, body) = gql(&server, Some(&alice), ADD_BATCH, batch(9999)).await;
    assert!(body["errors"].is_null(), "{body}");
    acked += 1;
    server.kill();
    let server = Server::start(&store, &args, &env);
    let (_, body) = gql(&server, Some(&alice), "{ me { memoryCount } }", json!({})).await;
    assert_eq!(body["data"]["me"]["memoryCount"], acked * 5, "{body}");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"disk\", first: 1000) { nodes { content } } }",
        json!({}),
    )
    .await;
    let nodes = body["data"]["messages"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len() as u64, acked * 5, "{body}");
    eprintln!("full disk: {acked} batches acknowledged, all there after a restart");
}
