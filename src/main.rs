use std::path::PathBuf;

use clap::Parser;
use porch::config::Config;

/// porch: a Matrix homeserver built for guest rooms.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; without it porch runs on built-in defaults.
    /// Every key can also be set as PORCH_<SECTION>__<KEY>.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    // ruma's auth checks log every event at info: kept to warnings unless asked for.
    let mut filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,tower_http=warn".to_owned());
    if !filter.contains("ruma_state_res") {
        filter.push_str(",ruma_state_res=warn");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info,ruma_state_res=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let settings = match Config::load(args.config.as_deref()).and_then(Config::validate) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("porch cannot start: {err}");
            std::process::exit(2);
        }
    };
    if let Err(err) = porch::serve(settings, shutdown_signal()).await {
        eprintln!("porch stopped with an error: {err:#}");
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
