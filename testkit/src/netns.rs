//! A network lab of a test's own, for partitions rather than kills: network namespaces on a
//! private subnet, each reachable from the test process, with links that can be cut, healed
//! or made slow and lossy, and processes run inside a namespace.
//!
//! Each lab picks a random `10.a.b.0/24` (checked unused on this machine), so labs of tests
//! running in parallel never meet. The test process (the root namespace) is `10.a.b.1` on a
//! bridge of the lab's; host `i` is a namespace with one veth into that bridge at
//! `10.a.b.(10 + i)`. Names are short and unique (`nl<hex>…`, within the 15 characters Linux
//! allows an interface).
//!
//! A cut is made with `tc` on both ends of every veth: an `htb` root qdisc passes everything
//! unshaped, except what `u32` filters send to its one class, whose `pfifo limit 0` drops every
//! packet. Packets vanish, connections hang as in a real partition: no reset, no refused
//! connection. Only IP is dropped: ARP still works, so a healed link carries packets again at
//! once. (Only `htb`, `tbf`, `pfifo` and the `u32` classifier are needed: kernels built without
//! `netem` or the `gact` action, like the one CI runs on, have them.)
//!
//! Loss is random, per packet, both ways: an nftables table in the host's namespace drops a
//! packet to or from the peer when the kernel's per-packet random number (`meta random`, a
//! uniform 32-bit value) falls under the share asked for. `netem` would do the same, but CI's
//! kernel has no `netem`; it has nf_tables (Debian's `nftables` package brings the `nft`
//! command). Latency is not made here: [`crate::TcpProxy::delay`] adds it in user space.
//!
//! Dropping the lab kills every process in its namespaces, then deletes the namespaces (their
//! veths go with them) and the bridge, also when the test panics. A test process killed
//! outright (SIGKILL) cannot: the next lab created on the machine sweeps such orphans (each
//! namespace's name carries its owner's pid). Creating one needs root
//! (CAP_NET_ADMIN) and iproute2; without them it panics, saying so: a test that needs a
//! partition must not pass without one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const IP: &str = "/usr/sbin/ip";
const TC: &str = "/usr/sbin/tc";
const NFT: &str = "/usr/sbin/nft";

/// The `htb` class whose queue drops every packet.
const CUT_CLASS: &str = "1:4";

/// An end of a link: the test process, or one of the lab's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// The root namespace, where the test process and what it runs in-process live.
    Root,
    /// Host `i` of the lab.
    Host(usize),
}

/// A namespace of the lab.
#[derive(Debug, Clone)]
pub struct Host {
    /// `ip netns` name.
    pub namespace: String,
    pub ip: Ipv4Addr,
    /// The root-namespace end of its veth, on the bridge.
    outer: String,
}

pub struct NetLab {
    id: String,
    subnet: [u8; 3],
    bridge: Option<String>,
    pub hosts: Vec<Host>,
    /// The links cut, each pair once (smaller end first).
    cuts: Mutex<BTreeSet<(Peer, Peer)>>,
    /// Lossy links: (host, peer) → share of packets dropped each way, in percent.
    losses: Mutex<BTreeMap<(usize, Peer), f64>>,
    /// Packets the lossy links dropped, counted when their rules are rewritten.
    dropped: Mutex<u64>,
}

impl NetLab {
    /// Creates `hosts` namespaces on a fresh private subnet, each reachable from the test
    /// process; panics (loudly: not root, no iproute2) when it cannot.
    pub fn new(hosts: usize) -> Self {
        assert!(hosts > 0 && hosts < 200, "1 to 199 hosts");
        let probe = Command::new(IP).args(["netns", "list"]).output();
        match probe {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "network namespaces are unavailable ({IP} netns list: {}); the partition tests need root",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("cannot run {IP} ({e}); the partition tests need iproute2 and root"),
        }
        sweep_orphans();
        let id = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
        let subnet = free_subnet();
        let mut lab = Self {
            id,
            subnet,
            bridge: None,
            hosts: Vec::new(),
            cuts: Mutex::new(BTreeSet::new()),
            losses: Mutex::new(BTreeMap::new()),
            dropped: Mutex::new(0),
        };
        // Every resource is recorded as soon as it exists, so a failure half-way is cleaned up
        // by Drop like a finished lab.
        let bridge = format!("nl{}br", lab.id);
        run(IP, &["link", "add", &bridge, "type", "bridge"]);
        lab.bridge = Some(bridge.clone());
        run(IP, &["addr", "add", &format!("{}/24", lab.root_ip()), "dev", &bridge]);
        run(IP, &["link", "set", &bridge, "up"]);
        for i in 0..hosts {
            // The owner's pid in the name: a lab whose test process died without dropping it
            // (SIGKILL) is swept by the next one.
            let namespace = format!("nl{}-{i}-{}", lab.id, std::process::id());
            let outer = format!("nl{}v{i}", lab.id);
            let inner = format!("nl{}i{i}", lab.id);
            run(IP, &["netns", "add", &namespace]);
            let host = Host { namespace: namespace.clone(), ip: lab.ip_of(i), outer: outer.clone() };
            lab.hosts.push(host.clone());
            run(IP, &["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            run(IP, &["link", "set", &inner, "netns", &namespace]);
            let ns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &namespace];
                all.extend_from_slice(args);
                run(IP, &all);
            };
            ns(&[IP, "link", "set", &inner, "name", "eth0"]);
            ns(&[IP, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"]);
            ns(&[IP, "link", "set", "eth0", "up"]);
            ns(&[IP, "link", "set", "lo", "up"]);
            run(IP, &["link", "set", &outer, "master", &bridge]);
            run(IP, &["link", "set", &outer, "up"]);
            for (dev, namespace) in [("eth0", Some(namespace.as_str())), (outer.as_str(), None)] {
                // Unclassified packets (no default class) go out unshaped.
                tc(namespace, &["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "99"]);
                tc(
                    namespace,
                    &[
                        "class", "add", "dev", dev, "parent", "1:", "classid", CUT_CLASS, "htb", "rate", "10gbit",
                        "quantum", "1514",
                    ],
                );
                tc(
                    namespace,
                    &["qdisc", "add", "dev", dev, "parent", CUT_CLASS, "handle", "40:", "pfifo", "limit", "0"],
                );
            }
        }
        lab
    }

    /// The test process's address in the lab.
    pub fn root_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Host `i`'s address.
    pub fn ip_of(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10 + i as u8)
    }

    /// A command that runs `program` inside host `i`'s namespace (`ip netns exec`).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut command = Command::new(IP);
        command.args(["netns", "exec", &self.hosts[i].namespace, program]);
        command
    }

    /// Drops every packet between `a` and `b`, both ways, until [`NetLab::heal`].
    pub fn cut(&self, a: Peer, b: Peer) {
        self.isolate(a, &[b]);
    }

    /// Cuts `a` off from every one of `others` (all at once).
    pub fn isolate(&self, a: Peer, others: &[Peer]) {
        {
            let mut cuts = self.cuts.lock().unwrap();
            for b in others {
                assert_ne!(a, *b, "a link has two ends");
                cuts.insert(if a < *b { (a, *b) } else { (*b, a) });
            }
        }
        self.apply();
    }

    /// Every link back to normal: no cut, no loss.
    pub fn heal(&self) {
        self.cuts.lock().unwrap().clear();
        self.apply();
        let lossy: BTreeSet<usize> =
            std::mem::take(&mut *self.losses.lock().unwrap()).into_keys().map(|(h, _)| h).collect();
        for host in lossy {
            self.apply_losses(host);
        }
    }

    /// Drops `percent` of the packets between host `host` and `peer`, each way, at random
    /// (each packet on its own), until set to 0 or [`NetLab::heal`].
    pub fn lose(&self, host: usize, peer: Peer, percent: f64) {
        assert!((0.0..=100.0).contains(&percent), "a share of packets, 0 to 100");
        assert_ne!(Peer::Host(host), peer, "a link has two ends");
        {
            let mut losses = self.losses.lock().unwrap();
            if percent == 0.0 {
                losses.remove(&(host, peer));
            } else {
                losses.insert((host, peer), percent);
            }
        }
        self.apply_losses(host);
    }

    /// Packets dropped by lossy links so far (all hosts, both ways): proof that a loss asked for
    /// took place.
    pub fn dropped(&self) -> u64 {
        *self.dropped.lock().unwrap() + (0..self.hosts.len()).map(|host| self.counted(host)).sum::<u64>()
    }

    /// What the drop counters of host `host`'s current rules hold (0 without rules).
    fn counted(&self, host: usize) -> u64 {
        let Ok(output) = Command::new(IP)
            .args(["netns", "exec", &self.hosts[host].namespace, NFT, "list", "table", "inet", "netlab"])
            .output()
        else {
            return 0;
        };
        // Rules read `… counter packets N bytes M drop`.
        let text = String::from_utf8_lossy(&output.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        words.windows(2).filter(|w| w[0] == "packets").filter_map(|w| w[1].parse::<u64>().ok()).sum()
    }

    /// Rewrites host `host`'s nftables ruleset from the losses: one table, a rule per lossy
    /// peer on the way out (by destination) and on the way in (by source).
    fn apply_losses(&self, host: usize) {
        let mut rules = Vec::new();
        for ((_, peer), percent) in
            self.losses.lock().unwrap().range((host, Peer::Root)..=(host, Peer::Host(usize::MAX)))
        {
            let addr = match peer {
                Peer::Root => self.root_ip(),
                Peer::Host(i) => self.ip_of(*i),
            };
            // `meta random` is uniform over u32: below this, `percent` of the packets.
            let under = (u32::MAX as f64 * percent / 100.0).round() as u64;
            rules.push((
                format!("ip daddr {addr} meta random < {under} counter drop"),
                format!("ip saddr {addr} meta random < {under} counter drop"),
            ));
        }
        let mut script = String::from("flush ruleset\n");
        if !rules.is_empty() {
            let (out, inbound): (Vec<_>, Vec<_>) = rules.into_iter().unzip();
            script += &format!(
                "table inet netlab {{\n chain out {{ type filter hook output priority 0; policy accept;\n  {}\n }}\n \
                 chain in {{ type filter hook input priority 0; policy accept;\n  {}\n }}\n}}\n",
                out.join("\n  "),
                inbound.join("\n  ")
            );
        }
        let namespace = &self.hosts[host].namespace;
        *self.dropped.lock().unwrap() += self.counted(host);
        let mut child = Command::new(IP)
            .args(["netns", "exec", namespace, NFT, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {NFT} in {namespace} ({e}); lossy links need Debian's nftables"));
        std::io::Write::write_all(child.stdin.as_mut().expect("piped"), script.as_bytes())
            .expect("nft reads its script");
        let output = child.wait_with_output().expect("nft runs");
        assert!(
            output.status.success(),
            "{NFT} -f - in {namespace} failed (lossy links need Debian's nftables and a kernel with nf_tables): {}\n{script}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    fn devices(&self) -> Vec<(String, Option<String>)> {
        self.hosts
            .iter()
            .flat_map(|h| [("eth0".to_string(), Some(h.namespace.clone())), (h.outer.clone(), None)])
            .collect()
    }

    /// Rewrites every filter from the cuts: a packet leaving host `x` for `y` is dropped on
    /// `x`'s eth0 (matched by destination); one the test process sends to host `y` on `y`'s
    /// outer veth (matched by source).
    fn apply(&self) {
        let cuts = self.cuts.lock().unwrap().clone();
        for (dev, namespace) in self.devices() {
            // Deleting when there is none fails; that is fine.
            let _ = tc_output(namespace.as_deref(), &["filter", "del", "dev", &dev, "parent", "1:"]);
        }
        let ip = |peer: Peer| match peer {
            Peer::Root => self.root_ip(),
            Peer::Host(i) => self.ip_of(i),
        };
        for (a, b) in cuts {
            for (from, to) in [(a, b), (b, a)] {
                let (dev, namespace, field, addr) = match (from, to) {
                    (Peer::Host(x), _) => ("eth0".to_string(), Some(self.hosts[x].namespace.clone()), "dst", ip(to)),
                    (Peer::Root, Peer::Host(y)) => (self.hosts[y].outer.clone(), None, "src", ip(Peer::Root)),
                    (Peer::Root, Peer::Root) => unreachable!("a link has two ends"),
                };
                let addr = format!("{addr}/32");
                tc(
                    namespace.as_deref(),
                    &[
                        "filter", "add", "dev", &dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match",
                        "ip",
                    ]
                    .into_iter()
                    .chain([field, addr.as_str(), "flowid", CUT_CLASS])
                    .collect::<Vec<_>>(),
                );
            }
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for host in &self.hosts {
            kill_all_in(&host.namespace);
            let _ = Command::new(IP).args(["netns", "del", &host.namespace]).status();
            // Its veth goes with the namespace, once the kernel is done with it; now, to be sure.
            let _ = Command::new(IP).args(["link", "del", &host.outer]).stderr(std::process::Stdio::null()).status();
        }
        if let Some(bridge) = &self.bridge {
            let _ = Command::new(IP).args(["link", "del", bridge]).status();
        }
    }
}

/// Deletes the labs of test processes that are gone (killed before their lab's `Drop` ran):
/// kills what still runs in their namespaces (a RabbitMQ node, say), deletes the namespaces,
/// their veths and their bridge. A lab's namespaces are `nl<id>-<host>-<owner pid>`.
fn sweep_orphans() {
    let Ok(out) = Command::new(IP).args(["netns", "list"]).output() else { return };
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut bridges = BTreeSet::new();
    for name in listing.lines().filter_map(|line| line.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("nl") else { continue };
        let parts: Vec<&str> = rest.split('-').collect();
        let [id, host, owner] = parts[..] else { continue };
        let (Ok(host), Ok(owner)) = (host.parse::<usize>(), owner.parse::<u32>()) else { continue };
        if alive(owner) {
            continue;
        }
        kill_all_in(name);
        let _ = Command::new(IP).args(["netns", "del", name]).status();
        let _ = Command::new(IP)
            .args(["link", "del", &format!("nl{id}v{host}")])
            .stderr(std::process::Stdio::null())
            .status();
        bridges.insert(format!("nl{id}br"));
    }
    for bridge in bridges {
        let _ = Command::new(IP).args(["link", "del", &bridge]).stderr(std::process::Stdio::null()).status();
    }
}

/// Whether process `pid` runs (exists and is not a zombie waiting to be reaped).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        // `pid (comm) state ...`: the state follows the last `)`.
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// Kills every process in `namespace` until none is left, for a few seconds at most (epmd and
/// the like leave their process group).
fn kill_all_in(namespace: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = Command::new(IP)
            .args(["netns", "pids", namespace])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect())
            .unwrap_or_else(|_| Vec::<String>::new());
        if pids.is_empty() || Instant::now() > until {
            break;
        }
        let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `10.a.b.0/24` no interface of this machine is on (`a` from 100 up, clear of the usual
/// `10.0.x` networks).
fn free_subnet() -> [u8; 3] {
    for _ in 0..50 {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        let subnet = [10, 100 + bytes[0] % 150, bytes[1]];
        let prefix = format!("10.{}.{}.", subnet[1], subnet[2]);
        let taken = Command::new(IP)
            .args(["-4", "-o", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&prefix))
            .unwrap_or(false);
        if !taken {
            return subnet;
        }
    }
    panic!("no free 10.x.y.0/24 found")
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

fn tc_output(namespace: Option<&str>, args: &[&str]) -> std::io::Result<std::process::Output> {
    match namespace {
        Some(ns) => Command::new(IP).args(["netns", "exec", ns, TC]).args(args).output(),
        None => Command::new(TC).args(args).output(),
    }
}

fn tc(namespace: Option<&str>, args: &[&str]) {
    let output = tc_output(namespace, args).unwrap_or_else(|e| panic!("cannot run {TC}: {e}"));
    assert!(
        output.status.success(),
        "tc {} failed{}: {}",
        args.join(" "),
        namespace.map(|n| format!(" in {n}")).unwrap_or_default(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}
