//! The chat pipeline's turns: a turn tried again after its answer failed keeps one copy of
//! its message, in the store and in the prompt; a turn whose consumer left stops its model.
use std::sync::{Arc, Mutex};

use recall_core::Engine;
use recall_core::chat::{ChatPipeline, ChatRequest};
use recall_core::context::{ChatTurn, TokenCounter};
use recall_core::error::{Error, ErrorKind};
use recall_core::llm::GenerationParams;
use recall_core::llm::{ApproxCounter, ChatEvent, ChatModel, Completion, FinishReason};
use recall_core::store::{self, StoreConfig};
use recall_core::types::{PageRequest, Role};
use tokio::sync::mpsc;

use crate::fixtures::{cpu_embedder, minilm_dir};

/// A chat model whose first `failures` answers break off (as a provider that goes down
/// mid-answer); it records every prompt it is given.
struct Flaky {
    failures: Mutex<usize>,
    prompts: Mutex<Vec<Vec<ChatTurn>>>,
}

#[async_trait::async_trait]
impl ChatModel for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn context_length(&self) -> usize {
        4096
    }
    fn token_counter(&self) -> &dyn TokenCounter {
        &ApproxCounter
    }
    async fn stream(
        &self,
        turns: &[ChatTurn],
        _params: &GenerationParams,
    ) -> recall_core::Result<mpsc::Receiver<recall_core::Result<ChatEvent>>> {
        self.prompts.lock().unwrap().push(turns.to_vec());
        let fail = {
            let mut left = self.failures.lock().unwrap();
            let fail = *left > 0;
            *left = left.saturating_sub(1);
            fail
        };
        let (tx, rx) = mpsc::channel(2);
        let event = if fail {
            Err(Error::unavailable("the provider went away"))
        } else {
            Ok(ChatEvent::Done {
                completion: Completion {
                    text: "Under the doormat, you said.".into(),
                    prompt_tokens: 1,
                    completion_tokens: 1,
                    finish_reason: FinishReason::Stop,
                    confidence: 0.0,
                },
            })
        };
        tx.send(event).await.unwrap();
        Ok(rx)
    }
}

/// How many times `text` appears in the prompt.
fn times_in(prompt: &[ChatTurn], text: &str) -> usize {
    prompt.iter().map(|t| t.content.matches(text).count()).sum()
}

async fn roles(engine: &Engine, session: &str) -> Vec<(Role, String)> {
    engine
        .messages("alice", session, &PageRequest::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|m| (m.role, m.content))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_turn_keeps_one_copy_of_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let engine = Engine::new(store, cpu_embedder(&minilm_dir()));
    let model = Arc::new(Flaky {
        failures: Mutex::new(2),
        prompts: Mutex::default(),
    });
    let pipeline = ChatPipeline::new(engine.clone(), model.clone());
    const ASK: &str = "Where did I leave the spare house keys?";

    // The answer breaks off twice: the message is kept (it was acknowledged), once.
    for _ in 0..2 {
        let err = pipeline
            .chat("alice", ChatRequest::new("s", ASK))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
    assert_eq!(roles(&engine, "s").await, vec![(Role::User, ASK.into())]);
    let first = engine
        .messages("alice", "s", &PageRequest::default())
        .await
        .unwrap()
        .items[0]
        .id;

    // The third try answers, to that message, which its prompt shows once: not again as
    // history, nor as a memory.
    let done = pipeline
        .chat("alice", ChatRequest::new("s", ASK))
        .await
        .unwrap();
    assert_eq!(done.message_id, first);
    assert_eq!(
        roles(&engine, "s").await,
        vec![
            (Role::User, ASK.into()),
            (Role::Assistant, "Under the doormat, you said.".into())
        ]
    );
    for prompt in model.prompts.lock().unwrap().iter() {
        assert_eq!(times_in(prompt, ASK), 1, "{prompt:?}");
    }
    assert!(
        done.context.iter().all(|m| m.content != ASK),
        "{:?}",
        done.context
    );

    // An answered message asked again is a new turn; so is the same text in another session.
    let again = pipeline
        .chat("alice", ChatRequest::new("s", ASK))
        .await
        .unwrap();
    assert_ne!(again.message_id, first);
    assert_eq!(roles(&engine, "s").await.len(), 4);
    pipeline
        .chat("alice", ChatRequest::new("t", ASK))
        .await
        .unwrap();
    assert_eq!(roles(&engine, "t").await.len(), 2);
    // The question asked again in session s follows its first asking, which the history
    // shows: twice, once there and once as the message.
    let last_in_s = model.prompts.lock().unwrap()[3].clone();
    assert_eq!(times_in(&last_in_s, ASK), 2, "{last_in_s:?}");
}

/// A chat model that has not written anything yet (queued, or reading a long prompt); the
/// test holds the sender of its answer.
struct Silent {
    answer: Mutex<Option<mpsc::Sender<recall_core::Result<ChatEvent>>>>,
}

#[async_trait::async_trait]
impl ChatModel for Silent {
    fn name(&self) -> &str {
        "silent"
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
        let (tx, rx) = mpsc::channel(2);
        *self.answer.lock().unwrap() = Some(tx);
        Ok(rx)
    }
}

/// A consumer that leaves before the first word stops the model at once (the worker sees
/// its answer's receiver closed), instead of after a whole prefill and the first token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_leaves_before_the_first_word_stops_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let engine = Engine::new(store, cpu_embedder(&minilm_dir()));
    let model = Arc::new(Silent {
        answer: Mutex::new(None),
    });
    let pipeline = ChatPipeline::new(engine, model.clone());
    let stream = pipeline
        .stream("ann", ChatRequest::new("s", "Tell me a long story."))
        .await
        .unwrap();
    let answer = model.answer.lock().unwrap().clone().unwrap();
    assert!(!answer.is_closed());
    drop(stream);
    tokio::time::timeout(std::time::Duration::from_secs(5), answer.closed())
        .await
        .expect("the model's answer was still wanted after its consumer left");
}
