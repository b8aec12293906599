//! The network lab's faults do what they say: a cut drops every packet, a lossy link about the
//! share asked for, a heal neither. Probed with TCP connects from the test process to a port
//! nothing listens on in the host's namespace: the host answers a SYN with a reset at once, so a
//! connect that is refused got through both ways, and one still pending after `PATIENCE` lost
//! its SYN or its reset (the first SYN retransmission comes only after a second).

use std::net::SocketAddr;
use std::time::Duration;

use testkit::netns::{self, Peer};
use testkit::NetLab;

const PROBES: usize = 300;
const PATIENCE: Duration = Duration::from_millis(400);

/// How many of `PROBES` connects to `addr` got no answer within `PATIENCE`.
async fn unanswered(addr: SocketAddr) -> usize {
    let probes = (0..PROBES).map(|_| async move {
        match tokio::time::timeout(PATIENCE, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => true,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => false,
            Ok(other) => panic!("a probe of a port nothing listens on: {other:?}"),
        }
    });
    futures_util::future::join_all(probes).await.into_iter().filter(|lost| *lost).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_and_losses_drop_what_they_say_and_heal_restores_the_link() {
    let lab = NetLab::new(1);
    let addr = SocketAddr::from((lab.ip_of(0), 9));

    assert_eq!(unanswered(addr).await, 0, "a whole link answers every probe");

    lab.cut(Peer::Root, Peer::Host(0));
    assert_eq!(unanswered(addr).await, PROBES, "a cut link answers none");
    lab.heal();
    assert_eq!(unanswered(addr).await, 0, "healed");

    // 30 % each way: a probe is answered when its SYN and its reset both pass, 0.7² = 49 %.
    lab.lose(0, Peer::Root, 30.0);
    let lost = unanswered(addr).await;
    let share = lost as f64 / PROBES as f64;
    eprintln!("30 % loss each way: {lost} of {PROBES} probes unanswered ({:.0} %, 51 % expected)", share * 100.0);
    // Five standard deviations (2.9 % at 300 probes) either side of 51 %.
    assert!((0.36..=0.66).contains(&share), "{:.0} % of probes lost, 51 % expected", share * 100.0);

    assert!(lab.dropped() >= lost as u64, "each unanswered probe lost at least one packet the lab counted");

    lab.lose(0, Peer::Root, 0.0);
    let dropped = lab.dropped();
    assert_eq!(unanswered(addr).await, 0, "loss set back to 0");
    assert_eq!(lab.dropped(), dropped, "nothing dropped without loss");
    lab.lose(0, Peer::Root, 100.0);
    assert_eq!(unanswered(addr).await, PROBES, "100 % loss answers none");
    lab.heal();
    assert_eq!(unanswered(addr).await, 0, "a heal ends the loss too");
}

/// The environment variable that makes [`holds_a_lab_until_killed`] do its part.
const HOLDER: &str = "NETLAB_SWEEP_HOLDER";

/// Run only by the test below, as a process of its own that is then killed outright: makes a
/// lab, starts a process in it, prints the namespace's name and waits to be killed.
#[test]
#[ignore = "a child process of the sweep test, not a test by itself"]
fn holds_a_lab_until_killed() {
    assert!(std::env::var_os(HOLDER).is_some(), "run by orphaned_labs_are_swept_by_the_next_one only");
    let lab = NetLab::new(1);
    let mut child = lab.command(0, "sleep").arg("600").spawn().expect("sleep in the lab");
    // The test harness may have written the test's name on this line already.
    println!("\nholding: {} {}", lab.hosts[0].namespace, child.id());
    // Killed long before the sleep ends.
    let _ = child.wait();
}

/// A test process killed with SIGKILL never drops its lab: the next lab deletes the orphan's
/// namespace and kills what ran in it. (Remove `sweep_orphans()` from `NetLab::new` and the
/// namespace is still there: this fails.)
#[test]
fn orphaned_labs_are_swept_by_the_next_one() {
    use std::io::BufRead;
    let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "holds_a_lab_until_killed", "--nocapture", "--test-threads=1"])
        .env(HOLDER, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the holder starts");
    let stdout = std::io::BufReader::new(holder.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.split_once("holding: ").map(|(_, held)| held.to_string()))
        .expect("the holder names its namespace");
    let (namespace, sleeper) = line.split_once(' ').unwrap();
    holder.kill().unwrap(); // SIGKILL: no Drop runs
    holder.wait().unwrap();
    let namespaces = || {
        let out = std::process::Command::new("/usr/sbin/ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(namespaces().contains(namespace), "the killed holder left {namespace} behind");
    let sleeper: u32 = sleeper.parse().unwrap();
    assert!(netns::alive(sleeper), "and its process running");

    let _next = NetLab::new(1);
    assert!(!namespaces().contains(namespace), "{namespace} swept");
    assert!(!netns::alive(sleeper), "its process killed");
}
