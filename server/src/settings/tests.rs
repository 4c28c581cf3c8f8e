//! Settings: loading, layering and validation.
use figment::Jail;

use super::*;

fn err(file: Option<&Path>) -> String {
    Settings::load(file).unwrap_err().to_string()
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail returns figment's own error
fn layers_apply_in_order_and_unknown_keys_are_refused() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "deep-recall.toml",
            "graphiql = true\n[limits]\nrequests_per_minute = 10\nburst = 3\n\
             [store]\ndata_dir = \"/srv/dr\"\n",
        )?;
        let file = Path::new("deep-recall.toml");
        jail.set_env("DEEP_RECALL__LIMITS__BURST", "7");
        jail.set_env("DEEP_RECALL__AUTH__JWT_SECRET", "s3cret");
        jail.set_env("DEEP_RECALL__STORE__DATABASE_URL", "postgres://u:pw@db/x");
        jail.set_env(
            "DEEP_RECALL__CORS_ORIGINS",
            "[\"https://a.example\", \"https://b.example\"]",
        );
        jail.set_env("DEEP_RECALL__MODELS__DEVICE", "cpu");
        jail.set_env("DEEP_RECALL_OTHER", "x");
        let s = Settings::load(Some(file)).unwrap();
        assert!(s.graphiql);
        assert_eq!(s.limits.requests_per_minute, 10);
        assert_eq!(s.limits.burst, 7, "the environment overrides the file");
        assert_eq!(s.limits.max_streams_per_user, 4, "defaults stay");
        assert_eq!(s.limits.max_subscriptions_per_user, 16, "defaults stay");
        assert_eq!(s.store.data_dir, PathBuf::from("/srv/dr"));
        assert_eq!(
            s.store.database_url.as_deref(),
            Some("postgres://u:pw@db/x")
        );
        assert_eq!(s.cors_origins.len(), 2);
        assert_eq!(s.models.device().unwrap(), DeviceConfig::Cpu);
        assert_eq!(s.auth.jwt_secret.as_deref(), Some("s3cret"));
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cret"), "secrets are redacted");
        assert!(!debug.contains("pw@db"), "database passwords are redacted");
        let shown = s.redacted_json().to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("pw@db"),
            "{shown}"
        );
        assert_eq!(s.redacted_json()["limits"]["burst"], 7, "{shown}");

        jail.create_file("bad.toml", "[limits]\nrequests_per_minut = 10\n")?;
        let e = err(Some(Path::new("bad.toml")));
        assert!(e.contains("requests_per_minut"), "{e}");
        assert!(err(Some(Path::new("missing.toml"))).contains("missing.toml"));
        jail.clear_env();
        jail.set_env("DEEP_RECALL__STORE__DATA_DIRR", "x");
        let e = err(None);
        assert!(e.contains("data_dirr"), "{e}");
        jail.clear_env();
        jail.set_env("DEEP_RECALL__LIMITS__MAX_STREAMS_PER_USER", "0");
        let e = err(None);
        assert!(e.contains("max_streams_per_user"), "{e}");
        jail.clear_env();
        jail.set_env("DEEP_RECALL__LIMITS__MAX_SUBSCRIPTIONS_PER_USER", "0");
        let e = err(None);
        assert!(e.contains("max_subscriptions_per_user"), "{e}");
        jail.clear_env();
        jail.set_env("DEEP_RECALL__MODELS__DEVICE", "tpu");
        let e = err(None);
        assert!(e.contains("tpu"), "{e}");
        jail.clear_env();
        jail.set_env("DEEP_RECALL__STORE__HNSW_EF_SEARCH", "0");
        let e = err(None);
        assert!(e.contains("hnsw_ef_search"), "{e}");
        jail.set_env("DEEP_RECALL__STORE__HNSW_EF_SEARCH", "400");
        assert_eq!(Settings::load(None).unwrap().store.hnsw_ef_search, 400);
        jail.clear_env();
        jail.set_env("DEEP_RECALL__CHAT__PREFIX_CACHE_MIB", "70000");
        let e = err(None);
        assert!(e.contains("prefix_cache_mib"), "{e}");
        jail.set_env("DEEP_RECALL__CHAT__PREFIX_CACHE_MIB", "0");
        assert_eq!(Settings::load(None).unwrap().chat.prefix_cache_mib, 0);
        jail.clear_env();
        // New users start with keys on unless the settings say otherwise (the store is told:
        // tests/it/memory_keys.rs).
        assert!(Settings::load(None).unwrap().memory_keys.new_users);
        jail.set_env("DEEP_RECALL__MEMORY_KEYS__NEW_USERS", "false");
        assert!(!Settings::load(None).unwrap().memory_keys.new_users);
        jail.clear_env();
        jail.set_env("DEEP_RECALL__MEMORY_KEYS__SESSIONS", "true");
        let keys = Settings::load(None).unwrap().memory_keys.options(true);
        assert!(!keys.facts && keys.sessions && keys.context, "{keys:?}");
        jail.set_env("DEEP_RECALL__MEMORY_KEYS__FACTS", "true");
        let keys = Settings::load(None).unwrap().memory_keys.options(true);
        assert!(keys.facts && keys.sessions && keys.context, "{keys:?}");
        // Without a chat model only context keys are written.
        let keys = Settings::load(None).unwrap().memory_keys.options(false);
        assert!(!keys.facts && !keys.sessions && keys.context, "{keys:?}");
        jail.set_env("DEEP_RECALL__MEMORY_KEYS__FACTS", "false");
        jail.set_env("DEEP_RECALL__MEMORY_KEYS__SESSIONS", "false");
        jail.set_env("DEEP_RECALL__MEMORY_KEYS__CONTEXT", "false");
        let e = err(None);
        assert!(
            e.contains("memory_keys") && e.contains("at least one"),
            "{e}"
        );
        Ok(())
    });
}

/// Values that would hang, panic or silently stop a schedule are refused at start, naming
/// the setting.
#[test]
#[allow(clippy::result_large_err)] // figment's Jail returns figment's own error
fn out_of_range_periods_and_options_are_refused() {
    Jail::expect_with(|jail| {
        for (var, value, named) in [
            (
                "DEEP_RECALL__DEEP_MEMORY__QUESTIONS_PER_MEMORY",
                "8",
                "deep_memory",
            ),
            (
                "DEEP_RECALL__DEEP_MEMORY__MAX_PAIRS_PER_RUN",
                "0",
                "deep_memory",
            ),
            (
                "DEEP_RECALL__LIMITS__REQUEST_TIMEOUT_SECS",
                "0",
                "request_timeout_secs",
            ),
            (
                "DEEP_RECALL__CACHE__TTL_SECS",
                "99999999999",
                "cache.ttl_secs",
            ),
            (
                "DEEP_RECALL__MEMORY_KEYS__CHECK_SECS",
                "99999999999",
                "memory_keys.check_secs",
            ),
            (
                "DEEP_RECALL__DEEP_MEMORY__CHECK_SECS",
                "99999999999",
                "deep_memory.check_secs",
            ),
        ] {
            jail.clear_env();
            jail.set_env(var, value);
            let e = err(None);
            assert!(e.contains(named), "{var}={value}: {e}");
        }
        jail.clear_env();
        jail.set_env("DEEP_RECALL__BACKUP__DIR", "/tmp/b");
        for every in ["999999999999999d", "400d"] {
            jail.set_env("DEEP_RECALL__BACKUP__EVERY", every);
            let e = err(None);
            assert!(e.contains("backup.every"), "{every}: {e}");
        }
        jail.set_env("DEEP_RECALL__BACKUP__EVERY", "7d");
        assert!(Settings::load(None).is_ok());
        Ok(())
    });
}
