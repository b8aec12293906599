//! A PostgreSQL server of a test's own: `initdb` into a temporary directory, its own port and
//! socket directory, trust authentication. A test can crash it (`pg_ctl stop -m immediate`,
//! which kills every server process at once, as a power cut would stop them, and leaves crash
//! recovery to the next start) and start it again, without touching the machine's own server.
//! Dropping the handle stops the server and deletes its directory, also when the test panics.
//!
//! The server binaries are found in `TEST_PG_BIN`, else in the newest
//! `/usr/lib/postgresql/<version>/bin`, else on `PATH`. PostgreSQL refuses to run as root; when
//! the tests do, the server runs as the `postgres` user (`runuser`).

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::unique;

/// A running (or crashed) PostgreSQL server owned by one test.
pub struct PgInstance {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The OS user the server runs as, when it is not the current one.
    run_as: Option<String>,
}

impl PgInstance {
    /// Initialises a new cluster and starts it; panics with the server's output on failure.
    pub fn start() -> Self {
        let bin = server_bin_dir();
        let dir = std::env::temp_dir().join(unique("pg"));
        let run_as = running_as_root().then(|| "postgres".to_string());
        std::fs::create_dir_all(dir.join("socket")).expect("create the instance directory");
        let me = Self { bin, dir, port: free_port(), run_as };
        if let Some(user) = &me.run_as {
            let status = Command::new("chown").args(["-R", user]).arg(&me.dir).status().expect("chown runs");
            assert!(status.success(), "chown {} to {user}", me.dir.display());
        }
        let data = me.data_dir();
        me.run_checked(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--no-instructions"],
        );
        me.start_server();
        me
    }

    /// Starts the server (again, after [`crash`](Self::crash)); waits until it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.path("socket")
        );
        let log = self.path("server.log");
        self.run_checked("pg_ctl", &["start", "-w", "-t", "60", "-D", &self.data_dir(), "-l", &log, "-o", &options]);
    }

    /// Kills the server without a shutdown checkpoint (`pg_ctl stop -m immediate`): every
    /// connection drops at once and the next start runs crash recovery from the WAL.
    pub fn crash(&self) {
        self.run_checked("pg_ctl", &["stop", "-m", "immediate", "-w", "-t", "60", "-D", &self.data_dir()]);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> String {
        self.path("data")
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command.args(args).current_dir(&self.dir);
        command.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    fn run_checked(&self, program: &str, args: &[&str]) {
        let output = self.run(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        // Immediate: nothing of this server is worth a checkpoint. Fails harmlessly if it is down.
        let _ = self.run("pg_ctl", &["stop", "-m", "immediate", "-w", "-t", "30", "-D", &self.data_dir()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `initdb` and `pg_ctl` are.
fn server_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = newest {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").exists()))
        .expect("no PostgreSQL server binaries (initdb): install them or set TEST_PG_BIN")
}

/// `/proc/self` belongs to the effective user of this process.
fn running_as_root() -> bool {
    std::fs::metadata(Path::new("/proc/self")).map(|m| m.uid() == 0).unwrap_or(false)
}

/// A port nobody listens on right now. The server binds it a moment later; another process
/// taking it in between makes the start fail loudly, never silently share a server.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let port = listener.local_addr().expect("local address").port();
    drop(listener);
    port
}
