//! `deep-recall serve`: the server, started by [`crate::startup::run`].
use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::RemoteChatArgs;
use crate::settings::Settings;
use crate::startup;

/// Flags of `serve`; each overrides its setting.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port) [bind].
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// HS256 secret for JWT bearer tokens [auth.jwt_secret; better set there or in
    /// DEEP_RECALL__AUTH__JWT_SECRET than on the command line].
    #[arg(long, hide_env_values = true)]
    jwt_secret: Option<String>,
    /// PEM file with the RS256 public key for JWT bearer tokens [auth.jwt_public_key].
    #[arg(long)]
    jwt_public_key: Option<PathBuf>,
    /// Let requests without credentials in; `X-User-Id` names the user (development only)
    /// [auth.allow_anonymous].
    #[arg(long)]
    allow_anonymous: bool,
    /// Allow --allow-anonymous on an address other machines can reach, where anyone can act
    /// as any user [auth.dangerously_allow_anonymous_on_network].
    #[arg(long)]
    dangerously_allow_anonymous_on_network: bool,
    /// Reverse proxies whose X-Forwarded-For names the client, as CIDR blocks separated by
    /// commas (`10.0.0.0/8,127.0.0.1`) [trusted_proxies; none by default: the header is never
    /// read].
    #[arg(long, value_delimiter = ',')]
    trusted_proxies: Option<Vec<String>>,
    /// PEM certificate chain for HTTPS; with --tls-key [tls.cert]. Reloaded on SIGHUP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS; with --tls-cert [tls.key].
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve GraphiQL on GET /graphql [graphiql].
    #[arg(long)]
    graphiql: bool,
    /// Local chat model: a .gguf path, a safetensors directory, or a name under --models-dir
    /// [chat.model; the packaged SmolLM2 by default].
    #[arg(long)]
    chat_model: Option<String>,
    #[command(flatten)]
    remote: RemoteChatArgs,
    /// Serve without a chat model (memory API only; chat answers UNAVAILABLE).
    #[arg(long)]
    no_chat: bool,
}

pub(super) async fn run(mut settings: Settings, args: &ServeArgs) -> recall_core::Result<()> {
    if let Some(b) = args.bind {
        settings.bind = b;
    }
    if args.jwt_secret.is_some() {
        settings.auth.jwt_secret = args.jwt_secret.clone();
    }
    if args.jwt_public_key.is_some() {
        settings.auth.jwt_public_key = args.jwt_public_key.clone();
    }
    settings.auth.allow_anonymous |= args.allow_anonymous;
    settings.auth.dangerously_allow_anonymous_on_network |=
        args.dangerously_allow_anonymous_on_network;
    settings.graphiql |= args.graphiql;
    if let Some(p) = &args.trusted_proxies {
        settings.trusted_proxies = p.clone();
    }
    if args.tls_cert.is_some() {
        settings.tls.cert = args.tls_cert.clone();
        settings.tls.key = args.tls_key.clone();
    }
    let scheme = if settings.tls.cert.is_some() {
        "https"
    } else {
        "http"
    };
    if args.chat_model.is_some() {
        settings.chat.model = args.chat_model.clone();
    }
    args.remote.apply(&mut settings)?;
    startup::run(
        settings,
        !args.no_chat,
        |addr| {
            println!("deep-recall: listening on {scheme}://{addr}");
            let _ = std::io::stdout().flush();
        },
        shutdown_signal(),
    )
    .await
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
