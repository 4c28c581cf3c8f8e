//! Re-embedding after a change of embedding model, on both stores, with the packaged MiniLM
//! and a second model directory (the same weights cut to two layers: other vectors): users
//! keep searching with the old model until every memory of theirs has a vector of the new one,
//! then switch at once; the old vectors are dropped; a second run has nothing to do.
use std::sync::Arc;
use std::time::Duration;

use recall_core::embed::Embedder;
use recall_core::engine::ReembedOptions;
use recall_core::store::{self, StoreConfig};
use recall_core::types::{Actor, Embedding, ExportOptions, NewMessage, Role};
use recall_core::{Engine, MemoryStore};

use crate::fixtures::{PgDb, cpu_embedder, fact, minilm_dir, top_hit};
use recall_core::testing::two_layer_minilm;

fn embedder(dir: &std::path::Path) -> Arc<dyn Embedder> {
    cpu_embedder(dir)
}

async fn models_of(store: &dyn MemoryStore, user: &str) -> Vec<String> {
    let export = store
        .export_user(
            user,
            &ExportOptions {
                include_vectors: false,
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    let mut models: Vec<String> = export
        .memories
        .iter()
        .flat_map(|m| m.embeddings.iter().map(|e| e.model.clone()))
        .collect();
    models.sort();
    models.dedup();
    models
}

async fn top(engine: &Engine, user: &str, query: &str) -> (String, f32) {
    let (memory, score) = top_hit(engine, user, query).await;
    (memory.content, score)
}

async fn reembedding(pg: bool) {
    let root = tempfile::tempdir().unwrap();
    let db = if pg { Some(PgDb::create().await) } else { None };
    let config = match &db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("store")),
    };
    let old = embedder(&minilm_dir());
    let new = embedder(&two_layer_minilm(root.path()));
    assert_ne!(old.model_id(), new.model_id());
    let s: Arc<dyn MemoryStore> = store::open(&config).await.unwrap();
    let before = Engine::new(s.clone(), old.clone());
    before
        .add_messages(
            "ana",
            vec![
                NewMessage::new("s", Role::User, "I adopted a cat named Miso last spring."),
                NewMessage::new("s", Role::User, "My sister lives in Porto."),
                NewMessage::new("s", Role::User, "I am allergic to peanuts."),
            ],
        )
        .await
        .unwrap();
    before
        .add_memory("bo", fact("Bo plays the cello"))
        .await
        .unwrap();
    let (cat, old_score) = top(&before, "ana", "what is the name of my cat?").await;
    assert!(cat.contains("Miso"));

    // The new model is configured, the old one kept: until re-embedded, ana searches and
    // writes with the old one.
    let engine = Engine::new(s.clone(), new.clone()).with_previous_embedder(Some(old.clone()));
    assert_eq!(
        top(&engine, "ana", "what is the name of my cat?").await,
        (cat.clone(), old_score)
    );
    engine
        .add_memory("ana", fact("Ana runs on Sundays"))
        .await
        .unwrap();
    assert_eq!(
        models_of(s.as_ref(), "ana").await,
        vec![old.model_id().to_owned()]
    );
    // Vectors for memories of another user are not written.
    let ana_ids: Vec<i64> = s
        .missing_embeddings("ana", new.model_id(), 10)
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ana_ids.len(), 4);
    let foreign = Embedding {
        model: new.model_id().into(),
        vector: vec![0.1; 384],
    };
    assert_eq!(
        s.add_embeddings("bo", vec![(ana_ids[0], foreign.clone())])
            .await
            .unwrap(),
        0
    );
    // One of ana's done ahead (as by an interrupted run): it is not embedded again.
    let v = new
        .embed_one("I adopted a cat named Miso last spring.")
        .await
        .unwrap();
    let done_ahead = Embedding {
        model: new.model_id().into(),
        vector: v,
    };
    assert_eq!(
        s.add_embeddings("ana", vec![(ana_ids[0], done_ahead)])
            .await
            .unwrap(),
        1
    );
    // Not switched yet: searches still use the old vectors.
    assert_eq!(s.embedding_model("ana").await.unwrap(), None);

    let options = ReembedOptions {
        batch: 2,
        pause: Duration::ZERO,
        grace: Duration::ZERO,
    };
    let mut seen = Vec::new();
    let report = engine
        .reembed(&options, &mut |done, total| seen.push((done, total)))
        .await
        .unwrap();
    assert_eq!(report.embedded, 4, "3 of ana's and bo's one: {report:?}");
    assert_eq!(report.users_switched, 2);
    assert_eq!(seen.last(), Some(&(4, 4)));
    for user in ["ana", "bo"] {
        assert_eq!(
            s.embedding_model(user).await.unwrap().as_deref(),
            Some(new.model_id())
        );
        assert_eq!(
            models_of(s.as_ref(), user).await,
            vec![new.model_id().to_owned()],
            "the old vectors are dropped"
        );
    }
    let (found, new_score) = top(&engine, "ana", "what is the name of my cat?").await;
    assert_eq!(found, cat);
    assert_ne!(new_score, old_score, "scored by the new model");
    // New writes go to the new model only; a second run has nothing to do.
    engine
        .add_memory("ana", fact("Ana's train leaves at nine"))
        .await
        .unwrap();
    assert_eq!(
        models_of(s.as_ref(), "ana").await,
        vec![new.model_id().to_owned()]
    );
    let again = engine.reembed(&options, &mut |_, _| {}).await.unwrap();
    assert_eq!((again.embedded, again.users_already), (0, 2));
    drop((engine, before, s));
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_reembeds_and_switches() {
    reembedding(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_reembeds_and_switches() {
    reembedding(true).await;
}

/// While a change of model is rolled out, a user seen for the first time starts on the new
/// model (there is nothing of theirs to re-embed): a re-embedding run that listed the users
/// before they came cannot leave them behind, and once the previous model is gone their
/// memories are still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_new_during_a_rollout_starts_on_the_new_model() {
    use recall_core::setup::{EngineOptions, open_engine};
    let root = tempfile::tempdir().unwrap();
    let config = StoreConfig::embedded(root.path().join("store"));
    let rollout = EngineOptions {
        embedding_model: two_layer_minilm(root.path()).display().to_string(),
        previous_embedding_model: Some(minilm_dir().display().to_string()),
        ..EngineOptions::new(config.clone())
    };
    let engine = open_engine(&rollout).await.unwrap();
    let new_model = engine.embedder().model_id().to_owned();
    engine
        .add_memory("cy", fact("Cy keeps bees on the roof"))
        .await
        .unwrap();
    drop(engine);
    let s = store::open(&config).await.unwrap();
    assert_eq!(
        s.embedding_model("cy").await.unwrap().as_deref(),
        Some(new_model.as_str())
    );
    assert_eq!(models_of(s.as_ref(), "cy").await, vec![new_model.clone()]);
    drop(s);

    let after = open_engine(&EngineOptions {
        previous_embedding_model: None,
        ..rollout
    })
    .await
    .unwrap();
    let (memory, _) = top_hit(&after, "cy", "who keeps bees?").await;
    assert!(memory.content.contains("bees"), "{}", memory.content);
}

/// An embedder that deletes a user's data the first time it is asked to embed: a user who
/// deletes their data while the re-embedding run is at them.
struct DeletesOnce {
    inner: Arc<dyn Embedder>,
    store: Arc<dyn MemoryStore>,
    user: std::sync::Mutex<Option<String>>,
}

#[async_trait::async_trait]
impl Embedder for DeletesOnce {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dims(&self) -> usize {
        self.inner.dims()
    }
    async fn embed(&self, texts: Vec<String>) -> recall_core::Result<Vec<Vec<f32>>> {
        let user = self.user.lock().unwrap().take();
        if let Some(user) = user {
            self.store.delete_user(&user, &Actor::cli()).await?;
        }
        self.inner.embed(texts).await
    }
}

/// A user whose data is deleted while the run is at them is passed over: the run goes on to
/// switch the others and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_during_the_run_is_passed_over() {
    let root = tempfile::tempdir().unwrap();
    let s: Arc<dyn MemoryStore> = store::open(&StoreConfig::embedded(root.path().join("store")))
        .await
        .unwrap();
    let old = embedder(&minilm_dir());
    let before = Engine::new(s.clone(), old.clone());
    // "ana" sorts first: the run reaches her first.
    before
        .add_memory("ana", fact("Ana collects stamps"))
        .await
        .unwrap();
    before
        .add_memory("bo", fact("Bo plays the cello"))
        .await
        .unwrap();
    let new: Arc<dyn Embedder> = Arc::new(DeletesOnce {
        inner: embedder(&two_layer_minilm(root.path())),
        store: s.clone(),
        user: std::sync::Mutex::new(Some("ana".into())),
    });
    let engine = Engine::new(s.clone(), new.clone()).with_previous_embedder(Some(old));
    let report = engine
        .reembed(
            &ReembedOptions {
                batch: 8,
                pause: Duration::ZERO,
                grace: Duration::ZERO,
            },
            &mut |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(report.users_switched, 1, "{report:?}");
    assert!(s.get_user("ana").await.unwrap().is_none());
    assert_eq!(
        s.embedding_model("bo").await.unwrap().as_deref(),
        Some(new.model_id())
    );
}
