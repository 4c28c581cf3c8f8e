//! Test fixtures shared by the workspace's tests (feature `testing`): a real Postgres
//! (`DATABASE_URL`, else the project's local server started through `scripts/pg.sh`) with one
//! fresh database per test, and the models directory.
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

pub mod bench;
pub mod deep_memory;
pub mod tiny;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("core has a parent")
        .to_path_buf()
}

/// The models directory: `DEEP_RECALL_MODELS_DIR`, else `./models` at the repository root.
pub fn models_dir() -> PathBuf {
    std::env::var_os("DEEP_RECALL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"))
}

/// The default embedding model's directory; fails the test with advice when it is missing.
/// A second embedding model for tests of a change of model: MiniLM cut to its first two
/// layers (other vectors, same dimension), written as `root/minilm-2-layers` (the weights are
/// linked, not copied).
pub fn two_layer_minilm(root: &std::path::Path) -> PathBuf {
    let src = minilm_dir();
    let dir = root.join("minilm-2-layers");
    std::fs::create_dir_all(&dir).expect("model directory");
    for entry in std::fs::read_dir(&src).expect("MiniLM directory") {
        let entry = entry.expect("MiniLM file");
        if entry.file_name() != "config.json" {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name()))
                .expect("link a MiniLM file");
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).expect("MiniLM config"))
            .expect("MiniLM config is JSON");
    config["num_hidden_layers"] = 2.into();
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write the config");
    dir
}

pub fn minilm_dir() -> PathBuf {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} has no model: run `deep-recall models fetch` (or scripts/test.sh) first",
        dir.display()
    );
    dir
}

/// URL of a Postgres server database that tests may create databases from: `DATABASE_URL`,
/// else the project's local server (`scripts/pg.sh start`, which installs it if needed).
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/pg.sh"))
            .arg("start")
            .output()
            .expect("run scripts/pg.sh");
        assert!(
            out.status.success(),
            "scripts/pg.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A fresh, empty Postgres database; dropped by [`PgDb::drop_db`].
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub async fn create() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dr_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            chrono::Utc::now().timestamp_micros() % 1_000_000
        );
        let admin = Database::connect(admin_url())
            .await
            .expect("connect to Postgres");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = with_database(admin_url(), &name);
        Self { name, url }
    }

    pub async fn connect(&self) -> DatabaseConnection {
        Database::connect(&self.url)
            .await
            .expect("connect to test database")
    }

    pub async fn drop_db(self) {
        let admin = Database::connect(admin_url())
            .await
            .expect("connect to Postgres");
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .ok();
        admin.close().await.ok();
    }
}
