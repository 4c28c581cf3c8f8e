use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use recall_core::testing::{PgDb, models_dir, repo_root};
use serde_json::Value;

/// One store for a test: the embedded store in a temporary directory, or a fresh Postgres
/// database.
pub(super) enum Backend {
    Embedded(tempfile::TempDir),
    Postgres(PgDb),
}

impl Backend {
    fn args(&self) -> Vec<String> {
        match self {
            Backend::Embedded(dir) => vec!["--data-dir".into(), dir.path().display().to_string()],
            Backend::Postgres(db) => vec!["--database-url".into(), db.url.clone()],
        }
    }
}

/// Runs `test` on a fresh Postgres database, dropped afterwards.
pub(super) async fn on_postgres<F: std::future::Future<Output = ()>>(
    test: impl FnOnce(Backend) -> F,
) {
    let db = PgDb::create().await;
    let name = db.name.clone();
    test(Backend::Postgres(db)).await;
    PgDb {
        url: String::new(),
        name,
    }
    .drop_db()
    .await;
}

pub(super) fn cli(backend: &Backend, args: &[&str]) -> Output {
    cli_with(backend, args, &[])
}

/// [`cli`] with environment variables set (settings as `DEEP_RECALL__*`).
pub(super) fn cli_with(backend: &Backend, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(backend, args);
    cmd.envs(env.iter().copied());
    cmd.output().expect("run deep-recall")
}

/// The command [`cli`] runs, to start without waiting.
pub(super) fn command(backend: &Backend, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deep-recall"));
    cmd.args(backend.args())
        .arg("--models-dir")
        .arg(models_dir())
        .arg("--device")
        .arg("cpu")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DEEP_RECALL_DATA_DIR");
    cmd
}

pub(super) fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn sample() -> PathBuf {
    repo_root().join("examples/sample-conversation.jsonl")
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn top_contents(v: &Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["content"].as_str().unwrap().to_owned())
        .collect()
}

async fn round_trip(backend: Backend) {
    let sample = sample();
    let n = lines(&sample);
    let ingested = ok_json(cli(
        &backend,
        &[
            "--json",
            "ingest",
            "--user",
            "alice",
            sample.to_str().unwrap(),
        ],
    ));
    assert_eq!(ingested["messages"], n);
    assert_eq!(ingested["memories"], n);
    assert_eq!(ingested["sessions"], 4);
    // New users have keys on: a context key for every turn with one before it, and a second
    // for each of the three answers to a question that has a turn before it ("What kind of
    // work brought you there?", "Is the boat repaired now?", "How did it feel?").
    let keys = ingested["keys"].as_u64().unwrap() as usize;
    assert_eq!(keys, n - 4 + 3);

    let found = ok_json(cli(
        &backend,
        &[
            "--json",
            "search",
            "--mode",
            "vector",
            "--user",
            "alice",
            "-k",
            "3",
            "what is she allergic to?",
        ],
    ));
    let hits = found["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert!(top_contents(&found)[0].contains("peanuts"), "{found}");
    // Pure vector mode reports raw cosine similarity, best first.
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    for h in hits {
        let (s, d) = (
            h["score"].as_f64().unwrap(),
            h["distance"].as_f64().unwrap(),
        );
        assert!((s + d - 1.0).abs() < 1e-5);
    }
    assert!(found["next_cursor"].is_string());

    // The next page continues where the first stopped.
    let cursor = found["next_cursor"].as_str().unwrap();
    let next = ok_json(cli(
        &backend,
        &[
            "--json",
            "search",
            "--user",
            "alice",
            "-k",
            "3",
            "--mode",
            "vector",
            "--cursor",
            cursor,
            "what is she allergic to?",
        ],
    ));
    let next_ids: Vec<i64> = next["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_i64().unwrap())
        .collect();
    assert_eq!(next_ids.len(), 3);
    assert!(
        hits.iter()
            .all(|h| !next_ids.contains(&h["id"].as_i64().unwrap()))
    );

    let in_session = ok_json(cli(
        &backend,
        &[
            "--json",
            "search",
            "--user",
            "alice",
            "--session",
            "2024-05-20-weekend",
            "-k",
            "50",
            "pets",
        ],
    ));
    let sessions: Vec<&str> = in_session["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 6);
    assert!(sessions.iter().all(|s| *s == "2024-05-20-weekend"));

    // A question asked at a given time: "last week" is read against it (the time signal
    // of a turn written in that week is 1).
    for (now, in_food, in_weekend) in [
        ("2024-03-16T12:00:00Z", 1.0, 0.0),
        ("2024-05-27T12:00:00Z", 0.0, 1.0),
    ] {
        let asked = ok_json(cli(
            &backend,
            &[
                "--json",
                "search",
                "--user",
                "alice",
                "-k",
                "50",
                "--now",
                now,
                "What did I tell you last week?",
            ],
        ));
        let time_of = |session: &str| {
            let hit = asked["hits"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["session"] == session)
                .unwrap_or_else(|| panic!("{now}: no hit of {session}"));
            hit["signals"]["time"].as_f64().unwrap()
        };
        assert_eq!(time_of("2024-03-09-food"), in_food, "{now}");
        assert_eq!(time_of("2024-05-20-weekend"), in_weekend, "{now}");
    }

    // Text output for people.
    let text = cli(&backend, &["search", "--user", "alice", "-k", "1", "cat"]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("Miso"), "{text}");
    assert!(text.starts_with("  1. ["), "{text}");

    // Another user sees nothing of Alice's.
    let bob = ok_json(cli(&backend, &["--json", "search", "--user", "bob", "cat"]));
    assert!(bob["hits"].as_array().unwrap().is_empty());

    let export = ok_json(cli(&backend, &["export", "--user", "alice"]));
    assert_eq!(export["format"], "deep-recall.export.v1");
    assert_eq!(export["messages"].as_array().unwrap().len(), n);
    // Keys are exported with the memories they are for.
    assert_eq!(export["memories"].as_array().unwrap().len(), n + keys);
    assert_eq!(export["sessions"].as_array().unwrap().len(), 4);
    assert!(
        export["memories"][0]["embeddings"][0]
            .get("vector")
            .is_none()
    );
    let with_vectors = ok_json(cli(
        &backend,
        &["export", "--user", "alice", "--with-vectors"],
    ));
    assert_eq!(
        with_vectors["memories"][0]["embeddings"][0]["vector"]
            .as_array()
            .unwrap()
            .len(),
        384
    );

    let forgot = ok_json(cli(&backend, &["--json", "forget", "--user", "alice"]));
    assert_eq!(forgot["messages"], n);
    assert_eq!(forgot["embeddings"], n + keys);
    let gone = cli(&backend, &["export", "--user", "alice"]);
    assert_eq!(
        gone.status.code(),
        Some(3),
        "export of a forgotten user is not found"
    );
    let none = ok_json(cli(
        &backend,
        &["--json", "search", "--user", "alice", "cat"],
    ));
    assert!(none["hits"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_search_export_forget_embedded() {
    round_trip(Backend::Embedded(tempfile::tempdir().unwrap())).await;
}

/// `ingest` writes the keys a new user gets (keys on by default) before it returns, so that
/// the next search reads them with no server running; `--no-keys` leaves them to the
/// server's job, and new users without keys (`memory_keys.new_users = false`) get none.
async fn ingest_writes_keys(backend: Backend) {
    let sample = sample();
    let path = sample.to_str().unwrap();
    let ingest = |user: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["--json", "ingest", "--user", user];
        args.extend_from_slice(extra);
        args.push(path);
        ok_json(cli_with(&backend, &args, env))
    };
    // A context key for every turn with one before it in its session (4 sessions), and a
    // second for each of the three answers.
    assert_eq!(ingest("alice", &[], &[])["keys"], lines(&sample) - 4 + 3);
    assert_eq!(ingest("bob", &["--no-keys"], &[])["keys"], 0);
    let off = [("DEEP_RECALL__MEMORY_KEYS__NEW_USERS", "false")];
    assert_eq!(ingest("carol", &[], &off)["keys"], 0);
    // The reply says neither word; its key holds the turn before it, which says both.
    let reply = "Exactly, that's the project.";
    let found = |user: &str| {
        top_contents(&ok_json(cli(
            &backend,
            &[
                "--json",
                "search",
                "--user",
                user,
                "--mode",
                "text",
                "-k",
                "10",
                "Tagus estuary",
            ],
        )))
    };
    let keyed = found("alice");
    assert!(keyed.iter().any(|c| c.starts_with(reply)), "{keyed:?}");
    for user in ["bob", "carol"] {
        let plain = found(user);
        assert!(
            plain.iter().any(|c| c.contains("Tagus estuary")),
            "{plain:?}"
        );
        assert!(!plain.iter().any(|c| c.starts_with(reply)), "{plain:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_writes_keys_embedded() {
    ingest_writes_keys(Backend::Embedded(tempfile::tempdir().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_writes_keys_postgres() {
    on_postgres(ingest_writes_keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_search_export_forget_postgres() {
    on_postgres(round_trip).await;
}

#[test]
fn bad_files_are_refused_and_nothing_is_written() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"session": "s", "role": "user", "content": "I like tea"}"#;
    let cases = [
        (
            format!("{good}\n{{\"session\": \"s\", \"role\": \"user\""),
            "line 2: malformed",
        ),
        (
            format!(
                "{good}\n{good}\n{{\"session\": \"s\", \"role\": \"bot\", \"content\": \"x\"}}"
            ),
            "line 3: unknown role \"bot\"",
        ),
        (
            format!("{good}\n{{\"session\": \"s\", \"role\": \"user\", \"content\": \"\"}}"),
            "line 2: content is empty",
        ),
        (
            format!(
                "{{\"session\": \"s\", \"role\": \"user\", \"content\": \"{}\"}}",
                "a".repeat(100_000)
            ),
            "line 1: line is",
        ),
        (
            format!(
                "{good}\n{{\"session\": \"s\", \"role\": \"user\", \"content\": \"x\", \"ts\": \"May 1\"}}"
            ),
            "line 2: bad ts",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&file, text).unwrap();
        let out = cli(&backend, &["ingest", "--user", "u", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "case {i}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "case {i}: {stderr}");
    }
    let export = cli(&backend, &["export", "--user", "u"]);
    assert_eq!(export.status.code(), Some(3), "nothing was written");

    // Errors are JSON too with --json.
    let file = dir.path().join("bad0.jsonl");
    let out = cli(
        &backend,
        &["--json", "ingest", "--user", "u", file.to_str().unwrap()],
    );
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "InvalidInput");

    // A file that is not there is not found (3), a folder is not a file to read (2): the
    // caller's to mend, not an internal error (1).
    let missing = dir.path().join("missing.jsonl");
    let out = cli(
        &backend,
        &["--json", "ingest", "--user", "u", missing.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(3));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "NotFound", "{err}");
    let out = cli(
        &backend,
        &["ingest", "--user", "u", dir.path().to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = cli(&backend, &["eval", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // A command line the parser refuses is JSON too with --json (and bad input, 2).
    let out = cli(
        &backend,
        &["--json", "search", "--user", "u", "--since", "May", "q"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "InvalidInput", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--since"),
        "{err}"
    );
    // Every ranking flag is checked, on the plain vector path too.
    let out = cli(
        &backend,
        &[
            "search", "--user", "u", "--mode", "vector", "--fusion", "bogus", "q",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A --details file that cannot be written is said before the run, not after it.
    let data = repo_root().join("eval/data/recall-mini.json");
    let out = cli(
        &backend,
        &[
            "eval",
            data.to_str().unwrap(),
            "--details",
            "/no/such/dir/d.jsonl",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--details"),
        "{out:?}"
    );
}

#[test]
fn missing_models_and_unreachable_database_have_their_exit_codes() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_deep-recall"))
        .args(["--models-dir", empty.path().to_str().unwrap(), "--data-dir"])
        .arg(empty.path().join("data"))
        .args(["search", "--user", "u", "anything"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("deep-recall models fetch"));

    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_deep-recall"))
        .args([
            "--database-url",
            "postgres://nobody:secret@127.0.0.1:9/none",
            "forget",
            "--user",
            "u",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "passwords never reach the output: {stderr}"
    );
    drop(backend);
}

#[test]
fn models_list_reports_presence() {
    let out = Command::new(env!("CARGO_BIN_EXE_deep-recall"))
        .args(["--json", "--models-dir"])
        .arg(models_dir())
        .args(["models", "list"])
        .output()
        .unwrap();
    let v = ok_json(out);
    let minilm = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "all-MiniLM-L6-v2")
        .unwrap();
    assert_eq!(minilm["present"], true);
    assert_eq!(minilm["role"], "embedding");
}

/// JSON lines on stdout, one report per mode.
pub(super) fn json_lines(out: Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON report per line"))
        .collect()
}

#[test]
fn optional_models_are_loaded_from_their_flags() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let missing = tempfile::tempdir().unwrap();
    for flag in ["--cross-encoder", "--emotion-model"] {
        let out = cli(
            &backend,
            &[
                flag,
                missing.path().to_str().unwrap(),
                "search",
                "--user",
                "u",
                "x",
            ],
        );
        assert_eq!(out.status.code(), Some(4), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("config.json"),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn generate_streams_an_answer_from_the_packaged_model() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let out = cli(
        &backend,
        &[
            "generate",
            "--max-tokens",
            "40",
            "What is the capital of France?",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));
    let v = ok_json(cli(
        &backend,
        &[
            "--json",
            "generate",
            "--max-tokens",
            "5",
            "--seed",
            "1",
            "Count to ten.",
        ],
    ));
    assert_eq!(v["completion_tokens"], 5);
    assert_eq!(v["finish_reason"], "length");
    assert!(v["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(v["confidence"].as_f64().unwrap() < 0.0);
    // A fixed-length decode for timing: the end of the turn is held back for --min-tokens,
    // and the speed is reported beside the usage.
    let v = ok_json(cli(
        &backend,
        &[
            "--json",
            "generate",
            "--max-tokens",
            "24",
            "--min-tokens",
            "24",
            "Say hi.",
        ],
    ));
    assert_eq!(v["completion_tokens"], 24);
    for key in ["ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    let too_many = cli(
        &backend,
        &["generate", "--max-tokens", "4", "--min-tokens", "5", "hi"],
    );
    assert_eq!(
        too_many.status.code(),
        Some(2),
        "min over max is a usage error"
    );
    let missing = cli(&backend, &["generate", "--model", "/nope/x.gguf", "hi"]);
    assert_eq!(missing.status.code(), Some(4));
}

#[test]
fn generate_runs_a_safetensors_model_directory() {
    let backend = Backend::Embedded(tempfile::tempdir().unwrap());
    let models = tempfile::tempdir().unwrap();
    let dir = recall_core::testing::tiny::write_hf(models.path(), "qwen3", "qwen3");
    let v = ok_json(cli(
        &backend,
        &[
            "--json",
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--max-tokens",
            "6",
            "w17 w42 w5",
        ],
    ));
    assert_eq!(v["completion_tokens"], 6, "{v}");
    assert_eq!(v["finish_reason"], "length");
    let words: Vec<&str> = v["text"].as_str().unwrap().split_whitespace().collect();
    assert_eq!(words.len(), 6, "{v}");
    assert!(words.iter().all(|w| w.starts_with('w')), "{v}");
    // A directory that is not a model is refused with the model exit code.
    let empty = tempfile::tempdir().unwrap();
    let out = cli(
        &backend,
        &["generate", "--model", empty.path().to_str().unwrap(), "hi"],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keys_hash_reads_the_key_from_stdin_or_a_file_never_argv() {
    use std::io::Write;
    let hash = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_deep-recall"))
            .args(["keys", "hash"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    // sha256("svc-key-1"), as `auth::hash_api_key` computes it.
    let expected = recall_server::auth::hash_api_key("svc-key-1");
    let out = hash(&[], "svc-key-1\n");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.txt");
    std::fs::write(&file, "  svc-key-1  \n").unwrap();
    let out = hash(&["--file", file.to_str().unwrap()], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
    // On the command line it is refused; an empty key too.
    assert_eq!(hash(&["svc-key-1"], "").status.code(), Some(2));
    assert_eq!(hash(&[], "\n").status.code(), Some(2));
}

/// A user moves from Postgres to the embedded store and back through a backup file; a
/// damaged file and a restore over existing data are refused with exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_across_stores() {
    let db = PgDb::create().await;
    let (name, url) = (db.name.clone(), db.url.clone());
    let pg = Backend::Postgres(db);
    let sample = sample();
    // Each user's memories and their keys (new users have keys on).
    let mut rows = 0;
    for user in ["alice", "bob"] {
        let ingested = ok_json(cli(
            &pg,
            &["--json", "ingest", "--user", user, sample.to_str().unwrap()],
        ));
        rows += ingested["memories"].as_u64().unwrap() + ingested["keys"].as_u64().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.backup");
    let made = ok_json(cli(
        &pg,
        &["--json", "backup", "--out", file.to_str().unwrap()],
    ));
    let n = lines(&sample) as u64;
    assert!(rows > 2 * n, "keys are backed up with the memories");
    assert_eq!(made["users"], 2);
    assert_eq!(made["memories"], rows);
    assert_eq!(made["embeddings"], rows);
    assert_eq!(made["bytes"], std::fs::metadata(&file).unwrap().len());

    let laptop = Backend::Embedded(tempfile::tempdir().unwrap());
    let restored = ok_json(cli(&laptop, &["--json", "restore", file.to_str().unwrap()]));
    assert_eq!(restored["users"], 2);
    assert_eq!(restored["memories"], rows);
    let query = [
        "--json",
        "search",
        "--user",
        "alice",
        "-k",
        "5",
        "what is she allergic to?",
    ];
    assert_eq!(
        top_contents(&ok_json(cli(&laptop, &query))),
        top_contents(&ok_json(cli(&pg, &query)))
    );
    let export = |b: &Backend| {
        let mut v = ok_json(cli(b, &["export", "--user", "alice", "--with-vectors"]));
        v.as_object_mut().unwrap().remove("exported_at");
        v.as_object_mut().unwrap().remove("audit");
        // The key job's watermarks start over after a restore (ids may shift; the job skips
        // the memories that have their keys).
        let user = v["user"].as_object_mut().unwrap();
        for pass in [
            "memory_keys_through",
            "memory_sessions_through",
            "memory_context_through",
        ] {
            user.remove(pass);
        }
        v
    };
    assert_eq!(
        export(&laptop),
        export(&pg),
        "the same data, ids and vectors"
    );

    // Over existing data: refused, then allowed for one user or with --force.
    let again = cli(&laptop, &["restore", file.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let one = ok_json(cli(
        &laptop,
        &["--json", "restore", "--user", "bob", file.to_str().unwrap()],
    ));
    assert_eq!(
        (one["users"].as_u64(), one["replaced"].as_u64()),
        (Some(1), Some(1))
    );
    let forced = ok_json(cli(
        &laptop,
        &["--json", "restore", "--force", file.to_str().unwrap()],
    ));
    assert_eq!(forced["replaced"], 2);

    // Maintenance on both stores keeps the data searchable.
    for b in [&pg, &laptop] {
        let done = ok_json(cli(b, &["--json", "optimize"]));
        assert!(done["bytes_after"].as_u64().unwrap() > 0, "{done}");
        assert_eq!(
            top_contents(&ok_json(cli(b, &query)))[0],
            top_contents(&ok_json(cli(&pg, &query)))[0]
        );
    }
    let rebuilt = ok_json(cli(&pg, &["--json", "optimize"]))["reindexed"].clone();
    let rebuilt: Vec<&str> = rebuilt
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(rebuilt.contains(&"ix_memories_tsv"), "{rebuilt:?}");
    assert!(rebuilt.iter().any(|n| n.contains("hnsw")), "{rebuilt:?}");

    // A truncated file: exit 2, and the store is as it was.
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let fresh = Backend::Embedded(tempfile::tempdir().unwrap());
    let bad = cli(&fresh, &["restore", cut.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid backup"));
    let nobody = cli(&fresh, &["export", "--user", "alice"]);
    assert_eq!(nobody.status.code(), Some(3), "nothing was written");

    // With the data key: encrypted, and unreadable without it.
    let key_file = dir.path().join("data.key");
    std::fs::write(&key_file, "ab".repeat(32)).unwrap();
    let sealed = dir.path().join("sealed.backup");
    let made = ok_json(cli(
        &laptop,
        &[
            "--json",
            "--encryption-key-file",
            key_file.to_str().unwrap(),
            "backup",
            "--out",
            sealed.to_str().unwrap(),
        ],
    ));
    assert!(made["encrypted_with"].is_string(), "{made}");
    let other = Backend::Embedded(tempfile::tempdir().unwrap());
    let refused = cli(&other, &["restore", sealed.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("encrypted with data key"));
    let mut with_env = Command::new(env!("CARGO_BIN_EXE_deep-recall"));
    with_env
        .args(other.args())
        .args(["--json", "restore", sealed.to_str().unwrap()])
        .env("DEEP_RECALL_ENCRYPTION_KEY_FILE", &key_file);
    let opened = ok_json(with_env.output().unwrap());
    assert_eq!(opened["users"], 2);

    // And back: the embedded copy of one user into an empty Postgres database.
    let back = dir.path().join("alice.backup");
    ok_json(cli(
        &laptop,
        &[
            "--json",
            "backup",
            "--user",
            "alice",
            "--out",
            back.to_str().unwrap(),
        ],
    ));
    let db2 = PgDb::create().await;
    let (name2, url2) = (db2.name.clone(), db2.url.clone());
    let pg2 = Backend::Postgres(db2);
    ok_json(cli(&pg2, &["--json", "restore", back.to_str().unwrap()]));
    assert_eq!(export(&pg2), export(&pg));
    // Again over itself, in a fresh process (its index creation must not wait on the
    // restore's own deletions).
    let again = ok_json(cli(
        &pg2,
        &["--json", "restore", "--force", back.to_str().unwrap()],
    ));
    assert_eq!(again["replaced"], 1);
    assert_eq!(export(&pg2), export(&pg));
    for (name, url) in [(name, url), (name2, url2)] {
        drop(url);
        PgDb {
            url: String::new(),
            name,
        }
        .drop_db()
        .await;
    }
}

/// Encryption at rest from the command line: what `ingest` stores with a data key is sealed
/// in the SQLite file yet searchable; without the key, or with another, the store does not
/// open and the error names the missing key; `keys rotate` moves every row to a new key.
#[test]
fn data_key_seals_the_store_and_rotates() {
    let store = tempfile::TempDir::new().unwrap();
    let backend = Backend::Embedded(store);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
    std::fs::write(&a, [7u8; 32]).unwrap();
    std::fs::write(&b, "cd".repeat(32)).unwrap();
    let with = |keys: &[(&str, &Path)], args: &[&str]| {
        let mut all: Vec<&str> = Vec::new();
        for (flag, file) in keys {
            all.push(flag);
            all.push(file.to_str().unwrap());
        }
        all.extend_from_slice(args);
        cli(&backend, &all)
    };
    let sample = sample();
    let n = lines(&sample) as u64;
    let ingested = ok_json(with(
        &[("--encryption-key-file", &a)],
        &[
            "--json",
            "ingest",
            "--user",
            "alice",
            sample.to_str().unwrap(),
        ],
    ));
    let Backend::Embedded(path) = &backend else {
        unreachable!()
    };
    let raw = || {
        std::fs::read_dir(path.path())
            .unwrap()
            .map(|e| {
                String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned()
            })
            .collect::<String>()
    };
    assert!(!raw().contains("peanut"), "message text in the clear");
    let query = [
        "--json",
        "search",
        "--user",
        "alice",
        "-k",
        "3",
        "what is she allergic to?",
    ];
    let found = ok_json(with(&[("--encryption-key-file", &a)], &query));
    assert!(top_contents(&found)[0].contains("peanuts"), "{found}");

    let id_a = recall_core::crypto::DataKey::from_bytes([7u8; 32]).id();
    for keys in [vec![], vec![("--encryption-key-file", b.as_path())]] {
        let refused = with(&keys, &query);
        assert_eq!(refused.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(&id_a), "{stderr}");
    }

    let rotated = ok_json(with(
        &[
            ("--encryption-key-file", &b),
            ("--previous-encryption-key-file", &a),
        ],
        &["--json", "keys", "rotate"],
    ));
    // Every row: the messages, their memories and the memories' keys.
    let keys = ingested["keys"].as_u64().unwrap();
    assert!(keys > 0);
    assert_eq!(rotated["resealed"], 2 * n + keys, "{rotated}");
    assert_eq!(rotated["retired"], serde_json::json!([id_a]));
    let found = ok_json(with(&[("--encryption-key-file", &b)], &query));
    assert!(top_contents(&found)[0].contains("peanuts"), "{found}");
    assert!(!raw().contains("peanut"));
}

/// `deep-recall config` prints what a deployment runs with, secrets redacted, and fails on an
/// unknown key like `serve` would.
#[test]
fn config_shows_the_effective_settings() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deep-recall"));
        cmd.args(["--json", "config"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let shown = ok_json(run(&[
        ("DEEP_RECALL__BIND", "0.0.0.0:9000"),
        ("DEEP_RECALL__AUTH__JWT_SECRET", "hunter2-hunter2"),
        ("DEEP_RECALL__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
    ]));
    assert_eq!(shown["bind"], "0.0.0.0:9000");
    assert_eq!(shown["auth"]["jwt_secret"], "<redacted>");
    assert_eq!(shown["trusted_proxies"][0], "10.0.0.0/8");
    assert!(!shown.to_string().contains("hunter2"));
    let bad = run(&[("DEEP_RECALL__STORE__DATABSE_URL", "x")]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("databse_url"));
    let bad = run(&[("DEEP_RECALL__TRUSTED_PROXIES", "[\"10.0.0.0/99\"]")]);
    assert_eq!(bad.status.code(), Some(2));
    let half = run(&[("DEEP_RECALL__TLS__CERT", "/etc/ssl/chain.pem")]);
    assert_eq!(half.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&half.stderr).contains("tls"));
}
