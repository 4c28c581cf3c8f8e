//! Subscriptions (over graphql-ws), by domain.
use async_graphql::{Context, ID, MergedSubscription, Subscription as SubscriptionDerive};
use futures::Stream;
use recall_core::chat::ChatUpdate;
use recall_core::events::Received;

use super::caller;
use super::error::{GqlResult, core};
use super::mutation::chat_request;
use super::types::{ChatEvent, ChatInput, MemoryEvent};

/// All subscriptions.
#[derive(MergedSubscription, Default)]
pub struct Subscription(ChatSubscription, MemorySubscription);

/// Streamed chat.
#[derive(Default)]
pub struct ChatSubscription;

#[SubscriptionDerive]
impl ChatSubscription {
    /// Answers a message with the user's memory: events with `delta`s in order, then one
    /// with `done: true` and the whole `result`. Closing the subscription stops generation.
    async fn chat(
        &self,
        ctx: &Context<'_>,
        input: ChatInput,
    ) -> async_graphql::Result<impl Stream<Item = GqlResult<ChatEvent>> + use<>> {
        let (state, p) = caller(ctx)?;
        let request = chat_request(state, input)?;
        let (stream, slot) = state
            .chat_stream(p, request)
            .await
            .map_err(crate::app::ApiError::gql)?;
        let message_id = ID(stream.message_id.to_string());
        let metrics = state.clone();
        Ok(futures::stream::unfold(
            (stream.updates, 0u32, false, slot),
            move |(mut rx, index, finished, slot)| {
                let message_id = message_id.clone();
                let metrics = metrics.clone();
                async move {
                    if finished {
                        return None;
                    }
                    let event = match rx.recv().await? {
                        Ok(ChatUpdate::Delta { text }) => Ok(ChatEvent {
                            message_id,
                            index,
                            delta: Some(text),
                            done: false,
                            result: None,
                        }),
                        Ok(ChatUpdate::Done(result)) => {
                            metrics.metrics.tokens(result.usage.completion_tokens);
                            let done = ChatEvent {
                                message_id,
                                index,
                                delta: None,
                                done: true,
                                result: Some((*result).into()),
                            };
                            return Some((Ok(done), (rx, index + 1, true, slot)));
                        }
                        Err(e) => Err(core(e)),
                    };
                    let finished = event.is_err();
                    Some((event, (rx, index + 1, finished, slot)))
                }
            },
        ))
    }
}

/// Memory changes.
#[derive(Default)]
pub struct MemorySubscription;

#[SubscriptionDerive]
impl MemorySubscription {
    /// Changes to the caller's memories (added, updated, deleted) from now on.
    async fn memory_events(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = MemoryEvent> + use<>> {
        let (state, p) = caller(ctx)?;
        let sub = state.engine.events().subscribe(&p.user);
        Ok(futures::stream::unfold(sub, |mut sub| async move {
            loop {
                match sub.next().await? {
                    Received::Event(e) => return Some((MemoryEvent::from(*e), sub)),
                    Received::Lagged(n) => {
                        tracing::warn!(skipped = n, "memory event subscriber fell behind");
                    }
                }
            }
        }))
    }
}
