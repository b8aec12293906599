//! A PostgreSQL server of a test's own, for what the shared one cannot show (TLS with a
//! certificate the test made): `initdb` into a temporary directory, `postgres` on a free port of
//! 127.0.0.1, stopped (`pg_ctl stop -m fast`) and deleted when dropped, also when the test fails.
//! As root, the server runs as the `postgres` user (Postgres refuses to run as root).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::LoggedProcess;

/// The server's TLS certificate chain and private key, both PEM.
pub struct ServerTls {
    pub certificate_pem: String,
    pub key_pem: String,
}

pub struct PostgresServer {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    user: Option<(u32, u32)>,
    process: Option<LoggedProcess>,
    _dir: tempfile::TempDir,
}

/// Where the server binaries are: `PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian keeps them off the PATH).
fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return dir.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("PostgreSQL server binaries (initdb, postgres) not found: install postgresql or set PG_BINDIR")
    })
}

/// uid and gid of the `postgres` account when running as root (initdb refuses root).
fn server_user() -> Option<(u32, u32)> {
    let me = std::process::Command::new("id").arg("-u").output().expect("id runs");
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd.lines().find(|l| l.starts_with("postgres:")).expect("a postgres account to run the server as");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PostgresServer {
    /// Initialises a cluster (trust authentication, user `postgres`) and starts it, with TLS
    /// (`ssl = on`) when `tls` is given.
    pub async fn start(tls: Option<ServerTls>) -> Self {
        let bin = bindir();
        let user = server_user();
        let dir = tempfile::tempdir().expect("temporary directory");
        let own = |path: &Path| {
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        };
        own(dir.path());
        let data = dir.path().join("data");
        let mut initdb = std::process::Command::new(bin.join("initdb"));
        initdb.args(["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("initdb runs");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));

        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_string(),
            format!("unix_socket_directories={}", dir.path().display()),
            "fsync=off".into(),
            "max_connections=30".into(),
        ];
        if let Some(tls) = tls {
            for (name, contents) in [("server.crt", &tls.certificate_pem), ("server.key", &tls.key_pem)] {
                let path = dir.path().join(name);
                std::fs::write(&path, contents).expect("write TLS file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                own(&path);
            }
            settings.push("ssl=on".into());
            settings.push(format!("ssl_cert_file={}", dir.path().join("server.crt").display()));
            settings.push(format!("ssl_key_file={}", dir.path().join("server.key").display()));
        }

        // Postgres cannot listen on port 0: take a free port, and take another if it was
        // grabbed in between.
        for _ in 0..5 {
            let port = free_port();
            let mut args = vec!["-D".to_string(), data.display().to_string(), "-p".into(), port.to_string()];
            for setting in &settings {
                args.push("-c".into());
                args.push(setting.clone());
            }
            let mut command = tokio::process::Command::new(bin.join("postgres"));
            command.args(&args);
            if let Some((uid, gid)) = user {
                command.uid(uid).gid(gid);
            }
            let mut process = LoggedProcess::from_command(command);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let lines = process.lines();
                if lines.iter().any(|l| l.contains("database system is ready to accept connections")) {
                    return Self { port, bin, data, user, process: Some(process), _dir: dir };
                }
                if let Ok(Some(_)) = process.child.try_wait() {
                    if lines.iter().any(|l| l.contains("could not bind") || l.contains("could not create")) {
                        break;
                    }
                    panic!("postgres exited at start:\n{}", lines.join("\n"));
                }
                if tokio::time::Instant::now() >= deadline {
                    panic!("postgres did not start within 60 s:\n{}", lines.join("\n"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("no free port for postgres after 5 tries");
    }

    /// A connection URL for database `database` via `host` (`127.0.0.1` or `localhost`), with
    /// `params` (`sslmode=...`) as its query.
    pub fn url(&self, host: &str, database: &str, params: &str) -> String {
        let query = if params.is_empty() { String::new() } else { format!("?{params}") };
        format!("postgres://postgres@{host}:{}/{database}{query}", self.port)
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.process.as_ref().map(|p| p.lines().join("\n")).unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // A fast shutdown (disconnects clients), waited for; then the process handle is dropped
        // (SIGKILL if it somehow still runs) before the directory is removed.
        let mut stop = std::process::Command::new(self.bin.join("pg_ctl"));
        stop.args(["-D", self.data.to_str().unwrap(), "-m", "fast", "-w", "-t", "20", "stop"]);
        if let Some((uid, gid)) = self.user {
            stop.uid(uid).gid(gid);
        }
        let _ = stop.output();
        self.process.take();
    }
}
