//! The `tandem` binary: `tandem serve --listen ADDR --database-url URL`.

use clap::Parser;

/// mimalloc: measured ~30 % more global transactions per second than the
/// system allocator on the benchmark (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tandem_coordinator::cli::run(tandem_coordinator::cli::Cli::parse()).await
}
