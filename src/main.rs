//! The `turnpike` command: `run`, `validate`, `explain`, `--version`. Everything else
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use turnpike::config::load_file;
use turnpike::{Gateway, Options};

#[derive(Parser)]
#[command(name = "turnpike", version, about = "An API gateway in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The configuration file.
        #[arg(short, long, env = "TURNPIKE_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration: exit 0 if it would load, 1 with every problem otherwise.
    Validate {
        /// The configuration file.
        #[arg(short, long, env = "TURNPIKE_CONFIG")]
        config: PathBuf,
    },
    /// Show which route a request would take, and why, without sending anything.
    Explain {
        /// The configuration file.
        #[arg(short, long, env = "TURNPIKE_CONFIG")]
        config: PathBuf,
        /// The listener to route on (default: the first).
        #[arg(short, long)]
        listener: Option<String>,
        /// A request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The method, e.g. GET.
        method: String,
        /// The URL (`https://api.example.com/v1/users/7`) or a path.
        url: String,
    },
}

fn main() -> ExitCode {
    turnpike::tls::install_default_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Validate { config } => {
            match load_file(&config).and_then(turnpike::runtime::compile::check) {
                Ok(()) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{}: {} problem(s)", config.display(), errors.0.len());
                    for e in &errors.0 {
                        eprintln!("  {e}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain {
            config,
            listener,
            headers,
            method,
            url,
        } => {
            let loaded = match load_file(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            let req = turnpike::explain::Request {
                method,
                url,
                headers,
                listener,
            };
            match turnpike::explain::explain(loaded, &req) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    turnpike::telemetry::logging::init();
    let loaded = match load_file(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let workers = loaded.spec.server.workers;
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 1 {
            b.worker_threads(workers);
        }
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let gateway = match Gateway::start(loaded, Options::default()).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        for (name, addr) in gateway.listeners() {
            tracing::info!(listener = %name, %addr, "listening");
        }
        if let Some(addr) = gateway.admin_addr() {
            tracing::info!(%addr, "admin listening");
        }
        wait_for_stop().await;
        let grace = gateway
            .runtime()
            .snapshot()
            .config
            .spec
            .server
            .shutdown_grace
            .0;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: draining connections"
        );
        let drained = gateway.shutdown(grace).await;
        tracing::info!(drained, "stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
