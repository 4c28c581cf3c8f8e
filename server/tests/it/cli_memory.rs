//! Memories that stay true from the command line: `add` (replacing, labelled, with metadata,
//! expiring), `search` and `memories` with their filters (`--where`, `--tag`, `--as-of`,
//! `--include-superseded`), `history` and `delete`, on both stores.
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::cli::{Backend, cli, cli_with, ok_json, on_postgres};

fn add(backend: &Backend, user: &str, extra: &[&str], content: &str) -> Value {
    let mut args = vec!["--json", "add", "--user", user];
    args.extend_from_slice(extra);
    args.push(content);
    ok_json(cli(backend, &args))
}

/// The contents a search returns, best first.
fn search(backend: &Backend, user: &str, extra: &[&str], query: &str) -> Vec<String> {
    search_hits(backend, user, extra, query)
        .iter()
        .map(|h| h["content"].as_str().unwrap().to_owned())
        .collect()
}

fn search_hits(backend: &Backend, user: &str, extra: &[&str], query: &str) -> Vec<Value> {
    let mut args = vec!["--json", "search", "--user", user];
    args.extend_from_slice(extra);
    args.push(query);
    ok_json(cli(backend, &args))["hits"]
        .as_array()
        .unwrap()
        .clone()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

const PARIS: &str = "Dana lives in Paris, near the Canal Saint-Martin.";
const BERLIN: &str = "Dana lives in Berlin, in Kreuzberg.";
const CAT: &str = "Dana has a cat called Miso.";

async fn memories_stay_true(backend: Backend) {
    let q = "Where does Dana live?";
    let paris = add(
        &backend,
        "dana",
        &[
            "--tag",
            "home",
            "--metadata",
            r#"{"priority": 2, "city": "paris", "since": "2019-05-01T00:00:00Z"}"#,
        ],
        PARIS,
    );
    assert_eq!(paris["kind"], "fact");
    assert_eq!(paris["tags"], serde_json::json!(["home"]));
    assert_eq!(paris["metadata"]["city"], "paris");
    let paris_id = paris["id"].as_i64().unwrap();
    let old = paris_id.to_string();
    let berlin = add(
        &backend,
        "dana",
        &[
            "--tag",
            "home",
            "--metadata",
            r#"{"priority": 3, "city": "berlin", "since": "2024-03-01T00:00:00Z"}"#,
            "--supersedes",
            &old,
        ],
        BERLIN,
    );
    assert_eq!(berlin["supersedes"], paris_id);
    let berlin_id = berlin["id"].as_i64().unwrap();
    add(&backend, "dana", &["--tag", "pets"], CAT);

    // The current fact is found, the replaced one is history.
    let found = search(&backend, "dana", &[], q);
    assert!(found.iter().any(|c| c == BERLIN), "{found:?}");
    assert!(!found.iter().any(|c| c == PARIS), "{found:?}");
    let all = search_hits(&backend, "dana", &["--include-superseded"], q);
    let old_hit = all
        .iter()
        .find(|h| h["content"] == PARIS)
        .expect("the replaced fact with --include-superseded");
    assert_eq!(old_hit["superseded_by"], berlin_id);
    // As of a time between the two, Paris was true and Berlin not yet written.
    let (t1, t2) = (time(&paris["created_at"]), time(&berlin["created_at"]));
    assert!(t2 > t1);
    let between = (t1 + (t2 - t1) / 2).to_rfc3339();
    let then = search(&backend, "dana", &["--as-of", &between], q);
    assert!(then.iter().any(|c| c == PARIS), "{then:?}");
    assert!(!then.iter().any(|c| c == BERLIN), "{then:?}");
    // History from either end, oldest first.
    for id in [&old, &berlin_id.to_string()] {
        let history = ok_json(cli(
            &backend,
            &["--json", "history", "--user", "dana", id.as_str()],
        ));
        let ids: Vec<i64> = history["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [paris_id, berlin_id]);
    }

    // Listings: newest first, the current ones or the history too, by the same filters, a
    // page at a time.
    let list = |extra: &[&str]| {
        let mut args = vec!["--json", "memories", "--user", "dana"];
        args.extend_from_slice(extra);
        ok_json(cli(&backend, &args))
    };
    let ids = |v: &Value| -> Vec<i64> {
        v["memories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect()
    };
    let current = list(&["--tag", "home"]);
    assert_eq!(ids(&current), [berlin_id], "{current}");
    assert!(current["next_cursor"].is_null());
    let first = list(&["--tag", "home", "--include-superseded", "--first", "1"]);
    assert_eq!(ids(&first), [berlin_id], "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = list(&[
        "--tag",
        "home",
        "--include-superseded",
        "--first",
        "1",
        "--after",
        &cursor,
    ]);
    assert_eq!(ids(&second), [paris_id], "{second}");
    assert_eq!(
        ids(&list(&["--include-superseded", "--where", "city eq paris"])),
        [paris_id]
    );
    let eves = ok_json(cli(&backend, &["--json", "memories", "--user", "eve"]));
    assert_eq!(eves["memories"], serde_json::json!([]));
    let plain = cli(&backend, &["memories", "--user", "dana", "--tag", "pets"]);
    assert!(plain.status.success(), "{plain:?}");
    assert!(String::from_utf8_lossy(&plain.stdout).contains(CAT));
    let bad = cli(&backend, &["memories", "--user", "dana", "--first", "0"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // Metadata conditions and tags, all of which must hold.
    let only = |extra: &[&str]| search(&backend, "dana", extra, "Dana");
    assert_eq!(only(&["--where", "priority gte 3"]), [BERLIN]);
    assert_eq!(
        only(&["--include-superseded", "--where", "priority lt 3"]),
        [PARIS]
    );
    assert_eq!(
        only(&[
            "--include-superseded",
            "--where",
            r#"city in ["paris", "rome"]"#
        ]),
        [PARIS]
    );
    assert_eq!(only(&["--where", "city eq berlin"]), [BERLIN]);
    assert_eq!(only(&["--tag", "pets"]), [CAT]);
    assert!(only(&["--tag", "pets", "--where", "priority exists true"]).is_empty());
    // Times compare as times.
    assert_eq!(
        only(&[
            "--include-superseded",
            "--where",
            "since lt 2020-01-01T00:00:00+01:00"
        ]),
        [PARIS]
    );
    assert_eq!(
        only(&["--where", "since gt 2023-12-31T23:00:00-02:00"]),
        [BERLIN]
    );
    // A replaced memory is not replaced twice.
    let twice = cli(
        &backend,
        &["add", "--user", "dana", "--supersedes", &old, "x"],
    );
    assert_eq!(twice.status.code(), Some(2), "{twice:?}");

    // Expiry: found until its time runs out, then not.
    let code = "The door code for Dana's building is 4512.";
    add(&backend, "dana", &["--ttl-seconds", "3"], code);
    let door = search(&backend, "dana", &[], "door code");
    assert!(door.iter().any(|c| c == code), "{door:?}");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let door = search(&backend, "dana", &[], "door code");
    assert!(!door.iter().any(|c| c == code), "{door:?}");
    // A tag's time to live, from the settings.
    let ttl = [("DEEP_RECALL__STORE__TAG_TTL_SECONDS__SCRATCH", "3")];
    let note = "Dana's parking spot today is number 17.";
    let scratch = ok_json(cli_with(
        &backend,
        &["--json", "add", "--user", "dana", "--tag", "scratch", note],
        &ttl,
    ));
    let expires = time(&scratch["expires_at"]) - time(&scratch["created_at"]);
    assert!((2..=4).contains(&expires.num_seconds()), "{scratch}");

    // Another user can neither replace, read the history of, nor delete Dana's memories.
    let theirs = cli(
        &backend,
        &[
            "--json",
            "add",
            "--user",
            "eve",
            "--supersedes",
            &berlin_id.to_string(),
            "Eve's note",
        ],
    );
    assert_eq!(theirs.status.code(), Some(3), "{theirs:?}");
    let history = cli(&backend, &["history", "--user", "eve", &old]);
    assert_eq!(history.status.code(), Some(3), "{history:?}");
    let delete = cli(&backend, &["delete", "--user", "eve", &old]);
    assert_eq!(delete.status.code(), Some(3), "{delete:?}");
    assert!(search(&backend, "eve", &[], q).is_empty());
    // Bad input is refused and writes nothing.
    let bad = cli(
        &backend,
        &["add", "--user", "dana", "--metadata", "[1, 2", "x"],
    );
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let bad = cli(
        &backend,
        &["add", "--user", "dana", "--metadata", "[1, 2]", "a list"],
    );
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        !search(&backend, "dana", &[], "a list")
            .iter()
            .any(|c| c == "a list")
    );

    // An imported message's metadata is its memory's: `--where` finds it by what it came with.
    let dir = tempfile::tempdir().unwrap();
    let chat = dir.path().join("chat.jsonl");
    std::fs::write(
        &chat,
        concat!(
            r#"{"session": "s1", "role": "user", "content": "Dana locked her bike at the station.", "metadata": {"channel": "sms", "n": 1}}"#,
            "\n",
            r#"{"session": "s1", "role": "user", "content": "Dana locked her bike in the yard.", "metadata": {"channel": "email", "n": 2}}"#,
            "\n",
        ),
    )
    .unwrap();
    ok_json(cli(
        &backend,
        &["--json", "ingest", "--user", "dana", chat.to_str().unwrap()],
    ));
    let bike = "Where is Dana's bike?";
    assert_eq!(
        search(&backend, "dana", &["--where", "channel eq sms"], bike),
        ["Dana locked her bike at the station."]
    );
    let hits = search_hits(&backend, "dana", &["--where", "n gt 1"], bike);
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["metadata"]["channel"], "email", "{hits:?}");

    // Deleting a memory.
    let deleted = ok_json(cli(
        &backend,
        &["--json", "delete", "--user", "dana", &berlin_id.to_string()],
    ));
    assert_eq!(deleted["deleted"], 1);
    let found = search(&backend, "dana", &["--include-superseded"], q);
    assert!(!found.iter().any(|c| c == BERLIN), "{found:?}");
    // The chain is relinked: the fact Berlin replaced is current again.
    let found = search(&backend, "dana", &[], q);
    assert!(found.iter().any(|c| c == PARIS), "{found:?}");
    let gone = cli(
        &backend,
        &["delete", "--user", "dana", &berlin_id.to_string()],
    );
    assert_eq!(gone.status.code(), Some(3), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_stay_true_from_the_cli_embedded() {
    memories_stay_true(Backend::Embedded(tempfile::tempdir().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_stay_true_from_the_cli_postgres() {
    on_postgres(memories_stay_true).await;
}
