//! `deep-recall mcp`: the MCP server over standard input and output for one user, as MCP
//! clients (desktop assistants, agents) start it, with the job runner and the schedules a
//! server runs (memory keys, expiry, retraining). Logs go to standard error.
use std::sync::Arc;

use clap::Args;
use recall_core::error::Error;
use rmcp::ServiceExt;

use super::RemoteChatArgs;
use crate::auth::{AuthMethod, Principal};
use crate::mcp::McpServer;
use crate::settings::Settings;
use crate::startup;

/// Flags of `mcp`.
#[derive(Debug, Clone, Args)]
pub(super) struct McpArgs {
    /// Whose memory the tools read and write.
    #[arg(long)]
    user: String,
    /// Local chat model: a .gguf path, a safetensors directory, or a name under --models-dir
    /// [chat.model; the packaged SmolLM2 by default].
    #[arg(long)]
    chat_model: Option<String>,
    #[command(flatten)]
    remote: RemoteChatArgs,
    /// Without a chat model: the memory tools only (`chat` answers UNAVAILABLE).
    #[arg(long)]
    no_chat: bool,
}

pub(super) async fn run(mut settings: Settings, args: &McpArgs) -> recall_core::Result<()> {
    if args.chat_model.is_some() {
        settings.chat.model = args.chat_model.clone();
    }
    args.remote.apply(&mut settings)?;
    let user = args.user.trim();
    if user.is_empty() {
        return Err(Error::invalid("--user must not be empty"));
    }
    let state = Arc::new(startup::state(settings, !args.no_chat).await?);
    state.engine.limits().check_user_id(user)?;
    // Beside servers on one Postgres: their writes and deletions drop this process's cached
    // searches at once (as a replica's), and its writes reach their subscribers.
    let _fanout = if state.settings.jobs.fanout {
        state.engine.start_fanout().await?
    } else {
        None
    };
    // Often the only process on its store: the jobs (memory keys, expiry, retraining) and
    // their schedules run here too, as under `serve`.
    let background = startup::Background::start(
        &state.settings,
        &state.engine,
        state.chat.as_ref(),
        format!("mcp-{}", std::process::id()),
    )
    .await?;
    let server = McpServer::for_user(
        state,
        Principal {
            user: user.to_owned(),
            admin: false,
            method: AuthMethod::Local,
            expires_at: None,
        },
    );
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Error::Unavailable {
            message: "MCP: the client did not initialise the session".into(),
            source: Some(Box::new(e)),
        })?;
    let served = running
        .waiting()
        .await
        .map_err(|e| Error::Internal(format!("MCP server: {e}")));
    background.stop().await;
    served.map(|_| ())
}
