//! Every kind of value a setting has, from the environment's strings and from a TOML file's
//! typed values, through each binary that reads it: parts are read one by one so that
//! `config` converts text to numbers and booleans and names the key of a bad value (see the
//! module documentation of `settings` for what `#[serde(flatten)]` would do instead).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::super::*;

/// One value of every kind, as the environment gives it: text.
const EVERY_KIND: &[(&str, &str)] = &[
    // Integers of each width and sign the settings use.
    ("MAX_BODY_BYTES", "2048"),
    ("DELIVERY_LIMIT", "7"),
    ("OUTBOX_BATCH_SIZE", "50"),
    ("OUTBOX_MAX_ATTEMPTS", "3"),
    ("DATABASE_POOL_SIZE", "4"),
    ("WORKER_PREFETCH", "12"),
    // Booleans, plain and optional.
    ("TOSS_ALLOW_UNVERIFIED", "true"),
    ("TOSS_FETCH_BACK", "false"),
    // Durations, with a unit and as bare seconds; a list of durations.
    ("STRIPE_TOLERANCE", "2m"),
    ("PUBLISH_TIMEOUT", "3"),
    ("RETRY_DELAYS", "100ms, 2s"),
    // A list of networks, an address, a path, an enum.
    ("TOSS_ALLOWED_IPS", "10.0.0.0/8,192.0.2.7"),
    ("INGEST_ADDR", "127.0.0.1:4000"),
    ("DATABASE_CA_FILE", "/etc/ca.pem"),
    ("LOG_FORMAT", "json"),
    // Text that looks like a number stays text.
    ("AMQP_PREFIX", "123"),
    ("STRIPE_WEBHOOK_SECRET", "4567"),
];

#[test]
fn every_kind_of_value_is_read_from_environment_strings_by_each_binary() {
    let ingest = IngestSettings::from_vars(EVERY_KIND.iter().copied()).unwrap();
    assert_eq!(ingest.ingest.max_body_bytes, 2048);
    assert_eq!(ingest.common.delivery_limit, 7);
    assert_eq!(ingest.ingest.stripe_tolerance, Duration::from_secs(120));
    assert_eq!(ingest.service.publish_timeout, Duration::from_secs(3));
    assert_eq!(ingest.common.retry_delays, [Duration::from_millis(100), Duration::from_secs(2)]);
    assert_eq!(ingest.ingest.toss_allowed_ips.len(), 2);
    assert_eq!(ingest.ingest.ingest_addr, "127.0.0.1:4000".parse::<SocketAddr>().unwrap());
    assert_eq!(ingest.service.log_format, LogFormat::Json);
    assert_eq!(ingest.common.amqp_prefix, "123");
    assert_eq!(ingest.secrets.stripe_secrets().unwrap()[0].expose_secret(), "4567");

    let worker = WorkerSettings::from_vars(EVERY_KIND.iter().copied()).unwrap();
    assert_eq!(worker.common.delivery_limit, 7);
    assert_eq!(worker.worker.outbox_batch_size, 50);
    assert_eq!(worker.worker.outbox_max_attempts, 3);
    assert_eq!(worker.database.database_pool_size, 4);
    assert_eq!(worker.worker.worker_prefetch, Some(12));
    assert!(worker.worker.toss_allow_unverified);
    assert_eq!(worker.toss_api.toss_fetch_back, Some(false));
    assert_eq!(worker.service.publish_timeout, Duration::from_secs(3));
    assert_eq!(worker.database.database_ca_file, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(worker.service.log_format, LogFormat::Json);
    assert_eq!(worker.common.amqp_prefix, "123");

    let hookctl = HookctlSettings::from_vars(EVERY_KIND.iter().copied()).unwrap();
    assert_eq!(hookctl.common.retry_delays, worker.common.retry_delays);
    assert_eq!(hookctl.database.database_pool_size, 4);
    assert_eq!(hookctl.toss_api.toss_fetch_back, Some(false));
    assert_eq!(hookctl.common.amqp_prefix, "123");
}

/// `config` accepts the spellings it always accepted for a boolean, in any case.
#[test]
fn booleans_take_configs_spellings() {
    for (text, value) in [("true", true), ("TRUE", true), ("on", true), ("1", true), ("no", false), ("0", false)] {
        let worker = WorkerSettings::from_vars([("TOSS_ALLOW_UNVERIFIED", text)]).unwrap();
        assert_eq!(worker.worker.toss_allow_unverified, value, "{text}");
    }
    let err = WorkerSettings::from_vars([("TOSS_ALLOW_UNVERIFIED", "maybe")]).unwrap_err().to_string();
    assert!(err.contains("TOSS_ALLOW_UNVERIFIED"), "{err}");
}

/// Reading each part straight from `config` is what keeps the variable in these messages:
/// through `#[serde(flatten)]` they say only "invalid type".
#[test]
fn a_malformed_value_of_every_kind_names_its_variable() {
    for (name, value) in [
        ("MAX_BODY_BYTES", "big"),
        ("MAX_BODY_BYTES", "-1"),
        ("DELIVERY_LIMIT", "many"),
        ("STRIPE_TOLERANCE", "soon"),
        ("RETRY_DELAYS", "1s,later"),
        ("TOSS_ALLOWED_IPS", "somewhere"),
        ("INGEST_ADDR", "nowhere"),
        ("LOG_FORMAT", "xml"),
    ] {
        let err = IngestSettings::from_vars([(name, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "ingest: {name}={value} gave {err}");
    }
    for (name, value) in [
        ("WORKER_PREFETCH", "70000"),
        ("OUTBOX_BATCH_SIZE", "some"),
        ("OUTBOX_MAX_ATTEMPTS", "1.5"),
        ("TOSS_FETCH_BACK", "perhaps"),
        ("DATABASE_POOL_SIZE", "plenty"),
        ("WORKER_BATCH_LINGER", "a while"),
    ] {
        let err = WorkerSettings::from_vars([(name, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "worker: {name}={value} gave {err}");
    }
}

/// A TOML file gives typed values (integers, booleans) and text; both are read, and the
/// environment still wins over the file.
#[test]
fn a_toml_file_is_read_by_each_binary_with_its_typed_values() {
    let path =
        std::env::temp_dir().join(format!("settings-{}-{:?}.toml", std::process::id(), std::thread::current().id()));
    std::fs::write(
        &path,
        r#"
            amqp_prefix = "from-file"
            delivery_limit = 9
            max_body_bytes = 4096
            worker_prefetch = 30
            toss_allow_unverified = true
            toss_fetch_back = false
            stripe_tolerance = 60
            retry_delays = "5s,1m"
            ingest_addr = "127.0.0.1:0"
            log_format = "json"
            worker_concurrency = 3
        "#,
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let env = |vars: &[(&str, &str)]| Some(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let ingest = IngestSettings::read(&mut Parts::from_sources(Some(file), env(&[])).unwrap()).unwrap();
    let worker =
        WorkerSettings::read(&mut Parts::from_sources(Some(file), env(&[("WORKER_CONCURRENCY", "5")])).unwrap())
            .unwrap();
    let hookctl = HookctlSettings::read(&mut Parts::from_sources(Some(file), env(&[])).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();

    assert_eq!(ingest.common.amqp_prefix, "from-file");
    assert_eq!(ingest.common.delivery_limit, 9);
    assert_eq!(ingest.ingest.max_body_bytes, 4096);
    assert_eq!(ingest.ingest.stripe_tolerance, Duration::from_secs(60), "an integer duration is seconds");
    assert_eq!(ingest.common.retry_delays, [Duration::from_secs(5), Duration::from_secs(60)]);
    assert_eq!(ingest.ingest.ingest_addr.port(), 0);
    assert_eq!(ingest.service.log_format, LogFormat::Json);
    assert_eq!(worker.worker.worker_prefetch, Some(30));
    assert!(worker.worker.toss_allow_unverified);
    assert_eq!(worker.toss_api.toss_fetch_back, Some(false));
    assert_eq!(worker.worker.worker_concurrency, 5, "the environment wins over the file");
    assert_eq!(hookctl.common.amqp_prefix, "from-file");
    assert_eq!(hookctl.common.delivery_limit, 9);
}
