//! Shared test fixtures: real Postgres databases (one fresh database per test), embedded
//! stores in temporary directories, the models directory, and hand-made vectors.
use recall_core::MemoryStore;
use recall_core::store::{EmbeddedStore, PgStore, StoreConfig};
pub use recall_core::testing::{PgDb, minilm_dir, models_dir, repo_root};
use recall_core::types::{Embedding, Metric};
use sea_orm::{ConnectionTrait, DatabaseConnection};

/// The model id used for hand-made vectors.
pub const TEST_MODEL: &str = "test-model";

pub fn emb(v: &[f32]) -> Embedding {
    Embedding {
        model: TEST_MODEL.into(),
        vector: v.to_vec(),
    }
}

/// A store under test with whatever keeps it alive. (A handful exist at a time: the size of
/// the larger variant does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum TestStore {
    Pg(PgStore, PgDb),
    Embedded(EmbeddedStore, tempfile::TempDir),
}

impl TestStore {
    pub async fn pg(metric: Metric) -> Self {
        Self::pg_with(|c| c.with_metric(metric)).await
    }

    pub async fn pg_with(configure: impl FnOnce(StoreConfig) -> StoreConfig) -> Self {
        let db = PgDb::create().await;
        let store = PgStore::open(&configure(StoreConfig::postgres(db.url.clone())))
            .await
            .expect("open Postgres store");
        TestStore::Pg(store, db)
    }

    pub async fn embedded(metric: Metric) -> Self {
        Self::embedded_with(|c| c.with_metric(metric)).await
    }

    pub async fn embedded_with(configure: impl FnOnce(StoreConfig) -> StoreConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&configure(StoreConfig::embedded(dir.path())))
            .await
            .expect("open embedded store");
        TestStore::Embedded(store, dir)
    }

    /// A second handle on the same database, shareable (what an engine takes).
    pub async fn reopen(&self) -> std::sync::Arc<dyn MemoryStore> {
        match self {
            TestStore::Pg(_, db) => std::sync::Arc::new(
                PgStore::open(&StoreConfig::postgres(db.url.clone()))
                    .await
                    .unwrap(),
            ),
            TestStore::Embedded(_, dir) => std::sync::Arc::new(
                EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
                    .await
                    .unwrap(),
            ),
        }
    }

    pub fn store(&self) -> &dyn MemoryStore {
        match self {
            TestStore::Pg(s, _) => s,
            TestStore::Embedded(s, _) => s,
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        match self {
            TestStore::Pg(s, _) => s.connection(),
            TestStore::Embedded(s, _) => s.connection(),
        }
    }

    /// Rows of a table, all users together (for checking that deletion leaves nothing).
    pub async fn count_rows(&self, table: &str) -> i64 {
        let db = self.connection();
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT count(*) FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    /// Makes any memory whose content is `boom` fail to insert, at the database level, so that
    /// tests can check that a failing write leaves nothing behind.
    pub async fn sabotage(&self) {
        let db = self.connection();
        match self {
            TestStore::Pg(..) => {
                db.execute_unprepared(
                    "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN \
                     IF NEW.content = 'boom' THEN RAISE EXCEPTION 'boom'; END IF; \
                     RETURN NEW; END $$ LANGUAGE plpgsql",
                )
                .await
                .unwrap();
                db.execute_unprepared(
                    "CREATE TRIGGER boom BEFORE INSERT ON memories \
                     FOR EACH ROW EXECUTE FUNCTION boom()",
                )
                .await
                .unwrap();
            }
            TestStore::Embedded(..) => {
                db.execute_unprepared(
                    "CREATE TRIGGER boom BEFORE INSERT ON memories \
                     WHEN NEW.content = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END",
                )
                .await
                .unwrap();
            }
        }
    }

    pub async fn close(self) {
        match self {
            TestStore::Pg(s, db) => {
                s.connection().clone().close().await.ok();
                db.drop_db().await;
            }
            TestStore::Embedded(s, dir) => {
                s.connection().clone().close().await.ok();
                drop(dir);
            }
        }
    }
}

/// Generates `mod postgres` and `mod embedded`, each with one `#[tokio::test]` per case: the
/// case `async fn name(t: &TestStore)` of the calling module runs against both stores. With
/// `statements;` first, also `mod postgres_statements`: Postgres with every search left to
/// its SQL statements (`in_process_search_threshold` at its maximum; by default every user
/// is searched in process).
macro_rules! both_backends {
    (statements; $($name:ident;)*) => {
        crate::fixtures::both_backends! { $($name;)* }
        mod postgres_statements {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = crate::fixtures::TestStore::pg_with(|mut c| {
                        c.in_process_search_threshold = u64::MAX;
                        c
                    })
                    .await;
                    super::$name(&t).await;
                    t.close().await;
                }
            )*
        }
    };
    ($($name:ident;)*) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = crate::fixtures::TestStore::pg(recall_core::types::Metric::Cosine).await;
                    super::$name(&t).await;
                    t.close().await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = crate::fixtures::TestStore::embedded(recall_core::types::Metric::Cosine).await;
                    super::$name(&t).await;
                    t.close().await;
                }
            )*
        }
    };
}
pub(crate) use both_backends;

/// The embedding model in `dir`, on the CPU.
pub fn cpu_embedder(dir: &std::path::Path) -> std::sync::Arc<dyn recall_core::Embedder> {
    let mut config = recall_core::embed::EmbedConfig::new(dir);
    config.device = recall_core::device::DeviceConfig::Cpu;
    std::sync::Arc::new(recall_core::embed::EmbeddingService::start(&config).unwrap())
}

/// A fact to add through the engine.
pub fn fact(text: &str) -> recall_core::NewMemoryText {
    recall_core::NewMemoryText {
        kind: recall_core::types::MemoryKind::Fact,
        content: text.into(),
        session: None,
        tags: vec![],
        importance: None,
        ..Default::default()
    }
}

/// The best hit of a plain similarity search, with its score.
pub async fn top_hit(
    engine: &recall_core::Engine,
    user: &str,
    query: &str,
) -> (recall_core::types::Memory, f32) {
    let page = engine
        .search(
            user,
            query,
            &recall_core::SearchOptions {
                top_k: 1,
                ..recall_core::SearchOptions::default()
            },
        )
        .await
        .unwrap();
    let hit = page.hits.into_iter().next().expect("a hit");
    (hit.memory, hit.score)
}

/// A chat model whose answer is a function of the last turn's text: a stand-in for the local
/// model in tests where what it writes is not the point.
pub struct ScriptedChat {
    pub name: &'static str,
    pub reply: Box<dyn Fn(&str) -> String + Send + Sync>,
}

#[async_trait::async_trait]
impl recall_core::llm::ChatModel for ScriptedChat {
    fn name(&self) -> &str {
        self.name
    }
    fn context_length(&self) -> usize {
        4096
    }
    fn token_counter(&self) -> &dyn recall_core::context::TokenCounter {
        &recall_core::llm::ApproxCounter
    }
    async fn stream(
        &self,
        turns: &[recall_core::context::ChatTurn],
        _params: &recall_core::llm::GenerationParams,
    ) -> recall_core::Result<
        tokio::sync::mpsc::Receiver<recall_core::Result<recall_core::llm::ChatEvent>>,
    > {
        let text = (self.reply)(&turns.last().expect("a turn").content);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(Ok(recall_core::llm::ChatEvent::Done {
            completion: recall_core::llm::Completion {
                text,
                prompt_tokens: 1,
                completion_tokens: 1,
                finish_reason: recall_core::llm::FinishReason::Stop,
                confidence: 0.0,
            },
        }))
        .await
        .expect("the receiver is here");
        Ok(rx)
    }
}
