//! Command line of the `tandem` binary: the server (`serve`, `migrate`) and
//! the operator's client of a running one (`tx`, `locks`, in [`ops`]).

pub mod ops;

use crate::config::Settings;
use crate::startup::{shutdown_signal, Application};
use clap::{Parser, Subcommand, ValueEnum};

/// Tandem: a distributed transaction coordinator.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
// Parsed once per process: the size of `Serve`'s settings costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Transactions of a running coordinator: list, show, retry, stop.
    #[command(subcommand)]
    Tx(ops::TxCommand),
    /// Global locks of a running coordinator.
    #[command(subcommand)]
    Locks(ops::LocksCommand),
    /// Make API tokens and callback keys.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `tandem token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// A new random API token: prints the token (give it to its holder,
    /// once) and the configuration entry holding only its hash.
    New {
        /// Its roles, comma-separated: client, participant, admin.
        #[arg(long)]
        role: String,
        /// Its holder's name (recorded on the transactions it begins).
        #[arg(long)]
        name: String,
    },
    /// A new random callback signing key (hex), for `--callback-key` and the participants.
    Key,
}

fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New { role, name } => {
            let (token, entry) = crate::auth::tokens::generate_for(&role, &name)?;
            println!("token: {token}");
            println!("entry: {entry}");
            eprintln!("Give the token to its holder; put the entry in --tokens-file or TANDEM_TOKENS.");
        }
        TokenCommand::Key => println!("{}", crate::auth::tokens::random_hex()),
    }
    Ok(())
}

/// Initialises logging (`RUST_LOG` filters; default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Entry point of the binary.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // The client commands print their own results; no log lines between them.
    let client = match cli.command {
        Command::Tx(cmd) => Some(ops::tx(cmd).await),
        Command::Locks(cmd) => Some(ops::locks(cmd).await),
        Command::Token(cmd) => return token(cmd),
        command => {
            serve_or_migrate(command, cli.log_format).await?;
            None
        }
    };
    if let Some(Err(e)) = client {
        eprintln!("tandem: {e}");
        std::process::exit(1);
    }
    Ok(())
}

async fn serve_or_migrate(command: Command, log_format: LogFormat) -> anyhow::Result<()> {
    init_tracing(log_format);
    match command {
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
                    max_branches: crate::config::defaults::MAX_BRANCHES,
                },
                metrics,
            )?;
            store.migrate().await?;
            store.close().await;
            tracing::info!("migrations applied");
        }
        Command::Tx(_) | Command::Locks(_) | Command::Token(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The README's configuration table: flag → (environment, default).
    fn readme_table() -> Vec<(String, String, String)> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README");
        let section = readme.split("### Configuration").nth(1).expect("a Configuration section");
        let clean = |c: &str| c.trim().trim_matches('`').to_owned();
        section
            .lines()
            .skip_while(|l| !l.starts_with("| flag"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
                (clean(cells[0]), clean(cells[1]), clean(cells[2]))
            })
            .collect()
    }

    #[test]
    fn the_readme_configuration_table_is_the_flags() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let mut flags: Vec<(String, String, String)> = serve
            .get_arguments()
            .chain(cli.get_arguments())
            .filter_map(|a| {
                let long = a.get_long()?;
                if matches!(long, "help" | "version") {
                    return None;
                }
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
                let default =
                    a.get_default_values().first().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
                Some((format!("--{long}"), env, default))
            })
            .collect();
        flags.sort();
        flags.dedup();
        let mut table = readme_table();
        table.sort();
        assert_eq!(
            table.iter().map(|(f, e, _)| (f, e)).collect::<Vec<_>>(),
            flags.iter().map(|(f, e, _)| (f, e)).collect::<Vec<_>>(),
            "flags and environment variables"
        );
        for ((flag, _, readme), (_, _, default)) in table.iter().zip(&flags) {
            if default.is_empty() {
                // No fixed default: required, or computed at start.
                assert!(readme.starts_with('(') || readme.contains('-'), "{flag}: README says {readme:?}");
            } else {
                assert_eq!(readme.replace('_', ""), default.replace('_', ""), "{flag}: README default");
            }
        }
    }

    #[test]
    fn settings_new_has_the_flag_defaults() {
        let cli = Cli::try_parse_from(["tandem", "serve", "--database-url", "postgres://x"]).expect("parses");
        let Command::Serve(parsed) = cli.command else { panic!("serve") };
        let mut built = Settings::new("postgres://x");
        assert_eq!(built.listen.ip(), parsed.listen.ip());
        built.listen = parsed.listen;
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
        assert_eq!(cli.log_format, LogFormat::Text);
    }
}
