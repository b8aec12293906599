//! Settings: the guide's names, defaults, redaction and error messages, part by part.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

mod kinds;

#[test]
fn defaults_work_on_a_developer_machine() {
    let ingest = IngestSettings::from_vars([]).unwrap();
    let worker = WorkerSettings::from_vars([]).unwrap();
    assert_eq!(ingest.common.amqp_prefix, "webhooks");
    assert_eq!(ingest.ingest.ingest_addr.port(), 3000);
    assert_eq!(
        ingest.ingest.ingest_metrics_addr,
        ([127, 0, 0, 1], 9091).into(),
        "metrics stay on loopback unless asked"
    );
    assert_eq!(worker.worker.worker_addr.port(), 9090);
    assert_eq!(ingest.ingest.stripe_tolerance, Duration::from_secs(300));
    assert_eq!(ingest.ingest.max_body_bytes, 1 << 20);
    assert_eq!(worker.common.retry_delays.len(), 5);
    assert_eq!(worker.worker.retry_max_attempts, 8);
    HookctlSettings::from_vars([]).unwrap();
}

#[test]
fn the_guides_flat_environment_names_are_read() {
    let vars = [
        ("DATABASE_URL", "postgres://u:p@db:5432/app"),
        ("AMQP_URL", "amqp://a:b@mq:5672/%2f"),
        ("AMQP_PREFIX", "shop"),
        ("INGEST_ADDR", "127.0.0.1:0"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_old, whsec_new"),
        ("TOSS_WEBHOOK_SECRET", "toss_key"),
        ("WORKER_ADDR", "127.0.0.1:0"),
        ("RETRY_DELAYS", "200ms,1s"),
        ("STRIPE_TOLERANCE", "60"),
    ];
    let ingest = IngestSettings::from_vars(vars).unwrap();
    assert_eq!(ingest.common.amqp_prefix, "shop");
    assert_eq!(ingest.ingest.ingest_addr.port(), 0);
    let secrets = ingest.secrets.stripe_secrets().unwrap();
    let exposed: Vec<&str> = secrets.iter().map(|s| s.expose_secret()).collect();
    assert_eq!(exposed, ["whsec_old", "whsec_new"]);
    assert_eq!(ingest.secrets.toss_webhook_secret.unwrap().expose_secret(), "toss_key");
    assert_eq!(ingest.common.retry_delays, [Duration::from_millis(200), Duration::from_secs(1)]);
    assert_eq!(ingest.ingest.stripe_tolerance, Duration::from_secs(60));
    let worker = WorkerSettings::from_vars(vars).unwrap();
    assert_eq!(worker.database.database_url.expose_secret(), "postgres://u:p@db:5432/app");
    assert_eq!(worker.worker.worker_addr.port(), 0);
    assert_eq!(worker.common.amqp_prefix, "shop");
    let hookctl = HookctlSettings::from_vars(vars).unwrap();
    assert_eq!(hookctl.database.database_url.expose_secret(), "postgres://u:p@db:5432/app");
    assert_eq!(hookctl.secrets.stripe_secrets().unwrap().len(), 2);
}

#[test]
fn debug_output_hides_every_secret() {
    let vars = [
        ("DATABASE_URL", "postgres://u:dbpass123@db/app"),
        ("AMQP_URL", "amqp://a:mqpass123@mq/%2f"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_stripe123"),
        ("TOSS_WEBHOOK_SECRET", "tosssecret123"),
        ("TOSS_SECRET_KEY", "test_sk_key123"),
        ("NOTIFY_WEBHOOK_URL", "https://hooks.example/p?token=tok123"),
        ("NOTIFY_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    ];
    let debug = [
        format!("{:?}", IngestSettings::from_vars(vars).unwrap()),
        format!("{:?}", WorkerSettings::from_vars(vars).unwrap()),
        format!("{:?}", HookctlSettings::from_vars(vars).unwrap()),
    ];
    for debug in debug {
        for secret in ["dbpass123", "mqpass123", "whsec_stripe123", "tosssecret123", "key123", "tok123", "MfKQ9r8"] {
            assert!(!debug.contains(secret), "{secret} leaked into Debug: {debug}");
        }
    }
}

#[test]
fn a_missing_stripe_secret_is_named() {
    let s = IngestSettings::from_vars([]).unwrap();
    let err = s.secrets.stripe_secrets().unwrap_err().to_string();
    assert!(err.contains("STRIPE_WEBHOOK_SECRET"), "{err}");
}

#[test]
fn malformed_values_name_their_variable() {
    for (name, value) in [
        ("INGEST_ADDR", "not-an-address"),
        ("RETRY_DELAYS", "1s,soon"),
        ("AMQP_PREFIX", "has space"),
        ("AMQP_URL", "http://wrong"),
        ("TOSS_ALLOWED_IPS", "10.0.0.0/8,example.com"),
        ("MAX_CONNECTIONS", "0"),
        ("PUBLISH_TIMEOUT", "soon"),
        ("STRIPE_WEBHOOK_SECRET", " , "),
    ] {
        let err = IngestSettings::from_vars([(name, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "ingest: {name}={value} gave {err}");
    }
    for (name, value) in [
        ("WORKER_PREFETCH", "lots"),
        ("WORKER_CONCURRENCY", "0"),
        ("RETRY_DELAYS", "1s,soon"),
        ("DELIVERY_LIMIT", "0"),
        ("DATABASE_URL", "mysql://db/app"),
        ("DATABASE_POOL_SIZE", "0"),
        ("TOSS_API_BASE", "not a url"),
        ("NOTIFY_CONCURRENCY", "0"),
        ("SHUTDOWN_TIMEOUT", "soon"),
    ] {
        let err = WorkerSettings::from_vars([(name, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "worker: {name}={value} gave {err}");
    }
    for (name, value) in [("AMQP_PREFIX", "has space"), ("DATABASE_URL", "mysql://db/app"), ("TOSS_API_BASE", "x")] {
        let err = HookctlSettings::from_vars([(name, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "hookctl: {name}={value} gave {err}");
    }
}

/// Each binary reads and checks only its own parts: a malformed value of another binary's
/// setting does not stop it.
#[test]
fn a_binary_ignores_the_settings_of_the_others() {
    let worker_only = [("WORKER_CONCURRENCY", "0"), ("DATABASE_URL", "mysql://db/app"), ("NOTIFY_CONCURRENCY", "x")];
    IngestSettings::from_vars(worker_only).expect("ingest reads no worker setting");
    let ingest_only = [("MAX_CONNECTIONS", "0"), ("TRUSTED_PROXY_HOPS", "1"), ("LOG_FORMAT", "xml")];
    WorkerSettings::from_vars(ingest_only[..2].iter().copied()).expect("the worker reads no ingest setting");
    HookctlSettings::from_vars(ingest_only).expect("hookctl reads no ingest or service setting");
    HookctlSettings::from_vars(worker_only[..1].iter().copied().chain([("NOTIFY_WEBHOOK_URL", "ftp://x")]))
        .expect("hookctl reads no worker-only setting");
}

#[test]
fn notification_delivery_needs_a_valid_signing_secret() {
    let err = WorkerSettings::from_vars([("NOTIFY_WEBHOOK_URL", "http://127.0.0.1:1/hook")]).unwrap_err().to_string();
    assert!(err.contains("NOTIFY_WEBHOOK_SECRET"), "{err}");
    let err = WorkerSettings::from_vars([
        ("NOTIFY_WEBHOOK_URL", "http://127.0.0.1:1/hook"),
        ("NOTIFY_WEBHOOK_SECRET", "not-base64!"),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("NOTIFY_WEBHOOK_SECRET"), "{err}");
}

/// Let every `http` URL through in `NotifySettings::validate` (turn the arm `"http" if
/// loopback || self.notify_allow_http` into `"http"`) to see it fail.
#[test]
fn notifications_go_over_https_except_to_this_machine_or_when_allowed() {
    let secret = ("NOTIFY_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let err = WorkerSettings::from_vars([("NOTIFY_WEBHOOK_URL", "http://hooks.example/notify"), secret])
        .unwrap_err()
        .to_string();
    assert!(err.contains("NOTIFY_WEBHOOK_URL") && err.contains("NOTIFY_ALLOW_HTTP"), "{err}");
    for url in [
        "https://hooks.example/notify",
        "http://127.0.0.1:9/n",
        "http://127.8.0.1/n",
        "http://[::1]:9/n",
        "http://localhost:9/n",
    ] {
        WorkerSettings::from_vars([("NOTIFY_WEBHOOK_URL", url), secret]).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    WorkerSettings::from_vars([
        ("NOTIFY_WEBHOOK_URL", "http://hooks.example/notify"),
        ("NOTIFY_ALLOW_HTTP", "true"),
        secret,
    ])
    .expect("http allowed explicitly");
    let err = WorkerSettings::from_vars([("NOTIFY_WEBHOOK_URL", "ftp://hooks.example/notify"), secret])
        .unwrap_err()
        .to_string();
    assert!(err.contains("NOTIFY_WEBHOOK_URL"), "{err}");
}

#[test]
fn an_empty_signing_key_is_refused() {
    let err = WorkerSettings::from_vars([
        ("NOTIFY_WEBHOOK_URL", "https://hooks.example/n"),
        ("NOTIFY_WEBHOOK_SECRET", "whsec_"),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("NOTIFY_WEBHOOK_SECRET"), "{err}");
}

#[test]
fn delivery_is_on_exactly_when_the_url_is_set() {
    assert!(!WorkerSettings::from_vars([]).unwrap().notify.delivery_on());
    assert!(!WorkerSettings::from_vars([("NOTIFY_WEBHOOK_URL", " ")]).unwrap().notify.delivery_on());
    let on = WorkerSettings::from_vars([
        ("NOTIFY_WEBHOOK_URL", "https://hooks.example/n"),
        ("NOTIFY_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    ])
    .unwrap();
    assert!(on.notify.delivery_on());
}

#[test]
fn empty_secrets_count_as_unset() {
    let s = WorkerSettings::from_vars([("TOSS_WEBHOOK_SECRET", ""), ("TOSS_SECRET_KEY", " ")]).unwrap();
    assert!(s.secrets.toss_webhook_secret.is_none());
    assert!(!s.toss_api.toss_fetch_back_enabled());
}

#[test]
fn toss_allow_list_understands_the_keyword_and_single_addresses() {
    let s = IngestSettings::from_vars([("TOSS_ALLOWED_IPS", "toss, 10.1.0.0/16, ::1")]).unwrap();
    assert_eq!(s.ingest.toss_allowed_ips.len(), 6);
    assert!(s.ingest.toss_allowed_ips[0].contains(&"13.124.18.147".parse::<std::net::IpAddr>().unwrap()));
}

#[test]
fn fetch_back_follows_the_secret_key_unless_set() {
    let on = WorkerSettings::from_vars([("TOSS_SECRET_KEY", "test_sk_x")]).unwrap();
    assert!(on.toss_api.toss_fetch_back_enabled());
    let off = HookctlSettings::from_vars([("TOSS_SECRET_KEY", "test_sk_x"), ("TOSS_FETCH_BACK", "false")]).unwrap();
    assert!(!off.toss_api.toss_fetch_back_enabled());
    let broken = WorkerSettings::from_vars([("TOSS_FETCH_BACK", "true")]).unwrap();
    let err = broken.toss_api.toss_secret_key_for_fetch().unwrap_err().to_string();
    assert!(err.contains("TOSS_SECRET_KEY"), "{err}");
}

#[test]
fn redacted_urls_keep_the_host_and_drop_the_password() {
    let url = SecretString::from("amqp://guest:hunter2@mq:5672/%2f");
    let shown = redacted_url(&url);
    assert!(shown.contains("mq:5672") && !shown.contains("hunter2"), "{shown}");
}

#[test]
fn amqp_url_may_list_several_nodes_and_errors_never_echo_them() {
    let list = "amqp://guest:hunter2@mq1:5672/%2f,amqp://guest:hunter3@mq2:5672/%2f";
    let s = HookctlSettings::from_vars([("AMQP_URL", list)]).unwrap();
    let shown = redacted_url(&s.common.amqp_url);
    assert_eq!(shown, "amqp://guest:***@mq1:5672/%2f,amqp://guest:***@mq2:5672/%2f");
    assert!(!format!("{s:?}").contains("hunter"));

    let err = IngestSettings::from_vars([("AMQP_URL", "amqp://guest:hunter2@mq1/%2f,http://guest:hunter3@mq2")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("AMQP_URL") && err.contains("entry 2"), "{err}");
    assert!(!err.contains("hunter"), "{err}");
    assert!(WorkerSettings::from_vars([("AMQP_URL", " , ")]).is_err());
}

#[test]
fn trusting_proxy_hops_needs_the_proxies_addresses() {
    let err = IngestSettings::from_vars([("TRUSTED_PROXY_HOPS", "1")]).unwrap_err().to_string();
    assert!(err.contains("TRUSTED_PROXIES"), "{err}");
    let s = IngestSettings::from_vars([("TRUSTED_PROXY_HOPS", "1"), ("TRUSTED_PROXIES", "10.0.0.0/8")]).unwrap();
    assert_eq!(s.ingest.trusted_proxies.len(), 1);
}

#[test]
fn env_names_are_the_fields_in_upper_case_and_each_one_is_read() {
    let names = env_names();
    for name in ["DATABASE_URL", "AMQP_PREFIX", "WORKER_ADDR", "INGEST_ADDR", "LOG_FORMAT", "NOTIFY_WEBHOOK_SECRET"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "each name once: {names:?}");
    // Each name really sets something: an invalid value for it is refused, naming it.
    for name in ["WORKER_PREFETCH", "RETRY_MAX_ATTEMPTS", "SHUTDOWN_TIMEOUT"] {
        let err = WorkerSettings::from_vars([(name, "not-a-number")]).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
}

/// Each binary's names are those of its parts, and every name is some binary's.
#[test]
fn each_binary_names_exactly_its_parts() {
    let ingest = IngestSettings::env_names();
    let worker = WorkerSettings::env_names();
    let hookctl = HookctlSettings::env_names();
    for name in ["AMQP_URL", "RETRY_DELAYS", "DELIVERY_LIMIT", "STRIPE_WEBHOOK_SECRET"] {
        for (binary, names) in [("ingest", &ingest), ("worker", &worker), ("hookctl", &hookctl)] {
            assert!(names.contains(&name.to_string()), "{binary} reads {name}");
        }
    }
    assert!(ingest.contains(&"MAX_BODY_BYTES".into()) && !worker.contains(&"MAX_BODY_BYTES".into()));
    assert!(worker.contains(&"DATABASE_URL".into()) && !ingest.contains(&"DATABASE_URL".into()));
    assert!(hookctl.contains(&"TOSS_SECRET_KEY".into()) && !hookctl.contains(&"LOG_FORMAT".into()));
    assert!(!hookctl.contains(&"NOTIFY_WEBHOOK_URL".into()), "only the worker knows whether delivery is on");
    let all = env_names();
    assert!(all.iter().all(|n| ingest.contains(n) || worker.contains(n) || hookctl.contains(n)));
    assert!([&ingest, &worker, &hookctl].iter().all(|names| names.iter().all(|n| all.contains(n))));
}

#[test]
fn event_retention_defaults_to_30_days_and_0_keeps_everything() {
    let retention =
        |vars: &[(&str, &str)]| WorkerSettings::from_vars(vars.iter().copied()).map(|s| s.worker.event_retention);
    assert_eq!(retention(&[]).unwrap(), Duration::from_secs(30 * 24 * 3600));
    assert!(retention(&[("EVENT_RETENTION", "0")]).unwrap().is_zero());
    assert_eq!(retention(&[("EVENT_RETENTION", "90d")]).unwrap(), Duration::from_secs(90 * 24 * 3600));
    assert_eq!(retention(&[("EVENT_RETENTION", "7d")]).unwrap(), MIN_EVENT_RETENTION);
}

#[test]
fn event_retention_shorter_than_the_providers_retries_is_refused() {
    for value in ["1h", "3d", "6d 23h", "soon"] {
        let err = WorkerSettings::from_vars([("EVENT_RETENTION", value)]).unwrap_err().to_string();
        assert!(err.contains("EVENT_RETENTION"), "{value} gave {err}");
    }
}

#[test]
fn the_idle_in_transaction_timeout_is_30s_and_at_least_1s() {
    let s = WorkerSettings::from_vars([]).unwrap();
    assert_eq!(s.database.database_idle_in_transaction_timeout, Duration::from_secs(30));
    let s = HookctlSettings::from_vars([("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "2m")]).unwrap();
    assert_eq!(s.database.database_idle_in_transaction_timeout, Duration::from_secs(120));
    for short in ["0", "500ms"] {
        let err = WorkerSettings::from_vars([("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", short)]).unwrap_err().to_string();
        assert!(err.contains("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT"), "{err}");
    }
}

#[test]
fn toss_gets_its_own_body_cap_and_signature_tolerance() {
    let s = IngestSettings::from_vars([]).unwrap();
    assert_eq!(s.ingest.toss_max_body_bytes, 64 * 1024);
    assert_eq!(s.ingest.toss_tolerance, Duration::from_secs(300));
    let s = IngestSettings::from_vars([("TOSS_MAX_BODY_BYTES", "8192"), ("TOSS_TOLERANCE", "2m")]).unwrap();
    assert_eq!((s.ingest.toss_max_body_bytes, s.ingest.toss_tolerance), (8192, Duration::from_secs(120)));
    for (name, value) in [("TOSS_MAX_BODY_BYTES", "0"), ("TOSS_MAX_BODY_BYTES", "big"), ("TOSS_TOLERANCE", "soon")] {
        let err = IngestSettings::from_vars([(name, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "{name}={value} gave {err}");
    }
}

#[test]
fn toss_api_calls_at_once_are_8_and_between_1_and_256() {
    assert_eq!(WorkerSettings::from_vars([]).unwrap().toss_api.toss_api_concurrency, 8);
    let s = HookctlSettings::from_vars([("TOSS_API_CONCURRENCY", "256")]).unwrap();
    assert_eq!(s.toss_api.toss_api_concurrency, 256);
    for value in ["0", "257", "many"] {
        let err = WorkerSettings::from_vars([("TOSS_API_CONCURRENCY", value)]).unwrap_err().to_string();
        assert!(err.contains("TOSS_API_CONCURRENCY"), "{value} gave {err}");
    }
}
