//! The inline Node route (`shared/peers/inline-node`: verify with the official `stripe` SDK,
//! then a Postgres transaction inside the request), run on this machine with the same events,
//! so ingest's throughput can be given as a ratio of what teams run today.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::process::free_port;

/// A running peer with a database of its own (dropped with it).
pub struct InlinePeer {
    pub addr: SocketAddr,
    child: Child,
    _db: testkit::TestDb,
}

impl InlinePeer {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Copies the peer out of `source` into `target/inline-node` (the shared copy may be
    /// read-only), installs its packages once, creates its database with `orders` payments,
    /// and starts it.
    pub async fn start(source: &Path, target_dir: &Path, orders: usize) -> anyhow::Result<Self> {
        let dir = target_dir.join("inline-node");
        std::fs::create_dir_all(&dir)?;
        for file in ["package.json", "package-lock.json", "schema.sql", "server.js"] {
            let from = source.join(file);
            if from.exists() {
                std::fs::copy(&from, dir.join(file)).with_context(|| format!("copy {}", from.display()))?;
            }
        }
        if !dir.join("node_modules").exists() {
            eprintln!("installing the inline peer's packages (npm install)");
            let status = std::process::Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent"])
                .current_dir(&dir)
                .status()
                .context("npm install (is Node installed?)")?;
            anyhow::ensure!(status.success(), "npm install failed in {}", dir.display());
        }
        let db = testkit::TestDb::create().await;
        let sql = db.client().await;
        sql.batch_execute(&std::fs::read_to_string(dir.join("schema.sql"))?).await?;
        sql.execute(
            "INSERT INTO payments (order_id, trainer_id) SELECT 'ord' || g, g % 100 FROM generate_series(0, $1::int - 1) g",
            &[&(orders as i32)],
        )
        .await?;
        let port = free_port()?;
        let child = Command::new("node")
            .arg("server.js")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("DATABASE_URL", &db.url)
            .env("STRIPE_WEBHOOK_SECRET", crate::events::SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start node server.js")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        testkit::eventually("the inline peer listening", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        Ok(Self { addr, child, _db: db })
    }

    /// The peer's database.
    pub fn database(&self) -> &str {
        &self._db.name
    }

    /// Payments the peer marked paid.
    pub async fn paid(&self) -> anyhow::Result<i64> {
        let sql = self._db.client().await;
        Ok(sql.query_one("SELECT count(*) FROM payments WHERE payment_status = 'paid'", &[]).await?.get(0))
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `shared/peers/inline-node` next to the workspace, where the project keeps it.
pub fn default_source(workspace: &Path) -> PathBuf {
    workspace.join("../shared/peers/inline-node")
}
