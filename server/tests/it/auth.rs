//! Authentication at the door and CORS: hostile credentials are refused, each with its case.
use serde_json::json;

use super::fixtures::{SECRET, Server, Store, Ws, code, gql, now, token};

#[tokio::test(flavor = "multi_thread")]
async fn hostile_credentials_and_foreign_origins_are_refused() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[("DEEP_RECALL__CORS_ORIGINS", "[\"https://app.example\"]")],
    );

    // CORS: the allowlisted origin is told it may call; another is not.
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        let resp = reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", server.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-session-id,x-stainless-os",
            )
            .send()
            .await
            .unwrap();
        let got = resp
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got.as_deref() == Some(origin), allowed, "{origin}");
        assert_eq!(got.is_some(), allowed, "{origin}");
        if allowed {
            // The headers clients send (the session, the OpenAI SDK's) may be sent.
            let headers = resp.headers()["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .to_ascii_lowercase();
            assert!(headers.contains("x-session-id"), "{headers}");
            assert!(headers.contains("x-stainless-os"), "{headers}");
        }
    }
    // A page may read the wait a refusal asks for, and the request id.
    let resp = reqwest::Client::new()
        .get(format!("{}/health", server.base))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("retry-after") && exposed.contains("x-request-id"),
        "{exposed}"
    );

    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "alice", "exp": now() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-server-secret-at-all"),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "alice" }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let cases: [(&str, Option<String>); 6] = [
        ("no credentials", None),
        ("expired", Some(token("alice", false, -120))),
        ("forged", Some(forged)),
        (
            "alg none",
            Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.".into()),
        ),
        ("no exp", Some(no_exp)),
        ("garbage", Some("not a token".into())),
    ];
    for (case, auth) in cases {
        let (status, body) = gql(&server, auth.as_deref(), "{ me { id } }", json!({})).await;
        assert_eq!(
            (status, code(&body)),
            (401, "UNAUTHENTICATED"),
            "{case}: {body}"
        );
    }
    // X-User-Id means nothing without --allow-anonymous.
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", server.base))
        .header("x-user-id", "alice")
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // An operator role needs an admin token.
    let (_, body) = gql(
        &server,
        Some(&token("alice", false, 600)),
        "mutation { deleteUserData(user: \"bob\") { existed } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_ends_when_its_token_expires() {
    let store = Store::embedded();
    let server = Server::start(&store, &["--no-chat"], &[]);
    // A token valid for three more seconds; the subscription starts fine.
    let issued = std::time::Instant::now();
    let short = token("erin", false, 3);
    let mut ws = Ws::as_user(&server, &short).await;
    ws.subscribe(
        "events",
        "subscription { memoryEvents { memoryId action } }",
        json!({}),
    )
    .await;
    // A token without that limit keeps its connection.
    let long = token("erin", false, 600);
    let mut other = Ws::as_user(&server, &long).await;
    other
        .subscribe(
            "events",
            "subscription { memoryEvents { memoryId action } }",
            json!({}),
        )
        .await;
    let closed = ws.next().await;
    let waited = issued.elapsed();
    assert_eq!(
        closed,
        Err("4403 UNAUTHENTICATED: the token has expired".to_owned()),
        "after {waited:?}"
    );
    // `exp` is in whole seconds: between two and three seconds after issue, plus slack.
    assert!(
        waited >= std::time::Duration::from_secs(2) && waited < std::time::Duration::from_secs(12),
        "{waited:?}"
    );
    // The other connection still delivers events.
    let (_, body) = gql(
        &server,
        Some(&long),
        "mutation { addMemory(input: { content: \"still here\" }) { id } }",
        json!({}),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    let event = other.next().await.unwrap();
    assert_eq!(
        event["payload"]["data"]["memoryEvents"]["action"], "ADDED",
        "{event}"
    );
}

#[test]
fn anonymous_mode_stays_on_loopback_unless_told_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_deep-recall"));
        cmd.args(["--data-dir", dir.path().to_str().unwrap()])
            .arg("--models-dir")
            .arg(recall_core::testing::models_dir())
            .args(["serve", "--no-chat", "--allow-anonymous"])
            .args(extra)
            .env_remove("DATABASE_URL")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    // On every interface: refused before anything is opened.
    let out = serve(&["--bind", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dangerously-allow-anonymous-on-network"),
        "{err}"
    );
    // With the loud flag it starts, and says so.
    let mut child = serve(&[
        "--bind",
        "0.0.0.0:0",
        "--dangerously-allow-anonymous-on-network",
    ])
    .spawn()
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(line.starts_with("deep-recall: listening on"), "{line}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARNING: anonymous mode"), "{err}");
}
