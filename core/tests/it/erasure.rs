//! Deleting a user's data is final: an answer still being written when the data goes is not
//! stored afterwards, and nothing of the user comes back with it.
use std::sync::{Arc, Mutex};

use recall_core::Engine;
use recall_core::chat::{ChatPipeline, ChatRequest, ChatUpdate};
use recall_core::context::{ChatTurn, TokenCounter};
use recall_core::error::ErrorKind;
use recall_core::llm::GenerationParams;
use recall_core::llm::{ApproxCounter, ChatEvent, ChatModel, Completion, FinishReason};
use recall_core::store::{self, StoreConfig};
use recall_core::types::Actor;
use tokio::sync::{mpsc, oneshot};

use crate::fixtures::{cpu_embedder, minilm_dir};

/// A chat model that writes its answer only when the test lets it.
struct Gated {
    release: Mutex<Option<oneshot::Receiver<()>>>,
}

#[async_trait::async_trait]
impl ChatModel for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn context_length(&self) -> usize {
        4096
    }
    fn token_counter(&self) -> &dyn TokenCounter {
        &ApproxCounter
    }
    async fn stream(
        &self,
        _turns: &[ChatTurn],
        _params: &GenerationParams,
    ) -> recall_core::Result<mpsc::Receiver<recall_core::Result<ChatEvent>>> {
        let release = self.release.lock().unwrap().take().expect("one answer");
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let _ = release.await;
            let completion = Completion {
                text: "Once upon a time there was a cat called Biscuit.".into(),
                prompt_tokens: 1,
                completion_tokens: 1,
                finish_reason: FinishReason::Stop,
                confidence: 0.0,
            };
            let _ = tx.send(Ok(ChatEvent::Done { completion })).await;
        });
        Ok(rx)
    }
}

/// An engine over a new embedded store (kept while the directory lives), with MiniLM.
async fn engine() -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    (Engine::new(store, cpu_embedder(&minilm_dir())), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_finished_after_deletion_is_not_stored() {
    let (engine, _dir) = engine().await;
    let (release, gate) = oneshot::channel();
    let model = Arc::new(Gated {
        release: Mutex::new(Some(gate)),
    });
    let pipeline = ChatPipeline::new(engine.clone(), model);
    let mut answer = pipeline
        .stream(
            "alice",
            ChatRequest::new("s", "My cat is called Biscuit. Tell me a story."),
        )
        .await
        .unwrap();
    // The question is stored before the answer is written; then the user deletes everything.
    assert_eq!(engine.count_memories("alice").await.unwrap(), 1);
    let report = engine
        .delete_user("alice", &Actor::user("alice"))
        .await
        .unwrap();
    assert_eq!(report.messages, 1);
    release.send(()).unwrap();
    let mut failed = None;
    while let Some(update) = answer.updates.recv().await {
        match update {
            Ok(ChatUpdate::Done(_)) => panic!("the answer was stored after the deletion"),
            Ok(_) => {}
            Err(e) => failed = Some(e),
        }
    }
    let err = failed.expect("the answer ends in an error");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(engine.user("alice").await.unwrap().is_none());
    assert_eq!(engine.count_memories("alice").await.unwrap(), 0);
}

/// A job queued for the user goes with their data, and whoever follows it hears it end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_ends_cancelled_when_the_data_goes() {
    use recall_core::events::{Event, Received};
    use recall_core::jobs::JobStatus;
    let (engine, _dir) = engine().await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let job = engine
        .schedule_delete_user("alice", later, &Actor::user("alice"))
        .await
        .unwrap();
    let mut events = engine.events().subscribe("alice");
    engine
        .delete_user("alice", &Actor::user("alice"))
        .await
        .unwrap();
    let ended = loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("an event");
        if let Some(Received::Event(e)) = next
            && let Event::Job(j) = *e
            && j.id == job.id
        {
            break j;
        }
    };
    assert_eq!(ended.status, JobStatus::Cancelled);
    assert!(engine.job("alice", job.id).await.unwrap().is_none());
}

/// Whoever follows the user's memories hears each one go when the user's data is deleted,
/// as when a session is; another user's stay, unannounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_data_announces_each_memory_that_went() {
    use recall_core::events::{Event, MemoryAction, Received};
    use recall_core::types::NewMessage;
    use recall_core::types::Role;
    let (engine, _dir) = engine().await;
    let mut ids = Vec::new();
    for (session, text) in [("a", "I keep bees"), ("b", "The hives are by the river")] {
        let stored = engine
            .add_messages("alice", vec![NewMessage::new(session, Role::User, text)])
            .await
            .unwrap();
        ids.extend(stored[0].memory_ids.iter().copied());
    }
    let fact = engine
        .add_memory("alice", crate::fixtures::fact("Alice sells honey"))
        .await
        .unwrap();
    ids.push(fact.id);
    engine
        .add_messages(
            "bob",
            vec![NewMessage::new("a", Role::User, "I keep goats")],
        )
        .await
        .unwrap();
    let mut alice_events = engine.events().subscribe("alice");
    let mut bob_events = engine.events().subscribe("bob");
    let report = engine
        .delete_user("alice", &Actor::user("alice"))
        .await
        .unwrap();
    assert_eq!(report.memories, ids.len() as u64);
    let mut heard = Vec::new();
    while heard.len() < ids.len() {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), alice_events.next())
            .await
            .expect("an event");
        if let Some(Received::Event(e)) = next
            && let Event::Memory(m) = *e
        {
            assert_eq!(m.action, MemoryAction::Deleted);
            assert!(m.memory.is_none());
            heard.push(m.memory_id);
        }
    }
    heard.sort_unstable();
    ids.sort_unstable();
    assert_eq!(heard, ids);
    let quiet =
        tokio::time::timeout(std::time::Duration::from_millis(300), bob_events.next()).await;
    assert!(quiet.is_err(), "bob heard {quiet:?}");
}
