//! Command line of the `tandem` binary.

use crate::config::Settings;
use crate::startup::{shutdown_signal, Application};
use clap::{Parser, Subcommand};

/// Tandem: a distributed transaction coordinator.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format: `text` or `json`.
    #[arg(long, env = "TANDEM_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator server (applies migrations at start).
    Serve(Settings),
    /// Apply the database migrations and exit.
    Migrate {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

/// Initialises logging (`RUST_LOG` filters; default `info`).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}

/// Entry point of the binary.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing(&cli.log_format);
    match cli.command {
        Command::Serve(settings) => {
            let app = Application::build(&settings).await?;
            let token = app.shutdown_token();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown signal received");
                token.cancel();
            });
            app.run().await?;
        }
        Command::Migrate { database_url } => {
            let metrics = crate::metrics::Metrics::new()?;
            let store = crate::store::Store::connect(
                &crate::store::StoreConfig {
                    database_url,
                    max_connections: 2,
                    relaxed_connections: 1,
                    acquire_timeout: std::time::Duration::from_secs(10),
                },
                metrics,
            )?;
            store.migrate().await?;
            store.close().await;
            tracing::info!("migrations applied");
        }
    }
    Ok(())
}
