//! RabbitMQ nodes of a test's own, started from the installed `rabbitmq-server`: for tests that
//! must kill a broker node, raise a resource alarm, or form a cluster, none of which may touch
//! the machine's shared node.
//!
//! Each node gets a unique name (`t<hex>@localhost`), free ports (AMQP and Erlang
//! distribution), its own data, log and config files under a directory of the test's, and an
//! Erlang cookie of its own (through `HOME`), so it can never join the machine's node. A node
//! runs in a process group of its own and the whole group is SIGKILLed when the handle drops,
//! also when the test panics. Nodes are started and driven with the CLI tools as root does
//! (`/usr/lib/rabbitmq/bin/...`, without switching to the `rabbitmq` user).
//!
//! A node can also run inside a namespace of a [`NetLab`] (see [`RabbitCluster::start_in`]),
//! on the host's own address: named `rabbit@<address>` (long names), listening on the standard
//! ports there, with an epmd of its namespace's own, so that the lab can cut it off from the
//! other nodes or from the test process. The machine's `rabbitmq-env.conf` (which pins epmd and
//! distribution to 127.0.0.1) is replaced by an empty one of the node's.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::netns::NetLab;

use std::os::unix::process::CommandExt;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
/// A node boots in 5 to 15 s on a busy two-core machine.
const BOOT_TIMEOUT_SECS: u32 = 120;

/// One node of a test's own.
pub struct RabbitNode {
    pub name: String,
    pub amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    home: PathBuf,
    server: Option<Child>,
    /// Where the node runs when it is in a lab's namespace; `None`: on 127.0.0.1.
    host: Option<NodeHost>,
    /// Lines added to its `rabbitmq.conf`.
    extra_config: String,
}

/// A lab namespace a node runs in, and its address there.
#[derive(Debug, Clone)]
pub struct NodeHost {
    pub namespace: String,
    pub ip: Ipv4Addr,
}

impl RabbitNode {
    /// Starts a node whose files live under `root` (shared by the nodes of one cluster, so
    /// they share a cookie) and waits until it runs.
    pub async fn start(root: &Path) -> Self {
        let name = format!("t{}@localhost", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let dir = root.join(name.split('@').next().unwrap());
        std::fs::create_dir_all(&dir).expect("node directory");
        let mut node = Self {
            name,
            amqp_port: free_port(),
            dist_port: free_port(),
            dir,
            home: root.to_path_buf(),
            server: None,
            host: None,
            extra_config: String::new(),
        };
        node.boot().await;
        node
    }

    /// Starts a node in `host`'s namespace, named `rabbit@<its address>`, with `extra_config`
    /// added to its `rabbitmq.conf`; its files live under `root` as with [`RabbitNode::start`].
    pub async fn start_in(root: &Path, host: NodeHost, extra_config: &str) -> Self {
        let name = format!("rabbit@{}", host.ip);
        let dir = root.join(host.ip.to_string());
        std::fs::create_dir_all(&dir).expect("node directory");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("environment file");
        let mut node = Self {
            name,
            amqp_port: 5672,
            dist_port: 25672,
            dir,
            home: root.to_path_buf(),
            server: None,
            host: Some(host),
            extra_config: extra_config.to_string(),
        };
        node.boot().await;
        node
    }

    /// The address its AMQP listener is on.
    pub fn amqp_addr(&self) -> SocketAddr {
        let ip = self.host.as_ref().map_or(Ipv4Addr::LOCALHOST, |h| h.ip);
        SocketAddr::from((ip, self.amqp_port))
    }

    /// `amqp://guest:guest@<address>:<port>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp_addr())
    }

    /// A command running `program` where the node runs (in its namespace, if any), with the
    /// environment the node and its CLI share.
    fn command(&self, program: &str) -> Command {
        let mut command = match &self.host {
            Some(host) => {
                let mut c = Command::new("/usr/sbin/ip");
                c.args(["netns", "exec", &host.namespace, program]);
                c
            }
            None => Command::new(program),
        };
        command.env("HOME", &self.home);
        if self.host.is_some() {
            command
                .env("RABBITMQ_USE_LONGNAME", "true")
                .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"));
        }
        command
    }

    /// SIGKILLs the node (its whole process group) and waits until its AMQP port is closed.
    pub async fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            kill_group(&server);
            let _ = server.wait();
        }
        let addr = self.amqp_addr();
        crate::eventually("the killed node's port closed", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(addr).await.is_err().then_some(())
        })
        .await;
    }

    /// Starts the node again with its name, ports and data (it rejoins its cluster).
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "restart a killed node only");
        self.boot().await;
    }

    /// Runs `rabbitmqctl -n <node> args...`; returns its standard output, or panics with its
    /// error output.
    pub async fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args).await.unwrap_or_else(|e| panic!("rabbitmqctl {args:?} on {}: {e}", self.name))
    }

    /// [`RabbitNode::ctl`] returning the error instead of panicking.
    pub async fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut command = self.command(CTL);
        command.args(["-n", &self.name]).args(args);
        let output = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run {CTL}: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
        }
    }

    async fn boot(&mut self) {
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            self.dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = {}\nloopback_users = none\n{}\n", self.amqp_addr(), self.extra_config),
        )
        .expect("config file");
        let log = std::fs::File::create(self.dir.join("server.out")).expect("server output file");
        let pid_file = self.dir.join("pid");
        let _ = std::fs::remove_file(&pid_file);
        let server = self
            .command(SERVER)
            .current_dir(&self.dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", self.amqp_addr().ip().to_string())
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", &pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("output file")))
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SERVER}: {e}"));
        self.server = Some(server);
        let timeout = BOOT_TIMEOUT_SECS.to_string();
        let waited = self.try_ctl(&["wait", pid_file.to_str().expect("UTF-8 path"), "--timeout", &timeout]).await;
        let ready = match waited {
            Ok(_) => self.try_ctl(&["await_startup", "--timeout", &timeout]).await,
            Err(e) => Err(e),
        };
        if let Err(error) = ready {
            let output = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
            let tail: String =
                output.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            panic!("RabbitMQ node {} did not start: {error}\n{tail}", self.name);
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            kill_group(&server);
            let _ = server.wait();
        }
    }
}

fn kill_group(server: &Child) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", server.id())]).status();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A directory removed when dropped (after the nodes in it are gone).
struct NodeRoot(PathBuf);

impl NodeRoot {
    fn create() -> Self {
        let path = std::env::temp_dir().join(crate::unique("rabbit"));
        std::fs::create_dir_all(&path).expect("node root directory");
        // The cookie the nodes of this root and the CLI share (Erlang wants it private).
        let cookie = path.join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).expect("cookie");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).expect("cookie mode");
        Self(path)
    }
}

impl Drop for NodeRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Nodes of a test's own, clustered when there are several. Dropping it kills every node and
/// removes their files; when the test failed, the end of each node's log is printed first.
pub struct RabbitCluster {
    // Field order matters: nodes are killed before their directory is removed.
    pub nodes: Vec<RabbitNode>,
    _root: NodeRoot,
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = node.dir.join("log").join(format!("{}.log", node.name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {}, last lines of its log:\n{}",
                    node.name,
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
    }
}

impl RabbitCluster {
    /// Starts `size` nodes at once and joins the others to the first.
    pub async fn start(size: usize) -> Self {
        let root = NodeRoot::create();
        let nodes = futures_util::future::join_all((0..size).map(|_| RabbitNode::start(&root.0))).await;
        Self::join(Self { nodes, _root: root }).await
    }

    /// Starts one node in each of `lab`'s hosts at once (node `i` on host `i`), with
    /// `extra_config` in each `rabbitmq.conf` (`cluster_partition_handling`, `net_ticktime`),
    /// and joins the others to the first.
    pub async fn start_in(lab: &NetLab, extra_config: &str) -> Self {
        let root = NodeRoot::create();
        let nodes = futures_util::future::join_all(lab.hosts.iter().map(|h| {
            let host = NodeHost { namespace: h.namespace.clone(), ip: h.ip };
            RabbitNode::start_in(&root.0, host, extra_config)
        }))
        .await;
        Self::join(Self { nodes, _root: root }).await
    }

    async fn join(cluster: Self) -> Self {
        if let Some((first, rest)) = cluster.nodes.split_first() {
            for node in rest {
                node.ctl(&["stop_app"]).await;
                node.ctl(&["join_cluster", &first.name]).await;
                node.ctl(&["start_app"]).await;
                node.ctl(&["await_startup"]).await;
            }
        }
        cluster
    }

    /// Every node's AMQP URL, comma-separated (the `AMQP_URL` of a client of this cluster),
    /// starting with node `first`.
    pub fn amqp_urls_from(&self, first: usize) -> String {
        let n = self.nodes.len();
        (0..n).map(|i| self.nodes[(first + i) % n].amqp_url()).collect::<Vec<_>>().join(",")
    }

    /// A node other than `except` that is running, to ask questions through.
    pub fn other_than(&self, except: usize) -> &RabbitNode {
        self.nodes
            .iter()
            .enumerate()
            .find(|(i, n)| *i != except && n.server.is_some())
            .map(|(_, n)| n)
            .expect("a running node")
    }

    /// Index of the node whose name is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}
