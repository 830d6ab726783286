//! The `shop` demo end to end: the built binary with `--mode all`, its own
//! databases (a unique prefix) and an ephemeral coordinator port, so that
//! it runs beside the rest of `cargo test --workspace`. Checks every
//! scenario's verdict line, not only the exit status.
//!
//! Servers: `TANDEM_TEST_PG` (default postgres://postgres@127.0.0.1:5432),
//! `TANDEM_TEST_XA_PG` (default postgres://postgres@127.0.0.1:5433, started
//! by the demo with `scripts/xa-postgres.sh` if it does not answer) and
//! `TANDEM_TEST_MARIADB` (default mysql://root@127.0.0.1:3306).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole run must end by then (the demo takes well under 30 s alone).
const DEADLINE: Duration = Duration::from_secs(180);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[test]
fn every_mode_ends_every_scenario_as_expected() {
    let unique = format!(
        "shop_t{}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["--mode", "all", "--listen", "127.0.0.1:0", "--db-prefix", &unique])
        .args(["--pg", &env_or("TANDEM_TEST_PG", "postgres://postgres@127.0.0.1:5432")])
        .args(["--xa-pg", &env_or("TANDEM_TEST_XA_PG", "postgres://postgres@127.0.0.1:5433")])
        .args(["--mariadb", &env_or("TANDEM_TEST_MARIADB", "mysql://root@127.0.0.1:3306")])
        .env_remove("TANDEM_DEMO_PG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the shop binary");

    // Read both pipes on threads so that a full pipe cannot stall the demo.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the shop binary") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let out = out.join().ok().and_then(Result::ok).unwrap_or_default();
            panic!("shop did not finish within {DEADLINE:?}; its output so far:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out.join().expect("stdout thread").expect("stdout utf-8");
    let err = err.join().expect("stderr thread").expect("stderr utf-8");
    let all = format!("{out}\n--- stderr ---\n{err}");

    for mode in ["tcc", "xa", "at", "saga", "msg", "3pc"] {
        let success = if mode == "msg" { "delivered" } else { "committed" };
        for (scenario, outcome) in [("ok", success), ("declined", "rolled back"), ("crash", success)] {
            let want = format!("  ✓ shop.{mode}.{scenario}: {outcome}: ");
            assert!(out.lines().any(|l| l.starts_with(&want)), "no line starting {want:?} in:\n{all}");
        }
    }
    cleanup(&unique);
    assert!(!out.contains("✗"), "a scenario failed:\n{all}");
    assert!(out.contains("shop: 18 of 18 scenarios as expected"), "summary missing:\n{all}");
    assert!(status.success(), "shop exited with {status}:\n{all}");
}

/// Drops the run's databases on every server and removes its log folder.
fn cleanup(prefix: &str) {
    use sqlx::Connection;
    let pattern = format!("{prefix}\\_%");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        for server in [
            env_or("TANDEM_TEST_PG", "postgres://postgres@127.0.0.1:5432"),
            env_or("TANDEM_TEST_XA_PG", "postgres://postgres@127.0.0.1:5433"),
        ] {
            let Ok(mut c) = sqlx::PgConnection::connect(&format!("{server}/postgres")).await else { continue };
            let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
                .bind(&pattern)
                .fetch_all(&mut c)
                .await
                .unwrap_or_default();
            for name in names {
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
            }
        }
        let maria = env_or("TANDEM_TEST_MARIADB", "mysql://root@127.0.0.1:3306");
        if let Ok(mut c) = sqlx::MySqlConnection::connect(&maria).await {
            let names: Vec<String> =
                sqlx::query_scalar("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ?")
                    .bind(&pattern)
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
            for name in names {
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut c).await;
            }
        }
    });
    let logs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/shop-logs").join(prefix);
    let _ = std::fs::remove_dir_all(logs);
}
