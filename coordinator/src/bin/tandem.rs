//! The `tandem` binary: `tandem serve --listen ADDR --database-url URL`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tandem_coordinator::cli::run(tandem_coordinator::cli::Cli::parse()).await
}
