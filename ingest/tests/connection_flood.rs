//! Thousands of idle connections cannot grow ingest's memory or keep real events waiting:
//! connections are capped (`MAX_CONNECTIONS`, default 1024), one that sends nothing costs
//! almost nothing until it does, and at the cap the oldest silent one makes room. The header
//! timeout is raised so that it is the cap, not the timeout, that closes them.

mod common;

use std::time::{Duration, Instant};

use testkit::events::stripe_session_event;
use testkit::TestBroker;
use tokio::net::TcpStream;

const FLOOD: usize = 2000;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_flood_of_idle_connections_neither_grows_memory_nor_delays_real_events() {
    let broker = TestBroker::new().await;
    let (process, addr, metrics_addr) = common::spawn_ingest_process(&broker, &[("HEADER_READ_TIMEOUT", "30s")]).await;
    let pid = process.child.id().expect("running");
    // A fresh connection per request, like a provider's delivery.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let post = |i: usize| {
        let client = client.clone();
        async move {
            let body =
                stripe_session_event(&format!("evt_flood_{i}"), "checkout.session.completed", "o", "paid", 1, "usd");
            let started = Instant::now();
            let status = common::post_signed_stripe(&client, addr, body).await.map(|r| r.status().as_u16());
            (status, started.elapsed())
        }
    };
    // Warm up, so what follows measures the flood and not first-use allocations.
    for i in 0..100 {
        assert_eq!(post(i).await.0.unwrap(), 200);
    }
    let before = rss_kib(pid);

    let mut idle = Vec::with_capacity(FLOOD);
    let flood_started = Instant::now();
    for _ in 0..FLOOD {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let flood_took = flood_started.elapsed();
    let mut slowest = Duration::ZERO;
    for i in 100..150 {
        let (status, took) = post(i).await;
        assert_eq!(status.expect("answered"), 200, "a real event during the flood");
        slowest = slowest.max(took);
    }
    let during = rss_kib(pid);
    let metrics = testkit::metrics::scrape(&format!("http://{metrics_addr}/metrics")).await;
    let open = metrics.value("ingest_open_connections", &[]);

    // Silent connections past the cap were closed by ingest (they read end-of-file).
    let mut closed = 0;
    for stream in &idle {
        let mut buf = [0u8; 1];
        if matches!(stream.try_read(&mut buf), Ok(0)) {
            closed += 1;
        }
    }
    eprintln!(
        "flood of {FLOOD} connected in {flood_took:?}: RSS {before} KiB before, {during} KiB during; {open} connections open; {closed} closed by ingest; slowest real event {slowest:?}"
    );
    assert!(flood_took < Duration::from_secs(5), "connections were accepted without backlog overflow ({flood_took:?})");
    assert!(slowest < Duration::from_secs(1), "real events answered promptly during the flood (slowest {slowest:?})");
    assert!(open <= 1024.0, "no more connections than MAX_CONNECTIONS are open ({open})");
    assert!(closed >= FLOOD - 1024, "silent connections beyond the cap were closed ({closed})");
    assert!(during <= before + 4 * 1024, "RSS grew from {before} KiB to {during} KiB under the flood");
    drop(idle);
    broker.drain(&format!("{}.work", broker.prefix)).await;
}
