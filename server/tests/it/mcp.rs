//! The MCP server, driven by the official MCP Python SDK (`server/tests/mcp_client.py`):
//! `deep-recall mcp` over standard I/O for one user, every tool and bad input, and the memory
//! keys its job runner writes; `/mcp` under
//! `serve` over streamable HTTP, with two users who must not see each other, and no token.
use std::process::Command;

use recall_core::testing::{models_dir, repo_root};
use serde_json::Value;

use super::fixtures::{Server, Store, metrics, python, sample, token};

/// Runs the client script with `args` and `env` (which `keys` passes on to the server it
/// starts); its JSON report.
async fn client(args: Vec<String>, env: &[(&str, &str)], logs: impl Fn() -> String) -> Value {
    let script = repo_root().join("server/tests/mcp_client.py");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .args(args)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "MCP client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "MCP client printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn error(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a tool error: {v}"))
}

fn hits(v: &Value) -> Vec<&str> {
    v["ok"]["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("expected hits: {v}"))
        .iter()
        .map(|h| h["content"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_serves_every_tool_for_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "stdio".to_owned(),
        env!("CARGO_BIN_EXE_deep-recall").to_owned(),
        "--data-dir".to_owned(),
        dir.path().display().to_string(),
        "--models-dir".to_owned(),
        models_dir().display().to_string(),
        "--device".to_owned(),
        "cpu".to_owned(),
        "mcp".to_owned(),
        "--user".to_owned(),
        "carol".to_owned(),
    ];
    let r = client(args, &[], String::new).await;
    assert_eq!(r["server"], "deep-recall", "{r}");
    assert!(r["instructions"].as_str().unwrap().contains("memory"));

    // Five tools, each with a schema for its arguments and its result.
    let tools = r["tools"].as_object().unwrap();
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "add_memory",
            "chat",
            "delete_memory",
            "list_sessions",
            "search_memories"
        ]
    );
    let search = &tools["search_memories"];
    assert_eq!(search["input"]["required"], serde_json::json!(["query"]));
    assert!(search["input"]["properties"]["top_k"].is_object());
    assert!(search["output"]["properties"]["hits"].is_object());

    // Added memories come back from a search, best first, with ids and scores.
    let sister = &r["add_sister"]["ok"];
    assert_eq!(sister["kind"], "fact", "{r}");
    assert_eq!(sister["tags"], serde_json::json!(["family"]));
    assert!(r["add_allergy"]["ok"]["id"].is_string(), "{r}");
    let found = hits(&r["search"]);
    assert_eq!(found.len(), 2);
    assert!(found[0].contains("Lyon"), "{found:?}");
    assert!(r["search"]["ok"]["hits"][0]["score"].as_f64().unwrap() > 0.0);

    // A chat turn answers with the memory in its context, and its session is listed.
    let chat = &r["chat"]["ok"];
    assert!(!chat["text"].as_str().unwrap().is_empty(), "{r}");
    assert!(chat["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(
        chat["context"].to_string().contains("Lyon"),
        "the memory reaches the prompt: {chat}"
    );
    let sessions = &r["sessions"]["ok"]["sessions"];
    assert_eq!(sessions[0]["id"], "trip", "{r}");
    // Kinds and roles narrow a search: the chat's own turns, by who said them.
    let said = |name: &str| -> Vec<(String, String)> {
        r[name]["ok"]["hits"]
            .as_array()
            .unwrap_or_else(|| panic!("expected hits for {name}: {r}"))
            .iter()
            .map(|h| (h["kind"].to_string(), h["role"].to_string()))
            .collect()
    };
    let user = said("search_user_messages");
    assert!(!user.is_empty(), "{r}");
    assert!(
        user.iter()
            .all(|(k, role)| k == "\"message\"" && role == "\"user\""),
        "{user:?}"
    );
    let assistant = said("search_assistant_messages");
    assert!(!assistant.is_empty(), "{r}");
    assert!(
        assistant.iter().all(|(_, role)| role == "\"assistant\""),
        "{assistant:?}"
    );
    let facts = said("search_facts");
    assert!(!facts.is_empty(), "{r}");
    assert!(facts.iter().all(|(k, _)| k == "\"fact\""), "{facts:?}");
    assert!(error(&r["search_bad_role"]).contains("narrator"), "{r}");

    // Deleting a memory removes it from search; a second delete finds nothing.
    assert_eq!(r["delete"]["ok"]["deleted"], true, "{r}");
    assert!(
        !hits(&r["search_after_delete"])
            .iter()
            .any(|c| c.contains("Margot") && !c.contains("?")),
        "{r}"
    );
    assert!(
        !r["search_after_delete"]["ok"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == sister["id"]),
        "{r}"
    );
    assert!(error(&r["delete_again"]).starts_with("NOT_FOUND: "), "{r}");

    // Bad input is a tool error the model can read, with the stable code first.
    assert!(error(&r["delete_not_a_number"]).starts_with("BAD_INPUT: "));
    assert!(error(&r["search_too_many"]).starts_with("BAD_INPUT: "));
    assert!(error(&r["add_empty"]).starts_with("BAD_INPUT: "), "{r}");
    assert!(
        error(&r["add_bad_importance"]).starts_with("BAD_INPUT: "),
        "{r}"
    );
    assert!(
        error(&r["chat_bad_temperature"]).starts_with("BAD_INPUT: "),
        "{r}"
    );
    assert!(
        error(&r["chat_too_many_memories"]).starts_with("BAD_INPUT: "),
        "{r}"
    );
    // Arguments that do not fit the schema are refused before the tool runs, naming the field.
    assert!(error(&r["add_missing_content"]).contains("content"), "{r}");
    stays_true(&r);
}

/// A fact replaced by a newer one (the client's `stays_true`): the search finds the current
/// one, the history on request or as of a time between the two, metadata conditions and tags
/// narrow it; a memory with a time to live is forgotten when it runs out.
fn stays_true(r: &Value) {
    const PARIS: &str = "I live in Paris, near the canal.";
    const BERLIN: &str = "I moved to Berlin, to Kreuzberg.";
    let (old, new) = (&r["home_old"]["ok"], &r["home_new"]["ok"]);
    assert_eq!(new["supersedes"], old["id"], "{r}");
    let now = hits(&r["home_now"]);
    assert!(now.contains(&BERLIN) && !now.contains(&PARIS), "{now:?}");
    let all = &r["home_all"]["ok"]["hits"];
    let replaced = all
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["content"] == PARIS)
        .unwrap_or_else(|| panic!("history with include_superseded: {r}"));
    assert_eq!(replaced["superseded_by"], new["id"]);
    let then = hits(&r["home_then"]);
    assert!(then.contains(&PARIS) && !then.contains(&BERLIN), "{then:?}");
    assert_eq!(hits(&r["home_priority"]), [BERLIN]);
    // By when each was written: the newer one since a time between the two, the older until.
    assert_eq!(hits(&r["home_written_since"]), [BERLIN], "{r}");
    let until = hits(&r["home_written_until"]);
    assert!(
        until.contains(&PARIS) && !until.contains(&BERLIN),
        "{until:?}"
    );
    // A hit carries what it was stored with.
    assert_eq!(
        r["home_priority"]["ok"]["hits"][0]["metadata"]["since"], "2024-03-01T00:00:00Z",
        "{r}"
    );
    assert_eq!(new["metadata"]["priority"], 3, "{r}");
    assert_eq!(hits(&r["home_since"]), [PARIS]);
    let mut tagged = hits(&r["home_tagged"]);
    tagged.sort_unstable();
    assert_eq!(tagged, [PARIS, BERLIN]);
    assert!(error(&r["bad_op"]).starts_with("BAD_INPUT: "), "{r}");
    assert!(
        error(&r["supersede_missing"]).starts_with("NOT_FOUND: "),
        "{r}"
    );
    assert!(
        error(&r["supersede_twice"]).starts_with("BAD_INPUT: "),
        "{r}"
    );
    let locker = "My gym locker code is 4512.";
    assert!(r["locker"]["ok"]["expires_at"].is_string(), "{r}");
    assert!(hits(&r["locker_before"]).contains(&locker), "{r}");
    assert!(!hits(&r["locker_after"]).contains(&locker), "{r}");
    // Or at a time given: kept until then, forgotten after; not both ways at once.
    let bike = "My bike lock code is 7781.";
    assert!(r["locker_at"]["ok"]["expires_at"].is_string(), "{r}");
    assert!(hits(&r["locker_before"]).contains(&bike), "{r}");
    assert!(!hits(&r["locker_after"]).contains(&bike), "{r}");
    assert!(error(&r["locker_both"]).starts_with("BAD_INPUT: "), "{r}");
}

/// `mcp` runs the job runner and the key schedule as `serve` does (it is often the only
/// process on its store): a new user's messages get their memory keys, so a reply that says
/// none of a text search's words is found through its key (the turn before it, which does);
/// with keys off for new users it is not.
#[tokio::test(flavor = "multi_thread")]
async fn stdio_writes_memory_keys() {
    for keys_on in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = [
            "keys",
            // Seconds to wait for the reply: a key comes within ~2 s here (a check a second).
            if keys_on { "90" } else { "6" },
            env!("CARGO_BIN_EXE_deep-recall"),
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--models-dir",
            models_dir().to_str().unwrap(),
            "--device",
            "cpu",
            "mcp",
            "--user",
            "dana",
            "--no-chat",
        ]
        .map(str::to_owned)
        .into();
        let env = [
            ("DEEP_RECALL__MEMORY_KEYS__CHECK_SECS", "1"),
            ("DEEP_RECALL__JOBS__POLL_MS", "50"),
            (
                "DEEP_RECALL__MEMORY_KEYS__NEW_USERS",
                if keys_on { "true" } else { "false" },
            ),
        ];
        let r = client(args, &env, String::new).await;
        assert!(r["turn"]["ok"]["id"].is_string(), "{r}");
        assert!(r["reply"]["ok"]["id"].is_string(), "{r}");
        let found: Vec<&str> = r["found"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(found.iter().any(|c| c.contains("Tagus")), "{r}");
        assert_eq!(r["reply_found"], keys_on, "keys on: {keys_on}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_serves_each_token_its_own_memory() {
    let store = Store::postgres().await;
    let server = Server::start(&store, &["--no-chat"], &[]);
    let (alice, bob) = (token("alice", false, 600), token("bob", false, 600));
    let r = client(
        vec![
            "http".to_owned(),
            format!("{}/mcp", server.base),
            alice,
            bob,
        ],
        &[],
        || server.logs(),
    )
    .await;

    // Without credentials nothing is served.
    assert_eq!(r["anonymous"]["connected"], false, "{r}");
    assert_eq!(r["alice_tools"].as_array().unwrap().len(), 5, "{r}");

    // Alice finds her memory; Bob neither finds it, nor lists her session, nor deletes it.
    assert!(r["alice_add"]["ok"]["id"].is_string(), "{r}");
    assert!(hits(&r["alice_search"])[0].contains("flowerpot"), "{r}");
    assert!(
        !hits(&r["bob_search"])
            .iter()
            .any(|c| c.contains("flowerpot")),
        "{r}"
    );
    assert_eq!(r["bob_sessions"]["ok"]["sessions"], serde_json::json!([]));
    assert!(
        error(&r["bob_delete_alice"]).starts_with("NOT_FOUND: "),
        "{r}"
    );
    assert!(hits(&r["alice_search_again"])[0].contains("flowerpot"));
    assert_eq!(r["alice_sessions"]["ok"]["sessions"][0]["id"], "home");

    // At the door: no token is a 401 asking for one; a Host the settings do not list (DNS
    // rebinding) is refused even with a valid token.
    let init = serde_json::json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" });
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/mcp", server.base))
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let resp = http
        .post(format!("{}/mcp", server.base))
        .bearer_auth(token("alice", false, 60))
        .header("host", "attacker.example")
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "{:?}", resp.text().await);

    // The calls are counted per tool and outcome.
    let page = metrics(&server).await;
    assert!(
        sample(
            &page,
            "deep_recall_requests_total{transport=\"mcp\",operation=\"delete_memory\",outcome=\"NOT_FOUND\"}"
        ) >= 1.0,
        "{page}"
    );
}
