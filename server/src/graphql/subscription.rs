//! Subscriptions (over graphql-ws), by domain.
use async_graphql::{Context, ID, MergedSubscription, Subscription as SubscriptionDerive};
use futures::Stream;
use recall_core::chat::ChatUpdate;
use recall_core::events::{Event, Received};
use recall_core::jobs::{Job as CoreJob, SYSTEM_USER};

use super::error::IntoGql;
use super::error::{GqlResult, core};
use super::mutation::chat_request;
use super::types::{ChatEvent, ChatInput, Job, MemoryEvent, parse_id};
use super::{admin, caller};

/// All subscriptions.
#[derive(MergedSubscription, Default)]
pub struct Subscription(ChatSubscription, MemorySubscription, JobSubscription);

/// Streamed chat.
#[derive(Default)]
pub struct ChatSubscription;

#[SubscriptionDerive]
impl ChatSubscription {
    /// Answers a message with the user's memory: events with `delta`s in order, then one
    /// with `done: true` and the whole `result`. Closing the subscription stops generation.
    #[graphql(complexity = "super::CHAT_COST + child_complexity")]
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
            .map_err(crate::error::ApiError::gql)?;
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
    /// Changes to the caller's memories (added, updated, deleted) from now on. A subscriber
    /// that falls too far behind (events came faster than it read them, and were dropped) gets
    /// an `UNAVAILABLE` error and the stream ends: it subscribes again and reads afresh, rather
    /// than miss changes without knowing.
    #[graphql(complexity = "super::SEARCH_COST + child_complexity")]
    async fn memory_events(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<MemoryEvent>> + use<>> {
        let (state, p) = caller(ctx)?;
        let slot = state
            .subscription_slot(&p.user)
            .map_err(crate::error::ApiError::gql)?;
        let sub = state.engine.events().subscribe(&p.user);
        Ok(futures::stream::unfold(
            Some((sub, slot)),
            |open| async move {
                let (mut sub, slot) = open?;
                loop {
                    match sub.next().await? {
                        Received::Event(e) => match *e {
                            Event::Memory(e) => {
                                return Some((Ok(MemoryEvent::from(*e)), Some((sub, slot))));
                            }
                            Event::Job(_) => continue,
                        },
                        Received::Lagged(n) => {
                            tracing::warn!(skipped = n, "memory event subscriber fell behind");
                            let e = super::error::error(
                                super::error::Code::Unavailable,
                                format!("{n} events were missed: subscribe again and read afresh"),
                            );
                            return Some((Err(e), None));
                        }
                    }
                }
            },
        ))
    }
}

/// Background jobs.
#[derive(Default)]
pub struct JobSubscription;

#[SubscriptionDerive]
impl JobSubscription {
    /// One of the caller's jobs as it changes: its state now, then every change (progress,
    /// status); the stream ends after a final status (succeeded, failed, cancelled). With
    /// `system: true` (admins only), one of the operators' jobs (`runSystemJob`, scheduled
    /// backups).
    #[graphql(complexity = "super::SEARCH_COST + child_complexity")]
    async fn job_progress(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default = false)] system: bool,
    ) -> async_graphql::Result<impl Stream<Item = Job> + use<>> {
        let (state, p) = if system { admin(ctx)? } else { caller(ctx)? };
        let owner = if system {
            SYSTEM_USER.to_owned()
        } else {
            p.user.clone()
        };
        let id = parse_id("job", &id)?;
        let slot = state
            .subscription_slot(&p.user)
            .map_err(crate::error::ApiError::gql)?;
        // Subscribe before reading the job, so that no change between the two is missed.
        let sub = state.engine.events().subscribe(&owner);
        let read = move |engine: recall_core::Engine, user: String| async move {
            if system {
                engine.system_job(id).await
            } else {
                engine.job(&user, id).await
            }
        };
        let Some(now) = read(state.engine.clone(), owner.clone()).await.gql()? else {
            return Err(super::error::error(
                super::error::Code::NotFound,
                format!("job not found: {id}"),
            ));
        };
        let engine = state.engine.clone();
        let user = owner;
        Ok(futures::stream::unfold(
            (sub, Some(now.clone()), Some(now)),
            move |(mut sub, first, mut last): (_, Option<CoreJob>, Option<CoreJob>)| {
                let engine = engine.clone();
                let user = user.clone();
                // Held while the stream lives (the closure is part of it).
                let _slot = &slot;
                async move {
                    if let Some(first) = first {
                        return Some((Job::from(first), (sub, None, last)));
                    }
                    if last.as_ref().is_some_and(|j| j.status.is_final()) {
                        return None;
                    }
                    loop {
                        match sub.next().await? {
                            Received::Event(e) => match *e {
                                Event::Job(j) if j.id == id => {
                                    // Stale copies (read before a later change) are skipped.
                                    if last.as_ref().is_some_and(|l| {
                                        l.updated_at > j.updated_at
                                            || (l.updated_at == j.updated_at
                                                && l.status == j.status)
                                    }) {
                                        continue;
                                    }
                                    last = Some((*j).clone());
                                    return Some((Job::from(*j), (sub, None, last)));
                                }
                                _ => continue,
                            },
                            Received::Lagged(n) => {
                                // Events were missed: the store has the job's latest state.
                                tracing::warn!(skipped = n, "job progress subscriber fell behind");
                                if let Ok(Some(j)) = read(engine.clone(), user.clone()).await
                                    && last.as_ref().is_none_or(|l| l.updated_at < j.updated_at)
                                {
                                    last = Some(j.clone());
                                    return Some((Job::from(j), (sub, None, last)));
                                }
                            }
                        }
                    }
                }
            },
        ))
    }
}
