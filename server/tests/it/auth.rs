//! Authentication at the door and CORS: hostile credentials are refused, each with its case.
use serde_json::json;

use super::fixtures::{SECRET, Server, Store, code, gql, now, token};

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
                "authorization,content-type",
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
    }

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
