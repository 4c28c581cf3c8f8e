use clap::Parser;
use recall_server::cli::{Cli, parse_error, run};

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| std::process::exit(parse_error(e)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(cli));
    // Do not wait for idle pool connections or the model thread to wind down.
    runtime.shutdown_background();
    std::process::exit(code);
}
