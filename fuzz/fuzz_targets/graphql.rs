//! The GraphQL request path: any bytes as a GraphQL-over-HTTP body, executed by the server's
//! schema (with its depth and complexity limits) over an embedded store, as an authenticated
//! user and as nobody. Every input gets an answer (data or errors), never a panic.
#![no_main]
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use recall_server::auth::{AuthMethod, Principal};
use recall_server::graphql::{AppSchema, build_schema};
use recall_server::settings::Settings;
use recall_server::state::AppState;

struct World {
    runtime: tokio::runtime::Runtime,
    schema: AppSchema,
    _dir: tempfile::TempDir,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::default();
    settings.store.data_dir = dir.path().to_owned();
    let schema = runtime.block_on(async {
        let engine = recall_server::startup::data_engine(&settings)
            .await
            .unwrap();
        build_schema(Arc::new(AppState::new(settings, engine, None).unwrap()))
    });
    World {
        runtime,
        schema,
        _dir: dir,
    }
});

fuzz_target!(|data: &[u8]| {
    let world = &*WORLD;
    let Ok(request) = serde_json::from_slice::<async_graphql::Request>(data) else {
        return;
    };
    let user = Principal {
        user: "fuzz".into(),
        admin: false,
        method: AuthMethod::Jwt,
        expires_at: None,
    };
    world.runtime.block_on(async {
        let as_user = world.schema.execute(request.data(user)).await;
        let _ = serde_json::to_vec(&as_user);
    });
});
