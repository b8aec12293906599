//! A PostgreSQL server of a test's own, for what the shared one cannot show: TLS with a
//! certificate the test made, the database itself crashing, or a standby taking over
//! ([`crate::pg_pair`]). `initdb` into a temporary
//! directory (trust authentication, user `postgres`), its own port on 127.0.0.1 and its own
//! socket directory; started and stopped with `pg_ctl`, its log in a file that outlives restarts.
//! Dropping the handle stops the server and deletes its directory, also when the test panics.
//!
//! The server binaries are found in `TEST_PG_BIN` (or `PG_BINDIR`), else in the newest
//! `/usr/lib/postgresql/<version>/bin` (Debian keeps them off the `PATH`), else on `PATH`.
//! PostgreSQL refuses to run as root; when the tests do, the server runs as the `postgres` user.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The server's TLS certificate chain and private key, both PEM.
pub struct ServerTls {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// A running (or crashed) PostgreSQL server owned by one test.
pub struct PgServer {
    bin: PathBuf,
    port: u16,
    /// uid and gid the server runs as, when the tests run as root.
    user: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

/// How often a start picks another port when the one it picked was taken in between.
const PORT_TRIES: usize = 5;

impl PgServer {
    /// Initialises a cluster and starts it; panics with the server's log on failure.
    pub async fn start() -> Self {
        Self::init(None).await
    }

    /// The same with TLS (`ssl = on`) using `tls` as the server's certificate and key.
    pub async fn start_with_tls(tls: ServerTls) -> Self {
        Self::init(Some(tls)).await
    }

    async fn init(tls: Option<ServerTls>) -> Self {
        let dir = tempfile::Builder::new().prefix("pg-").tempdir().expect("temporary directory");
        let mut server = Self { bin: server_bin_dir(), port: 0, user: server_user(), dir };
        server.own(server.dir.path());
        let data = server.path("data");
        server
            .run_checked(
                "initdb",
                &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
            )
            .await;

        // Settings in the configuration file stay for every later start; the port is given
        // on the command line so that a start can try another one.
        let mut settings = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", server.dir.path().display()),
        ];
        if let Some(tls) = tls {
            let files =
                [("ssl_cert_file", "server.crt", &tls.certificate_pem), ("ssl_key_file", "server.key", &tls.key_pem)];
            for (setting, name, contents) in files {
                let path = server.dir.path().join(name);
                std::fs::write(&path, contents).expect("write TLS file");
                // Postgres refuses a key that others can read.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod TLS file");
                server.own(&path);
                settings.push(format!("{setting} = '{}'", path.display()));
            }
            settings.push("ssl = on".into());
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(Path::new(&data).join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(conf, "\n# testkit::PgServer\n{}", settings.join("\n")).expect("write postgresql.conf");

        server.start_on(None).await;
        server
    }

    /// A streaming standby of `primary`: a base backup of it (`pg_basebackup -R`, which writes
    /// `standby.signal` and the connection back to the primary), started on `port` (a failover
    /// test rebuilding a lost server where its clients expect it) or on a free one. Read-only
    /// until [`promote`](Self::promote)d.
    pub async fn start_standby_of(primary: &PgServer, port: Option<u16>) -> Self {
        let dir = tempfile::Builder::new().prefix("pg-standby-").tempdir().expect("temporary directory");
        let mut server = Self { bin: primary.bin.clone(), port: 0, user: primary.user, dir };
        server.own(server.dir.path());
        let (data, primary_port) = (server.path("data"), primary.port.to_string());
        let args = ["-h", "127.0.0.1", "-p", &primary_port, "-U", "postgres", "-D", &data];
        let options = ["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"];
        server.run_checked("pg_basebackup", &[&args[..], &options[..]].concat()).await;
        // The copied configuration names the primary's socket directory.
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(Path::new(&data).join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(conf, "\n# testkit::PgServer standby\nunix_socket_directories = '{}'", server.dir.path().display())
            .expect("write postgresql.conf");
        server.start_on(port).await;
        server
    }

    /// Ends recovery: the standby becomes a primary that takes writes (`pg_ctl promote`, waited for).
    pub async fn promote(&self) {
        self.run_checked("pg_ctl", &["promote", "-w", "-t", "60", "-D", &self.path("data")]).await;
    }

    /// Starts the server on `port`, or on a free port: Postgres cannot listen on port 0, so
    /// take a free one, and another one if it was grabbed before the server bound it.
    async fn start_on(&mut self, port: Option<u16>) {
        for _ in 0..PORT_TRIES {
            self.port = port.unwrap_or_else(free_port);
            let log_before = self.logs().len();
            let output = self.pg_ctl_start().await;
            if output.status.success() {
                return;
            }
            let logs = self.logs();
            let log = logs.get(log_before..).unwrap_or_default();
            let taken = log.contains("could not bind") || log.contains("could not create listen socket");
            if !taken || port.is_some() {
                panic!("{}", self.failure("pg_ctl start", &output));
            }
        }
        panic!("no free port for postgres after {PORT_TRIES} tries:\n{}", self.logs());
    }

    /// Starts the server again after [`crash`](Self::crash) on the same port (the start runs
    /// crash recovery); waits until it accepts connections.
    pub async fn start_again(&self) {
        let output = self.pg_ctl_start().await;
        assert!(output.status.success(), "{}", self.failure("pg_ctl start", &output));
    }

    /// Kills the server without a shutdown checkpoint (`pg_ctl stop -m immediate`): every
    /// backend dies at once, every connection drops, and the next start runs crash recovery
    /// from the WAL.
    pub async fn crash(&self) {
        self.run_checked("pg_ctl", &["stop", "-m", "immediate", "-w", "-t", "60", "-D", &self.path("data")]).await;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` on this server via 127.0.0.1.
    pub fn url(&self, database: &str) -> String {
        self.url_with("127.0.0.1", database, "")
    }

    /// A connection URL for `database` via `host` (`127.0.0.1` or `localhost`), with `params`
    /// (`sslmode=...`) as its query.
    pub fn url_with(&self, host: &str, database: &str, params: &str) -> String {
        let query = if params.is_empty() { String::new() } else { format!("?{params}") };
        format!("postgres://postgres@{host}:{}/{database}{query}", self.port)
    }

    /// Everything the server logged so far, across restarts (for a failing test's message).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `pg_ctl start`, waiting until the server accepts connections (or gives up).
    async fn pg_ctl_start(&self) -> Output {
        let (data, log, port) = (self.path("data"), self.path("server.log"), format!("-p {}", self.port));
        self.run("pg_ctl", &["start", "-w", "-t", "60", "-D", &data, "-l", &log, "-o", &port]).await
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Hands `path` to the user the server runs as.
    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bin.join(program));
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    async fn run(&self, program: &str, args: &[&str]) -> Output {
        let output = self.command(program).args(args).output().await;
        output.unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.join(program).display()))
    }

    async fn run_checked(&self, program: &str, args: &[&str]) {
        let output = self.run(program, args).await;
        assert!(output.status.success(), "{}", self.failure(&format!("{program} {args:?}"), &output));
    }

    fn failure(&self, what: &str, output: &Output) -> String {
        format!(
            "{what} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Immediate: nothing of this server is worth a checkpoint. Fails harmlessly when it is
        // down already. Waited for, so that the directory is removed after the server is gone.
        let mut stop = std::process::Command::new(self.bin.join("pg_ctl"));
        stop.args(["stop", "-m", "immediate", "-w", "-t", "30", "-D", &self.path("data")]);
        if let Some((uid, gid)) = self.user {
            stop.uid(uid).gid(gid);
        }
        let _ = stop.output();
    }
}

/// Where `initdb` and `pg_ctl` are.
fn server_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_PG_BIN").or_else(|| std::env::var_os("PG_BINDIR")) {
        return dir.into();
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = newest {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file()))
        .expect("no PostgreSQL server binaries (initdb, pg_ctl): install them or set TEST_PG_BIN")
}

/// uid and gid of the `postgres` account when the tests run as root (initdb and postgres
/// refuse root); `None` otherwise. `/proc/self` belongs to the effective user of this process.
pub(crate) fn server_user() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").expect("/proc/self");
    if me.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd.lines().find(|l| l.starts_with("postgres:")).expect("a postgres account to run the server as");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().expect("uid"), fields[3].parse().expect("gid")))
}

/// A port nobody listens on right now. The server binds it a moment later; another process
/// taking it in between makes that start fail (and the first start try another port), never
/// silently share a server.
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}
