//! Processes the benchmarks start: the pipeline's release binaries, each on a port of its own
//! with its output in a log file, stopped with SIGTERM as an orchestrator stops them (so they
//! drain and flush their logs), and killed if the benchmark ends before that.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::events;

/// How long a process may take to answer on its port, and to exit after SIGTERM.
const START_AND_STOP: Duration = Duration::from_secs(30);

/// A release binary (ingest or worker) running on a port of its own.
pub struct ServiceProcess {
    pub addr: SocketAddr,
    child: Child,
}

impl ServiceProcess {
    /// Starts `bin` listening on a free port given in `addr_var` (`INGEST_ADDR`, `WORKER_ADDR`),
    /// configured by `vars` alone (the benchmark's own `RUST_LOG` and `WEBHOOKS_CONFIG` are not
    /// passed on), its output in `log`; waits until `ready_path` answers 2xx.
    pub async fn start(
        bin: &Path,
        addr_var: &str,
        vars: &[(&str, String)],
        log: &Path,
        ready_path: &str,
    ) -> anyhow::Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut command = Command::new(bin);
        command.env_remove("RUST_LOG").env_remove("WEBHOOKS_CONFIG").env(addr_var, addr.to_string());
        for (name, value) in vars {
            command.env(name, value);
        }
        let child = spawn_logged(command, log)?;
        let client = reqwest::Client::new();
        let name = bin.file_name().unwrap_or_default().to_string_lossy();
        testkit::eventually(&format!("{name} answering {ready_path}"), START_AND_STOP, || async {
            client.get(format!("http://{addr}{ready_path}")).send().await.ok()?.status().is_success().then_some(())
        })
        .await;
        Ok(Self { addr, child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, as an orchestrator stops it; SIGKILL if it has not exited after 30 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        if tokio::time::timeout(START_AND_STOP, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// The ingest binary on AMQP prefix `prefix`, taking events signed with the benchmark's secret.
/// `extra_env` (`NAME=value`) overrides or adds settings.
pub async fn start_ingest(
    bin: &Path,
    prefix: &str,
    log_format: &str,
    extra_env: &[String],
    log: &Path,
) -> anyhow::Result<ServiceProcess> {
    let mut vars = vec![
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", prefix.to_string()),
        ("STRIPE_WEBHOOK_SECRET", events::SECRET.to_string()),
        ("LOG_FORMAT", log_format.to_string()),
        // Not read here; a free port keeps it clear of a developer's ingest on the default.
        ("INGEST_METRICS_ADDR", "127.0.0.1:0".to_string()),
    ];
    vars.extend(extra_env.iter().filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k, v.to_string())));
    ServiceProcess::start(bin, "INGEST_ADDR", &vars, log, "/readyz").await
}

/// Starts `command` with stdout and stderr in the file `log` (created, or emptied); the process
/// is killed when its handle is dropped.
pub fn spawn_logged(mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    command
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {program}"))
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
