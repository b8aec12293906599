//! A binary run as its own OS process with its output captured line by line, to signal or
//! kill it for real and to read what it logged.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct LoggedProcess {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl LoggedProcess {
    /// Starts `program` with `vars` added to the environment; stdout and stderr are captured.
    pub fn spawn(program: &str, args: &[&str], vars: &[(String, String)]) -> Self {
        let mut command = Command::new(program);
        command.args(args).envs(vars.iter().cloned());
        Self::from_command(command)
    }

    /// Starts a prepared command (for settings `spawn` does not take, such as the user to run
    /// as); stdout and stderr are captured and the process is killed when dropped.
    pub fn from_command(mut command: Command) -> Self {
        let program = command.as_std().get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self { child, lines }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line matching `predicate` and returns it.
    pub async fn wait_for_line(&self, what: &str, deadline: Duration, predicate: impl Fn(&str) -> bool) -> String {
        crate::eventually(what, deadline, || async { self.lines().into_iter().find(|l| predicate(l)) }).await
    }

    /// The `addr` field of the first JSON log line whose message contains `message`.
    pub async fn logged_addr(&self, message: &str) -> std::net::SocketAddr {
        let line = self
            .wait_for_line(&format!("a log line {message:?}"), Duration::from_secs(30), |l| l.contains(message))
            .await;
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON log line (LOG_FORMAT=json)");
        json["addr"].as_str().expect("addr field").parse().expect("socket address")
    }

    /// Sends SIGTERM, as an orchestrator does.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(status.success(), "SIGTERM delivered");
    }

    /// Waits for the process to exit within `deadline`; panics if it does not.
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("process still running after {deadline:?}"))
            .expect("wait")
    }
}

/// A binary run as its own OS process whose stdout and stderr are pipes that nobody reads once
/// it has started (a log shipper that stopped reading): its first stdout lines are read until
/// the one that says it is ready, then neither pipe is read again while it runs. Killed when
/// dropped.
pub struct UnreadProcess {
    pub child: Child,
    // Held open and never read: a closed pipe would fail writes instead of filling up.
    _stdout: BufReader<tokio::process::ChildStdout>,
    _stderr: tokio::process::ChildStderr,
}

impl UnreadProcess {
    /// Starts `program` with `vars` added to the environment and returns once it has written,
    /// for each of `ready`, a stdout line containing it; with those lines, in `ready`'s order.
    pub async fn spawn(program: &str, vars: &[(String, String)], ready: &[&str]) -> (Self, Vec<String>) {
        let mut child = Command::new(program)
            .envs(vars.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stderr = child.stderr.take().expect("piped stderr");
        let started = async {
            let mut found: Vec<Option<String>> = vec![None; ready.len()];
            let mut line = String::new();
            while found.iter().any(Option::is_none) {
                line.clear();
                let read = stdout.read_line(&mut line).await.expect("stdout readable");
                assert!(read > 0, "{program} closed stdout before logging {ready:?}");
                for (wanted, slot) in ready.iter().zip(found.iter_mut()) {
                    if slot.is_none() && line.contains(wanted) {
                        *slot = Some(line.trim_end().to_string());
                    }
                }
            }
            found.into_iter().flatten().collect()
        };
        let lines = tokio::time::timeout(Duration::from_secs(30), started)
            .await
            .unwrap_or_else(|_| panic!("{program} did not log {ready:?} within 30 s"));
        (Self { child, _stdout: stdout, _stderr: stderr }, lines)
    }

    /// The `addr` field of a JSON log line.
    pub fn addr_of(line: &str) -> std::net::SocketAddr {
        let json: serde_json::Value = serde_json::from_str(line).expect("JSON log line (LOG_FORMAT=json)");
        json["addr"].as_str().expect("addr field").parse().expect("socket address")
    }
}
