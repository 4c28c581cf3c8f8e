//! The REST routes against their OpenAPI 3.1 document (`/openapi.json`), checked by
//! schemathesis (PyPI) against the live server: generated valid and invalid requests, with and
//! without credentials. No server error, every status and body as documented, invalid input
//! refused. Chat answers come from the fake provider, so that thousands of them are quick.
//! `DEEP_RECALL_SCHEMATHESIS_EXAMPLES` sets the cases per operation (100 here).
use std::process::Command;

use serde_json::Value;

use super::fixtures::{FakeProvider, Server, Store, python, token};

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_api_matches_its_openapi_document() {
    let fake = FakeProvider::start(0);
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &["--chat-url", &fake.url, "--chat-model-name", "fake-llm"],
        &[
            ("DEEP_RECALL__CHAT__SUMMARY_TRIGGER_MESSAGES", "0"),
            ("DEEP_RECALL__LIMITS__REQUESTS_PER_MINUTE", "0"),
            ("DEEP_RECALL__LIMITS__IP_REQUESTS_PER_MINUTE", "0"),
            ("DEEP_RECALL__LOG__FILTER", "warn"),
        ],
    );
    let doc: Value = reqwest::get(format!("{}/openapi.json", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/health",
            "/ready",
            "/v1/chat/completions",
            "/v1/embeddings",
            "/v1/models"
        ]
    );

    let examples = std::env::var("DEEP_RECALL_SCHEMATHESIS_EXAMPLES").unwrap_or("100".into());
    let report = tempfile::tempdir().unwrap();
    let args = vec![
        "-m".to_owned(),
        "schemathesis.cli".to_owned(),
        "run".to_owned(),
        format!("{}/openapi.json", server.base),
        "--header".to_owned(),
        format!(
            "Authorization: Bearer {}",
            token("conformance", false, 3600)
        ),
        // Every check but positive_data_acceptance: valid-looking input can still break a
        // rule the schema cannot say (the last message must be the user's, a prompt must fit
        // the model's window), and is then refused with 400, as documented.
        "--checks".to_owned(),
        "all".to_owned(),
        "--exclude-checks".to_owned(),
        "positive_data_acceptance".to_owned(),
        "--max-examples".to_owned(),
        examples,
        "--seed".to_owned(),
        "20261130".to_owned(),
        // One worker: with two, hypothesis parses lambda sources from both threads, and
        // CPython 3.11's `ast.parse` is not safe for that ("SystemError: AST constructor
        // recursion depth mismatch" in the coverage phase, a failure of the tool itself).
        "--workers".to_owned(),
        "1".to_owned(),
        "--request-timeout".to_owned(),
        "60".to_owned(),
        "--report".to_owned(),
        "json".to_owned(),
        "--report-dir".to_owned(),
        report.path().display().to_string(),
    ];
    let out =
        tokio::task::spawn_blocking(move || Command::new(python()).args(args).output().unwrap())
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("passed") || l.contains("test cases"))
        .collect();
    eprintln!("schemathesis: {}", summary.join(" | "));
}
