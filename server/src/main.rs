use clap::Parser;
use recall_server::cli::{Cli, run};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    // The server logs structured JSON at info level (request ids, no message content); the
    // other commands log warnings as text. `DEEP_RECALL_LOG` sets the filter, and
    // `DEEP_RECALL_LOG_FORMAT=text|json` the format.
    let serve = cli.is_serve();
    let filter = EnvFilter::try_from_env("DEEP_RECALL_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if serve { "info" } else { "warn" }));
    let json = match std::env::var("DEEP_RECALL_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => serve,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(cli));
    // Do not wait for idle pool connections or the model thread to wind down.
    runtime.shutdown_background();
    std::process::exit(code);
}
