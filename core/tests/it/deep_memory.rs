//! Deep memory on both stores with the packaged MiniLM: pairs written by a chat model
//! (resumable, deduplicated, with provenance), the user's own pairs, training that lifts
//! held-out recall, enabling only when it helps, searches that use the adapter while it is on,
//! an adapter that survives a restart, and no path to another user's memories.
use std::collections::HashMap;
use std::sync::Arc;

use recall_core::deep_memory::{GenerateOptions, PairSource, TrainOptions};
use recall_core::embed::Embedder;
use recall_core::error::ErrorKind;
use recall_core::llm::ChatModel;
use recall_core::store::{self, StoreConfig};
use recall_core::types::Actor;
use recall_core::{Engine, MemoryStore};

use crate::fixtures::{PgDb, ScriptedChat, cpu_embedder, fact, minilm_dir, top_hit};
use recall_core::testing::deep_memory::{NAMES, TEMPLATE, desk, facts};

/// A chat model that knows the question for each note (a stand-in for the local model, whose
/// questions are not the point here); it answers "?" for notes it does not know.
fn question_writer(questions: HashMap<String, String>) -> ScriptedChat {
    ScriptedChat {
        name: "question-writer",
        reply: Box::new(move |prompt| {
            let note = prompt
                .strip_prefix("Note: ")
                .and_then(|p| p.strip_suffix("\nQuestion:"))
                .unwrap_or_default();
            questions.get(note).cloned().unwrap_or("?".into())
        }),
    }
}

fn minilm() -> Arc<dyn Embedder> {
    cpu_embedder(&minilm_dir())
}

async fn top_score(engine: &Engine, user: &str, query: &str) -> (i64, f32) {
    let (memory, score) = top_hit(engine, user, query).await;
    (memory.id, score)
}

async fn deep_memory(pg: bool) {
    let root = tempfile::tempdir().unwrap();
    let db = if pg { Some(PgDb::create().await) } else { None };
    let config = match &db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("store")),
    };
    let embedder = minilm();
    let facts = facts(NAMES.len(), 6);
    let writer = Arc::new(question_writer(facts.iter().cloned().collect()));
    let open = |store: Arc<dyn MemoryStore>| {
        Engine::new(store, embedder.clone()).with_llm(Some(writer.clone() as Arc<dyn ChatModel>))
    };
    let engine = open(store::open(&config).await.unwrap());
    let mut ids = HashMap::new();
    for (memory, _) in &facts {
        let m = engine.add_memory("alice", fact(memory)).await.unwrap();
        ids.insert(memory.clone(), m.id);
    }
    for n in NAMES {
        engine.add_memory("alice", fact(&desk(n))).await.unwrap();
    }
    let memories = facts.len() + NAMES.len();
    // Someone else, whose memories answer the same questions about other people.
    let bob_memory = engine
        .add_memory("bob", fact("Ana moved to Berlin last spring."))
        .await
        .unwrap();
    for i in 0..10 {
        engine
            .add_memory("bob", fact(&format!("Bob's locker number is {i}{i}7.")))
            .await
            .unwrap();
    }

    // Nothing trained: a clear error, no adapter in use.
    let err = engine.deep_memory_enable("alice").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("no deep memory adapter"), "{err}");
    assert!(!engine.deep_memory_status("alice").await.unwrap().trained);

    // The model writes one question per memory, with provenance; a second run has nothing
    // left to do.
    let mut seen = Vec::new();
    let report = engine
        .deep_memory_generate("alice", &GenerateOptions::default(), &mut |d, t, p| {
            seen.push((d, t, p))
        })
        .await
        .unwrap();
    assert_eq!(report.pairs, facts.len() as u64, "{report:?}");
    assert_eq!(report.rejected, NAMES.len() as u64, "{report:?}");
    assert_eq!(seen.last(), Some(&(84, 84, 72)));
    let again = engine
        .deep_memory_generate("alice", &GenerateOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!((again.pairs, again.skipped), (0, facts.len() as u64));
    let pairs = engine.deep_memory_pairs("alice").await.unwrap();
    assert_eq!(pairs.len(), facts.len());
    for p in &pairs {
        assert_eq!(p.source, PairSource::Generated);
        assert_eq!(p.model.as_deref(), Some("question-writer"));
        assert_eq!(
            p.prompt_version,
            Some(recall_core::deep_memory::PROMPT_VERSION)
        );
    }
    assert!(engine.deep_memory_pairs("bob").await.unwrap().is_empty());

    // A user's own pair must name a memory of theirs.
    let err = engine
        .deep_memory_add_pairs("alice", vec![("Where did Ana go?".into(), bob_memory.id)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = engine
        .deep_memory_add_pairs("alice", vec![("  ".into(), ids[&facts[0].0])])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let added = engine
        .deep_memory_add_pairs(
            "alice",
            vec![(format!("{TEMPLATE} Ana's new city?"), ids[&facts[0].0])],
        )
        .await
        .unwrap();
    assert_eq!(added, 1);

    // Training lifts held-out recall, on alice's memories only.
    let mut epochs = 0;
    let stored = engine
        .deep_memory_train("alice", &TrainOptions::default(), &mut |p| {
            if let recall_core::engine::TrainProgress::Epoch { .. } = p {
                epochs += 1
            }
        })
        .await
        .unwrap();
    let e = &stored.report.evaluation;
    eprintln!("held-out: {e:?}");
    assert_eq!(epochs, TrainOptions::default().epochs);
    assert_eq!(stored.report.memories, memories);
    assert!(e.pairs >= 5, "{e:?}");
    assert!(e.after.mrr > e.before.mrr, "{e:?}");
    assert!(e.helps(), "{e:?}");
    assert!(!stored.enabled, "a new adapter starts off");

    // Searches use it while it is on, and not once it is off.
    let (_, held_question) = facts
        .iter()
        .find(|(m, _)| recall_core::deep_memory::held_out(ids[m]))
        .unwrap();
    let plain = top_score(&engine, "alice", held_question).await;
    let status = engine.deep_memory_enable("alice").await.unwrap();
    assert!(status.enabled && status.active, "{status:?}");
    assert_eq!(status.version, Some(1));
    let adapted = top_score(&engine, "alice", held_question).await;
    assert_ne!(plain.1, adapted.1);
    // Bob has no adapter: his searches are untouched.
    let bob_before = top_score(&engine, "bob", held_question).await;
    assert_eq!(bob_before.0, bob_memory.id);
    engine.deep_memory_disable("alice").await.unwrap();
    assert_eq!(top_score(&engine, "alice", held_question).await, plain);
    engine.deep_memory_enable("alice").await.unwrap();
    let evaluation = engine.deep_memory_evaluate("alice").await.unwrap();
    assert_eq!(evaluation.after, e.after);

    // A restart keeps the adapter, on.
    drop(engine);
    let engine = open(store::open(&config).await.unwrap());
    let status = engine.deep_memory_status("alice").await.unwrap();
    assert!(status.trained && status.active, "{status:?}");
    assert_eq!(status.pairs, facts.len() as u64 + 1);
    assert_eq!(top_score(&engine, "alice", held_question).await, adapted);

    // Another embedding model: the adapter is not used, and says why.
    let other = Engine::new(
        store::open(&config).await.unwrap(),
        cpu_embedder(&recall_core::testing::two_layer_minilm(root.path())),
    );
    let status = other.deep_memory_status("alice").await.unwrap();
    assert!(status.enabled && !status.active, "{status:?}");
    assert!(status.inactive_reason.unwrap().contains("train it again"));
    assert_eq!(
        other.deep_memory_enable("alice").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    // A backup carries the pairs and the adapter, into a store of the other kind.
    let file = root.path().join("dm.backup");
    engine
        .backup(&file, &recall_core::backup::BackupOptions::default())
        .await
        .unwrap();
    let other_db = if pg { None } else { Some(PgDb::create().await) };
    let other_config = match &other_db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("restored")),
    };
    let restored = open(store::open(&other_config).await.unwrap());
    restored
        .restore(
            &file,
            &recall_core::backup::RestoreOptions::default(),
            &Actor::cli(),
        )
        .await
        .unwrap();
    let (a, b) = (
        engine.deep_memory_status("alice").await.unwrap(),
        restored.deep_memory_status("alice").await.unwrap(),
    );
    assert_eq!(
        (b.pairs, b.trained, b.active, b.version, &b.report),
        (a.pairs, a.trained, a.active, a.version, &a.report)
    );
    let questions = |e: &Engine| {
        let e = e.clone();
        async move {
            let mut q: Vec<String> = e
                .deep_memory_pairs("alice")
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.question)
                .collect();
            q.sort();
            q
        }
    };
    assert_eq!(questions(&engine).await, questions(&restored).await);
    let again = top_score(&restored, "alice", held_question).await;
    assert_eq!(again.0, adapted.0);
    assert!((again.1 - adapted.1).abs() < 1e-4, "{again:?} {adapted:?}");
    drop(restored);
    if let Some(db) = other_db {
        db.drop_db().await;
    }

    // Retraining is due once enough new memories arrived (for alice, whose adapter is on).
    // A fact that replaces another adds nothing to learn from (the replaced one is no longer
    // current), as keys add nothing: training reads neither.
    assert!(engine.deep_memory_due(3).await.unwrap().is_empty());
    let page = recall_core::types::PageRequest {
        first: 1,
        after: None,
    };
    let filter = recall_core::types::Filter::default();
    let old = engine
        .memories("alice", &filter, &page)
        .await
        .unwrap()
        .items[0]
        .id;
    let replaced = recall_core::NewMemoryText {
        supersedes: Some(old),
        ..fact("Lars swapped one plant for a cactus.")
    };
    engine.add_memory("alice", replaced).await.unwrap();
    for i in 0..3 {
        engine
            .add_memory("alice", fact(&format!("Lars bought {i} new plants.")))
            .await
            .unwrap();
        engine
            .add_memory("bob", fact(&format!("Bob sold {i} old bikes.")))
            .await
            .unwrap();
    }
    assert_eq!(engine.deep_memory_due(3).await.unwrap(), vec!["alice"]);
    assert!(engine.deep_memory_due(4).await.unwrap().is_empty());
    assert!(engine.deep_memory_is_due("alice", 3).await.unwrap());
    assert!(!engine.deep_memory_is_due("alice", 4).await.unwrap());
    assert!(
        !engine.deep_memory_is_due("bob", 0).await.unwrap(),
        "no adapter"
    );
    // A scheduled retraining that is no longer due when it runs (another one ended between
    // the schedule's look and its queueing) does nothing.
    let version = engine.deep_memory_status("alice").await.unwrap().version;
    let job = engine
        .queue_deep_memory_job(
            "alice",
            recall_core::jobs::JobKind::DeepMemoryTrain,
            serde_json::json!({ "due_after": 4 }),
            &Actor("schedule".into()),
        )
        .await
        .unwrap();
    let runner = recall_core::runner::JobRunner::start(
        engine.clone(),
        recall_core::runner::JobRunnerConfig {
            worker: "w".into(),
            poll_interval: std::time::Duration::from_millis(50),
            ..Default::default()
        },
    );
    let done = loop {
        let j = engine.job("alice", job.id).await.unwrap().unwrap();
        if j.status == recall_core::jobs::JobStatus::Succeeded {
            break j;
        }
        assert!(
            matches!(
                j.status,
                recall_core::jobs::JobStatus::Queued | recall_core::jobs::JobStatus::Running
            ),
            "{j:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    runner.stop().await;
    let result = done.result.unwrap();
    assert!(result["skipped"].is_string(), "{result}");
    assert_eq!(
        engine.deep_memory_status("alice").await.unwrap().version,
        version
    );

    // Training with nothing to train on is refused clearly.
    let err = engine
        .deep_memory_train("nobody", &TrainOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = engine
        .deep_memory_train("bob", &TrainOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("training pairs"), "{err}");

    // Deleting the user deletes the pairs and the adapter.
    engine.delete_user("alice", &Actor::cli()).await.unwrap();
    let status = engine.deep_memory_status("alice").await.unwrap();
    assert_eq!((status.pairs, status.trained), (0, false));
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_memory_on_the_embedded_store() {
    deep_memory(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_memory_on_postgres() {
    deep_memory(true).await;
}

/// The packaged chat model writes questions that the pipeline accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_chat_model_writes_questions() {
    use recall_core::llm::{ChatService, ModelConfig};
    let root = tempfile::tempdir().unwrap();
    let config = ModelConfig {
        path: recall_core::llm::local::default_model_path(&crate::fixtures::models_dir()),
        dequantize: true,
        ..ModelConfig::new("")
    };
    let chat = ChatService::start(&config, &candle_core::Device::Cpu, 2, 4).unwrap();
    let engine = Engine::new(
        store::open(&StoreConfig::embedded(root.path().join("s")))
            .await
            .unwrap(),
        minilm(),
    )
    .with_llm(Some(Arc::new(chat)));
    for text in [
        "I live in Porto with my partner Rui.",
        "My daughter Lia started school in September.",
        "I am allergic to penicillin.",
    ] {
        engine.add_memory("carol", fact(text)).await.unwrap();
    }
    let report = engine
        .deep_memory_generate("carol", &GenerateOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    let pairs = engine.deep_memory_pairs("carol").await.unwrap();
    eprintln!("{report:?}: {pairs:#?}");
    assert!(report.pairs >= 2, "{report:?}");
    assert_eq!(report.pairs + report.rejected, 3);
    assert!(
        pairs
            .iter()
            .all(|p| p.model.as_deref() == Some(report.model.as_str()))
    );
}
