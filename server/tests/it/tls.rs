//! HTTPS with rustls: a client that trusts the server's self-signed certificate gets through
//! (HTTP and GraphQL), one that does not is refused; SIGHUP swaps the certificate for new
//! connections; broken or half-given files stop the start with exit code 2.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use super::fixtures::{Server, Store, token};

/// A self-signed certificate for localhost and 127.0.0.1 (openssl, from Debian's base).
fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A leaf, not a CA (webpki refuses a CA certificate as the server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A client that trusts only `cert` (no built-in roots), with no connection reuse.
fn trusting(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_verified_certificate_and_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert1, key1) = self_signed(dir.path(), "one");
    let (cert2, key2) = self_signed(dir.path(), "two");
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&cert1, &cert).unwrap();
    std::fs::copy(&key1, &key).unwrap();
    let server = Server::start(
        &Store::embedded(),
        &[
            "--no-chat",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );

    let one = trusting(&cert1);
    let health = one
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let body: serde_json::Value = one
        .post(format!("{}/graphql", server.base))
        .bearer_auth(token("alice", false, 600))
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["me"]["id"], "alice", "{body}");

    // A client that does not trust the certificate is refused during the handshake.
    let stranger = trusting(&cert2)
        .get(format!("{}/health", server.base))
        .send()
        .await;
    assert!(
        stranger.is_err(),
        "an untrusted certificate must fail verification"
    );
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let plain = reqwest::get(format!(
        "{}/health",
        server.base.replacen("https", "http", 1)
    ))
    .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // A new certificate on disk, SIGHUP: new connections get it.
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    server.signal("HUP");
    let two = trusting(&cert2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = two.get(format!("{}/health", server.base)).send().await {
            assert_eq!(r.status().as_u16(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        trusting(&cert1)
            .get(format!("{}/health", server.base))
            .send()
            .await
            .is_err(),
        "the old certificate is gone"
    );
    // A broken file on reload keeps the working certificate.
    std::fs::write(&cert, "not a certificate").unwrap();
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = two
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(server.logs().contains("reload failed"), "{}", server.logs());
}

#[test]
fn broken_or_half_given_certificates_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "one");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    let data = dir.path().join("data");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_deep-recall"))
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--no-chat", "--bind", "127.0.0.1:0"])
            .args(["--jwt-secret", super::fixtures::SECRET])
            .args(extra)
            .output()
            .unwrap()
    };
    for extra in [
        vec![
            "--tls-cert",
            junk.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            cert.to_str().unwrap(),
        ],
        vec!["--tls-cert", cert.to_str().unwrap()],
    ] {
        let out = run(&extra);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("tls"), "{extra:?}: {err}");
    }
}
