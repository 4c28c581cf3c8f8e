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
