//! The GraphQL API: queries, mutations and subscriptions split by domain and merged; no web
//! framework here (see [`crate::router`] for HTTP and WebSocket).
//!
//! Every resolver acts on the authenticated caller's data only: the user comes from the
//! request's [`Principal`], never from an argument.
pub mod deep_memory;
pub mod error;
pub mod memory_keys;
pub mod mutation;
pub mod query;
pub mod subscription;
pub mod types;

use std::net::IpAddr;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextPrepareRequest, NextRequest,
    NextSubscribe,
};
use async_graphql::futures_util::stream::{BoxStream, StreamExt};
use async_graphql::{Context, Request, Response, Schema, ServerResult};

use crate::auth::Principal;
use crate::state::AppState;
use error::{Code, GqlResult, error as gql_error};

pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

/// The schema type.
pub type AppSchema = Schema<Query, Mutation, Subscription>;

// What a field that does real work counts against `limits.max_query_complexity` (1000 by
// default), beside one per field selected: a request may not hide a hundred searches in
// aliases behind one rate-limit token.
/// A search (an embedding and a retrieval), or a subscription to the caller's events; also a
/// listing with metadata conditions, and a thousand messages stored.
pub const SEARCH_COST: usize = 100;
/// A chat answer (retrieval, prompt and generation).
pub const CHAT_COST: usize = 250;
/// An export of everything the caller stored.
pub const EXPORT_COST: usize = 250;

/// Builds the schema with the server state attached and the configured depth and complexity
/// limits.
pub fn build_schema(state: Arc<AppState>) -> AppSchema {
    let limits = &state.settings.limits;
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(limits.max_query_depth)
    .limit_complexity(limits.max_query_complexity)
    .extension(WsLimits)
    .extension(CodedErrors)
    .data(state.clone())
    .finish()
}

/// Connection data of WebSocket connections (HTTP requests are rate-limited and timed before
/// they reach the schema; over a WebSocket every operation is, by [`WsLimits`]).
#[derive(Debug, Clone, Copy)]
pub struct OverWebSocket {
    /// The client's address.
    pub ip: Option<IpAddr>,
}

/// Gives every error a stable `extensions.code`: errors the resolvers raise carry theirs;
/// those async-graphql raises before any resolver runs (syntax, unknown fields, wrong types,
/// depth and complexity limits) are the request's fault, `BAD_INPUT`.
struct CodedErrors;

impl ExtensionFactory for CodedErrors {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(CodedErrors)
    }
}

fn coded(mut response: Response) -> Response {
    for e in &mut response.errors {
        let ext = e.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", Code::BadInput.as_str());
        }
    }
    response
}

#[async_graphql::async_trait::async_trait]
impl Extension for CodedErrors {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        coded(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(coded).boxed()
    }
}

/// The limits an HTTP request meets in the router, for operations over a WebSocket: each is
/// rate-checked, and a query or mutation is cut off with `TIMEOUT` past
/// `limits.request_timeout_secs` (a subscription streams for as long as it lasts).
struct WsLimits;

impl ExtensionFactory for WsLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(WsLimits)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for WsLimits {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if let (Some(ws), Some(p), Some(state)) = (
            ctx.data_opt::<OverWebSocket>(),
            ctx.data_opt::<Principal>(),
            ctx.data_opt::<Arc<AppState>>(),
        ) && let Err(e) = state.rate_check(&p.user, ws.ip)
        {
            return Err(e.server_error());
        }
        next.run(ctx, request).await
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let (Some(_), Some(state)) = (
            ctx.data_opt::<OverWebSocket>(),
            ctx.data_opt::<Arc<AppState>>(),
        ) else {
            return next.run(ctx, operation_name).await;
        };
        let started = std::time::Instant::now();
        let limit = std::time::Duration::from_secs(state.settings.limits.request_timeout_secs);
        let response = match tokio::time::timeout(limit, next.run(ctx, operation_name)).await {
            Ok(response) => response,
            Err(_) => Response::from_errors(vec![
                crate::error::ApiError::new(Code::Timeout, crate::error::TIMED_OUT).server_error(),
            ]),
        };
        // Counted as the same operation sent over HTTP is.
        state.metrics.request(
            "graphql",
            operation_name.unwrap_or("anonymous"),
            &outcome(&response),
            started.elapsed(),
        );
        response
    }
}

/// A response's outcome in the request metrics: `ok`, or its first error's code.
pub(crate) fn outcome(response: &Response) -> String {
    let Some(first) = response.errors.first() else {
        return "ok".into();
    };
    first
        .extensions
        .as_ref()
        .and_then(|x| x.get("code"))
        .map_or_else(
            || Code::BadInput.as_str().to_owned(),
            |v| v.to_string().trim_matches('"').to_owned(),
        )
}

/// The schema in SDL, as `deep-recall schema` prints it (no server state needed).
pub fn sdl() -> String {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .finish()
    .sdl()
}

/// The server state and the caller of a request.
/// Who a write is recorded as in the audit log: `user:ID`, or `admin:ID` for operators.
pub(crate) fn actor(p: &Principal) -> recall_core::types::Actor {
    recall_core::types::Actor(if p.admin {
        format!("admin:{}", p.user)
    } else {
        format!("user:{}", p.user)
    })
}

pub(crate) fn caller<'a>(ctx: &'a Context<'_>) -> GqlResult<(&'a Arc<AppState>, &'a Principal)> {
    let state = ctx
        .data::<Arc<AppState>>()
        .map_err(|_| gql_error(Code::Internal, "server state missing"))?;
    let principal = ctx
        .data::<Principal>()
        .map_err(|_| gql_error(Code::Unauthenticated, "authentication required"))?;
    Ok((state, principal))
}

/// The caller, who must have the admin role.
pub(crate) fn admin<'a>(ctx: &'a Context<'_>) -> GqlResult<(&'a Arc<AppState>, &'a Principal)> {
    let (state, p) = caller(ctx)?;
    if !p.admin {
        return Err(gql_error(
            Code::Forbidden,
            "this operation needs the admin role",
        ));
    }
    Ok((state, p))
}
