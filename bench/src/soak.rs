//! `bench soak`: the whole pipeline as separate processes (one ingest, several workers) under a
//! steady signed load for a long time, with a worker killed (SIGKILL) every few minutes and
//! started again. At the end: the resident memory of every process at its start and end, the
//! lag (ingest receipt to worker commit) per minute, and the invariant: every event ingest
//! accepted is applied exactly once, with one notification, nothing dead.
//!
//! The processes are the release binaries next to this one (`cargo build --release --bin
//! ingest --bin worker` first), each in a database and AMQP prefix of the run's own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::process::{free_port, spawn_logged};

/// What `bench soak` is asked to do.
pub struct SoakOptions {
    pub duration: Duration,
    pub rate: u32,
    pub workers: usize,
    pub kill_every: Duration,
    pub bin_dir: Option<PathBuf>,
}

/// One OS process of the pipeline, with its memory at start and at end.
struct Proc {
    name: String,
    child: Child,
    started: Instant,
    rss_start_kb: Option<u64>,
}

/// One line of the memory report.
struct RssLine {
    name: String,
    lived: Duration,
    start_kb: Option<u64>,
    end_kb: Option<u64>,
    ended_by: &'static str,
}

/// One event in this many is sent twice, as providers do.
const DUPLICATE_EVERY: u64 = 50;

/// How long after its start a process's memory counts as its "start" figure: after its pools,
/// channels and caches exist, before the load has had time to grow anything.
const WARM_UP: Duration = Duration::from_secs(10);

pub async fn run(options: SoakOptions) -> anyhow::Result<()> {
    let bin_dir = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("bench has a directory")?.to_path_buf(),
    };
    for bin in ["ingest", "worker"] {
        if !bin_dir.join(bin).exists() {
            bail!(
                "{} not found: build it first (cargo build --release --bin ingest --bin worker)",
                bin_dir.join(bin).display()
            );
        }
    }
    let db = testkit::TestDb::create().await;
    let broker = testkit::TestBroker::new().await;
    let settings: shared::WorkerSettings = broker.settings(Some(&db.url), &[]);
    worker::store::migrate::migrate(&settings.database).await?;
    let sql = db.client().await;
    // A payment for every event the run can send (the app inserts these at checkout).
    let capacity = (options.duration.as_secs() + 60) * u64::from(options.rate);
    sql.batch_execute(&format!(
        "WITH b AS (INSERT INTO bookings (trainer_id) SELECT gen_random_uuid() FROM generate_series(1, {capacity}) RETURNING id)
         INSERT INTO payments (order_id, booking_id, provider, amount, currency)
         SELECT 'soak-' || row_number() OVER (), id, 'stripe', 3000, 'usd' FROM b"
    ))
    .await?;

    let logs = std::env::temp_dir().join(testkit::unique("soak"));
    std::fs::create_dir_all(&logs)?;
    println!(
        "soak: {} at {} events/s, {} workers, one killed every {}; logs in {}",
        humantime(options.duration),
        options.rate,
        options.workers,
        humantime(options.kill_every),
        logs.display()
    );

    let ingest_port = free_port()?;
    let env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("AMQP_URL".into(), testkit::amqp_url()),
        ("AMQP_PREFIX".into(), broker.prefix.clone()),
        ("STRIPE_WEBHOOK_SECRET".into(), testkit::events::STRIPE_SECRET.into()),
        ("INGEST_ADDR".into(), format!("127.0.0.1:{ingest_port}")),
        ("INGEST_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ("WORKER_ADDR".into(), "127.0.0.1:0".into()),
        // Warnings only, and lapin's as in production: lapin warns about every returned
        // (unroutable) message with its whole body, and nobody subscribes to notifications here.
        ("RUST_LOG".into(), "warn,lapin=error".into()),
    ];
    let mut report = Vec::new();
    let mut ingest = spawn(&bin_dir.join("ingest"), "ingest", &env, &logs)?;
    let base = format!("http://127.0.0.1:{ingest_port}");
    let client = reqwest::Client::new();
    testkit::eventually("ingest ready", Duration::from_secs(30), || async {
        client.get(format!("{base}/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let mut workers = Vec::new();
    for n in 0..options.workers {
        workers.push(spawn(&bin_dir.join("worker"), &format!("worker-{n}.0"), &env, &logs)?);
    }

    // The load: one signed event every 1/rate s, some sent twice (providers send duplicates).
    // A refused event (503) is sent again a second later, as a provider would.
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let load = {
        let (accepted, refused, client) = (accepted.clone(), refused.clone(), client.clone());
        let url = format!("{base}{}", ingest::STRIPE_ROUTE);
        let (duration, rate) = (options.duration, options.rate);
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            let mut senders = Vec::new();
            let mut i = 0u64;
            while started.elapsed() < duration {
                pace.tick().await;
                i += 1;
                let copies = if i % DUPLICATE_EVERY == 0 { 2 } else { 1 };
                for _ in 0..copies {
                    let (client, url, accepted, refused) =
                        (client.clone(), url.clone(), accepted.clone(), refused.clone());
                    senders.push(tokio::spawn(async move {
                        let key = format!("evt_soak_{i}");
                        let body = shared::samples::stripe_session_event(
                            &key,
                            "checkout.session.completed",
                            &format!("soak-{i}"),
                            "paid",
                            3000,
                            "usd",
                        );
                        for _ in 0..30 {
                            let signature = testkit::events::stripe_signature(&body, testkit::events::STRIPE_SECRET);
                            let sent =
                                client.post(&url).header("stripe-signature", signature).body(body.clone()).send().await;
                            if sent.is_ok_and(|r| r.status().is_success()) {
                                accepted.lock().await.insert(key);
                                return;
                            }
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }));
                }
                senders.retain(|s| !s.is_finished());
            }
            for s in senders {
                let _ = s.await;
            }
            i
        })
    };

    // The chaos: every `kill_every`, the next worker in turn is killed and a new one started.
    let mut kills = Vec::new();
    let mut generation = vec![0usize; options.workers];
    let mut next_kill = options.kill_every;
    let mut victim = 0;
    // Ingest lives through the whole run: its memory each minute tells growth from a plateau.
    let mut ingest_rss_per_minute = Vec::new();
    while started.elapsed() < options.duration {
        sample_start_rss(&mut ingest);
        workers.iter_mut().for_each(sample_start_rss);
        if started.elapsed() >= Duration::from_secs(60 * (ingest_rss_per_minute.len() as u64 + 1)) {
            ingest_rss_per_minute.push(rss_kb(&ingest));
        }
        if started.elapsed() >= next_kill {
            let mut killed = std::mem::replace(&mut workers[victim], {
                generation[victim] += 1;
                spawn(&bin_dir.join("worker"), &format!("worker-{victim}.{}", generation[victim]), &env, &logs)?
            });
            let end_kb = rss_kb(&killed);
            killed.child.start_kill()?;
            let _ = killed.child.wait().await;
            kills.push(started.elapsed());
            println!(
                "{:>7.1} s: SIGKILL {} (after {:.0} s)",
                started.elapsed().as_secs_f64(),
                killed.name,
                killed.started.elapsed().as_secs_f64()
            );
            report.push(line(&killed, end_kb, "SIGKILL"));
            victim = (victim + 1) % options.workers;
            next_kill += options.kill_every;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sent = load.await?;
    let accepted = accepted.lock().await.clone();
    println!(
        "load done: {sent} events sent (and {} of them twice), {} accepted, {} answers other than 200 (sent again)",
        sent / DUPLICATE_EVERY,
        accepted.len(),
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );

    // Let the workers finish, then check.
    let keys: Vec<String> = accepted.iter().cloned().collect();
    let drained = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let row = sql
                .query_one(
                    "SELECT (SELECT count(*) FROM webhook_events WHERE status = 'applied'),
                            (SELECT count(*) FROM outbox)",
                    &[],
                )
                .await;
            if let Ok(row) = row {
                if row.get::<_, i64>(0) >= keys.len() as i64 && row.get::<_, i64>(1) == 0 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .is_ok();

    for w in workers.iter_mut().chain(std::iter::once(&mut ingest)) {
        let end_kb = rss_kb(w);
        report.push(line(w, end_kb, "end of run"));
        let _ = w.child.start_kill();
        let _ = w.child.wait().await;
    }

    println!("\nresident memory (VmRSS) of each process, {} s after its start and at its end:", WARM_UP.as_secs());
    for r in &report {
        println!(
            "  {:<12} {:>7.0} s  start {:>8}  end {:>8}  ({})",
            r.name,
            r.lived.as_secs_f64(),
            kb(r.start_kb),
            kb(r.end_kb),
            r.ended_by
        );
    }

    println!(
        "  ingest at the end of each minute: {}",
        ingest_rss_per_minute.iter().map(|sample| kb(*sample)).collect::<Vec<_>>().join(", ")
    );

    println!(
        "\nlag from ingest receipt to worker commit, per minute of the run (kills at {}):",
        kills.iter().map(|k| format!("{:.0} s", k.as_secs_f64())).collect::<Vec<_>>().join(", ")
    );
    let rows = sql
        .query(
            "SELECT floor(extract(epoch FROM received_at - min(received_at) OVER ()) / 60)::int AS minute,
                    extract(epoch FROM processed_at - received_at)::float8 AS lag
               FROM webhook_events WHERE status = 'applied'",
            &[],
        )
        .await?;
    let mut per_minute: std::collections::BTreeMap<i32, Vec<f64>> = Default::default();
    for row in rows {
        per_minute.entry(row.get(0)).or_default().push(row.get::<_, f64>(1));
    }
    for (minute, mut lags) in per_minute {
        lags.sort_by(f64::total_cmp);
        let at = |q: f64| lags[((lags.len() as f64 * q).ceil() as usize).clamp(1, lags.len()) - 1] * 1000.0;
        println!(
            "  minute {minute:>3}: {:>6} events  p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
            lags.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }

    // The invariant. `accepted` is the set of event keys ingest answered 200 for.
    let of_accepted = |query: &'static str| {
        let (sql, keys) = (&sql, &keys);
        async move { sql.query_one(query, &[keys]).await.map(|r| r.get::<_, i64>(0)) }
    };
    let overall = |query: &'static str| {
        let sql = &sql;
        async move { sql.query_one(query, &[]).await.map(|r| r.get::<_, i64>(0)) }
    };
    let n = keys.len() as i64;
    let checks = [
        (
            "accepted events applied",
            of_accepted("SELECT count(*) FROM webhook_events WHERE status = 'applied' AND event_key = ANY($1)").await?,
            n,
        ),
        (
            "their payments paid",
            of_accepted(
                "SELECT count(*) FROM payments WHERE payment_status = 'paid' AND 'evt_' || replace(order_id, '-', '_') = ANY($1)",
            )
            .await?,
            n,
        ),
        (
            "their notifications",
            of_accepted(
                "SELECT count(*) FROM notifications n JOIN payments p ON p.id = n.payment_id
                  WHERE 'evt_' || replace(p.order_id, '-', '_') = ANY($1)",
            )
            .await?,
            n,
        ),
        (
            "payments notified more than once",
            overall("SELECT count(*) FROM (SELECT 1 FROM notifications GROUP BY payment_id HAVING count(*) > 1) d").await?,
            0,
        ),
        ("events dead", overall("SELECT count(*) FROM webhook_events WHERE status = 'dead'").await?, 0),
        ("outbox rows left", overall("SELECT count(*) FROM outbox").await?, 0),
    ];
    let dead_letters = broker.count(&format!("{}.dead", broker.prefix)).await;
    let recognised = overall("SELECT COALESCE(sum(duplicates), 0)::bigint FROM webhook_events").await?;
    println!(
        "\nduplicates recognised by the inbox: {recognised} ({} copies sent; the rest are deliveries a killed worker \
         had committed but not acknowledged)",
        sent / DUPLICATE_EVERY
    );
    println!("invariant ({} accepted events):", n);
    let mut ok = drained && dead_letters == 0;
    for (what, got, want) in checks {
        ok &= got == want;
        println!("  {} {what}: {got} (expected {want})", if got == want { "ok  " } else { "FAIL" });
    }
    println!(
        "  {} messages in the dead-letter queue: {dead_letters} (expected 0)",
        if dead_letters == 0 { "ok  " } else { "FAIL" }
    );
    if !drained {
        println!("  FAIL the workers did not apply every accepted event within 300 s of the end of the load");
    }
    if !ok {
        bail!("soak invariant violated; logs in {}", logs.display());
    }
    println!("soak passed");
    Ok(())
}

fn spawn(program: &Path, name: &str, env: &[(String, String)], logs: &Path) -> anyhow::Result<Proc> {
    let mut command = Command::new(program);
    command.envs(env.iter().cloned());
    let child = spawn_logged(command, &logs.join(format!("{name}.log")))?;
    Ok(Proc { name: name.to_string(), child, started: Instant::now(), rss_start_kb: None })
}

fn sample_start_rss(p: &mut Proc) {
    if p.rss_start_kb.is_none() && p.started.elapsed() >= WARM_UP {
        p.rss_start_kb = rss_kb(p);
    }
}

fn line(p: &Proc, end_kb: Option<u64>, ended_by: &'static str) -> RssLine {
    RssLine { name: p.name.clone(), lived: p.started.elapsed(), start_kb: p.rss_start_kb, end_kb, ended_by }
}

/// `VmRSS` of a running process, in KiB.
fn rss_kb(p: &Proc) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id()?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn kb(value: Option<u64>) -> String {
    value.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0))
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s % 60 == 0 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}
