//! What the demos share: a coordinator started in the demo's process on its
//! own database ([`tandem_coordinator::Application::spawn`]), and its orderly
//! shutdown.

use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;
use tandem_coordinator::{Application, RunningCoordinator, Settings};

/// What a demo does once its steps ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDemo {
    /// Stop the coordinator and exit.
    Stop,
    /// Keep everything running until Ctrl-C, for exploring the API.
    Serve,
}

/// Starts a coordinator on `database_url` (migrated at start), listening on `listen`.
pub async fn start_coordinator(database_url: String, listen: SocketAddr) -> anyhow::Result<RunningCoordinator> {
    let mut settings = Settings::new(database_url);
    settings.listen = listen;
    Application::spawn(&settings).await.context("starting the coordinator")
}

/// Waits for Ctrl-C first if `after` says so; then stops the coordinator.
pub async fn finish(coordinator: RunningCoordinator, after: AfterDemo) -> anyhow::Result<()> {
    if after == AfterDemo::Serve {
        println!("\nserving; Ctrl-C to stop");
        tandem_coordinator::startup::shutdown_signal().await;
    }
    // The grace period of phase-2 work is 10 s; a little more for the pools.
    tokio::time::timeout(Duration::from_secs(15), coordinator.stop()).await.context("stopping the coordinator")??;
    Ok(())
}

#[cfg(test)]
mod readme {
    /// The `rust` blocks of README.md, in order.
    fn readme_blocks() -> Vec<String> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README");
        readme.split("```rust\n").skip(1).map(|b| b.split("```").next().unwrap_or("").trim_end().to_owned()).collect()
    }

    /// The regions of `examples/readme.rs` between `// README {` and `// README }`, dedented.
    fn compiled_regions() -> Vec<String> {
        let code = include_str!("../examples/readme.rs");
        let mut regions = Vec::new();
        let mut current: Option<Vec<&str>> = None;
        for line in code.lines() {
            match (line.trim(), current.as_mut()) {
                ("// README {", _) => current = Some(Vec::new()),
                ("// README }", Some(_)) => regions.push(current.take().unwrap_or_default()),
                (_, Some(lines)) => lines.push(line),
                _ => {}
            }
        }
        regions
            .into_iter()
            .map(|lines| {
                let indent =
                    lines.iter().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min();
                let indent = indent.unwrap_or(0);
                lines.iter().map(|l| l.get(indent..).unwrap_or("")).collect::<Vec<_>>().join("\n").trim_end().to_owned()
            })
            .collect()
    }

    #[test]
    fn every_rust_block_of_the_readme_is_compiled_code() {
        let (blocks, regions) = (readme_blocks(), compiled_regions());
        assert_eq!(blocks.len(), regions.len(), "README rust blocks vs compiled regions");
        for (i, (b, r)) in blocks.iter().zip(&regions).enumerate() {
            assert_eq!(b, r, "README block {i} differs from examples/examples/readme.rs");
        }
    }
}
