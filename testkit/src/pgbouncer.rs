//! A PgBouncer of the test's own in front of a Postgres: its own configuration, auth file and
//! port in a temporary directory, run in the foreground with its log captured. PgBouncer
//! refuses to run as root; when the tests do, it runs as the `postgres` user (as
//! [`crate::PgServer`] does). Killed when dropped, also when the test panics.
//!
//! The binary is `TEST_PGBOUNCER`, else Debian's `/usr/sbin/pgbouncer`, else `pgbouncer` on
//! the `PATH` (`apt-get install --no-install-recommends pgbouncer`; `.ci/run` installs it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pg_server::{free_port, server_user};
use crate::LoggedProcess;

/// How often a start picks another port when the one it picked was taken in between.
const PORT_TRIES: usize = 5;

/// A running PgBouncer.
pub struct PgBouncer {
    process: LoggedProcess,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts PgBouncer with `pool_mode` (`session`, `transaction` or `statement`) in front of
    /// the Postgres at `backend`, for every database, as user `postgres` without a password
    /// (`auth_type = trust`). `settings` are further `[pgbouncer]` lines
    /// (`("ignore_startup_parameters", "options")`).
    pub async fn start(backend: SocketAddr, pool_mode: &str, settings: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new().prefix("pgbouncer-").tempdir().expect("temporary directory");
        let auth_file = dir.path().join("users.txt");
        std::fs::write(&auth_file, "\"postgres\" \"\"\n").expect("write the auth file");
        let user = server_user();
        for _ in 0..PORT_TRIES {
            let port = free_port();
            let mut lines = vec![
                "[databases]".to_string(),
                format!("* = host={} port={}", backend.ip(), backend.port()),
                "[pgbouncer]".to_string(),
                "listen_addr = 127.0.0.1".to_string(),
                format!("listen_port = {port}"),
                "unix_socket_dir =".to_string(),
                "auth_type = trust".to_string(),
                format!("auth_file = {}", auth_file.display()),
                format!("pool_mode = {pool_mode}"),
            ];
            lines.extend(settings.iter().map(|(name, value)| format!("{name} = {value}")));
            let config = dir.path().join("pgbouncer.ini");
            std::fs::write(&config, lines.join("\n") + "\n").expect("write pgbouncer.ini");
            if let Some((uid, gid)) = user {
                for path in [dir.path(), &auth_file, &config] {
                    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
                }
            }
            let mut command = tokio::process::Command::new(binary());
            command.arg(&config).current_dir(dir.path());
            if let Some((uid, gid)) = user {
                command.uid(uid).gid(gid);
            }
            let mut process = LoggedProcess::from_command(command);
            let until = tokio::time::Instant::now() + Duration::from_secs(20);
            let up = loop {
                if let Ok(Some(status)) = process.child.try_wait() {
                    // Let the log readers catch up with what it said before exiting.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break Err(status);
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    break Ok(());
                }
                assert!(
                    tokio::time::Instant::now() < until,
                    "pgbouncer not listening after 20 s:\n{}",
                    process.lines().join("\n")
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            match up {
                Ok(()) => return Self { process, port, _dir: dir },
                Err(_) if process.lines().iter().any(|l| l.contains("Address already in use")) => continue,
                Err(status) => panic!("pgbouncer exited ({status}):\n{}", process.lines().join("\n")),
            }
        }
        panic!("no free port for pgbouncer after {PORT_TRIES} tries");
    }

    /// A connection URL for `database` through this PgBouncer, as user `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// What PgBouncer logged so far (for a failing test's message).
    pub fn logs(&self) -> String {
        self.process.lines().join("\n")
    }
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_PGBOUNCER") {
        return path.into();
    }
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    if debian.is_file() {
        return debian;
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("pgbouncer")).find(|p| p.is_file()))
        .expect("no pgbouncer binary: `apt-get install --no-install-recommends pgbouncer`, or set TEST_PGBOUNCER")
}
