//! Postgres over TLS against a server this test starts itself (`ssl = on`, a certificate for
//! `localhost` signed by a CA the test generates): `require` encrypts, `verify-full` connects
//! with the right CA through the pool, `worker migrate` and `hookctl`, and refuses a wrong CA
//! or a host the certificate does not name with a message that says so; `verify-ca` skips only
//! the host name; `sslmode=disable` still works against the shared server.

use std::path::Path;

use shared::settings::{DatabaseSettings, Settings, WorkerSettings};
use testkit::pg_server::{PgServer, ServerTls};
use testkit::TestDb;

/// A CA and a server certificate it signed for `localhost` (no IP address in it).
struct Certificates {
    ca_pem: String,
    server: ServerTls,
}

fn certificates(ca_name: &str) -> Certificates {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server_params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    Certificates {
        ca_pem: ca.pem(),
        server: ServerTls { certificate_pem: server.pem(), key_pem: server_key.serialize_pem() },
    }
}

/// Settings with `DATABASE_URL` = `url` and, when given, `DATABASE_CA_FILE`.
fn settings(url: &str, ca_file: Option<&Path>) -> DatabaseSettings {
    let ca = ca_file.map(|p| p.display().to_string()).unwrap_or_default();
    WorkerSettings::from_vars([("DATABASE_URL", url), ("DATABASE_CA_FILE", ca.as_str())])
        .expect("valid settings")
        .database
}

/// Whether the pool's connection is encrypted, or the pool's error message.
async fn pooled_connection_uses_tls(settings: &DatabaseSettings) -> Result<bool, String> {
    let pool = worker::store::db::pool(settings).map_err(|e| e.to_string())?;
    let client = pool.get().await.map_err(|e| worker::store::db::describe_pool_error(&e))?;
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn hookctl(url: &str, ca_file: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_e2e-hookctl"))
        .args(["events", "order-tls"])
        .env("DATABASE_URL", url)
        .env("DATABASE_CA_FILE", ca_file)
        .env_remove("WEBHOOKS_CONFIG")
        .output()
        .expect("hookctl runs")
}

#[tokio::test]
async fn tls_modes_against_a_server_with_a_certificate_of_our_own() {
    testkit::init_logs();
    let certs = certificates("webhooks test CA");
    // Two wrong CAs: an unrelated one, and an impostor with the right CA's name.
    let unrelated = certificates("some other CA");
    let impostor = certificates("webhooks test CA");
    let server = PgServer::start_with_tls(certs.server).await;
    let dir = tempfile::tempdir().unwrap();
    let right_ca = dir.path().join("ca.pem");
    let wrong_ca = dir.path().join("unrelated-ca.pem");
    let impostor_ca = dir.path().join("impostor-ca.pem");
    std::fs::write(&right_ca, &certs.ca_pem).unwrap();
    std::fs::write(&wrong_ca, &unrelated.ca_pem).unwrap();
    std::fs::write(&impostor_ca, &impostor.ca_pem).unwrap();

    // require: encrypted, certificate not checked (no CA given).
    let require = settings(&server.url_with("127.0.0.1", "postgres", "sslmode=require"), None);
    assert_eq!(pooled_connection_uses_tls(&require).await, Ok(true), "{}", server.logs());

    // disable against the same server: plaintext, so the check above means something.
    let disable = settings(&server.url_with("127.0.0.1", "postgres", "sslmode=disable"), None);
    assert_eq!(pooled_connection_uses_tls(&disable).await, Ok(false));

    // verify-full with the right CA: the migration (creating the database), the pool and hookctl.
    let full_url = server.url_with("localhost", "webhooks_tls", "sslmode=verify-full");
    let full = settings(&full_url, Some(&right_ca));
    worker::store::migrate::migrate(&full).await.expect("migrates over verify-full");
    assert_eq!(pooled_connection_uses_tls(&full).await, Ok(true));
    let out = hookctl(&full_url, &right_ca);
    assert!(out.status.success(), "hookctl over verify-full: {}", String::from_utf8_lossy(&out.stderr));

    // The libpq way of naming the CA works the same.
    let in_url = settings(
        &server.url_with(
            "localhost",
            "webhooks_tls",
            &format!("sslmode=verify-full&sslrootcert={}", right_ca.display()),
        ),
        None,
    );
    assert_eq!(pooled_connection_uses_tls(&in_url).await, Ok(true));

    // verify-full with a CA that did not sign the server's certificate: refused, and said so,
    // by the pool, the migration and hookctl.
    let wrong = settings(&full_url, Some(&wrong_ca));
    let error = pooled_connection_uses_tls(&wrong).await.unwrap_err();
    assert!(error.contains("not signed by a trusted CA") && error.contains("DATABASE_CA_FILE"), "{error}");
    let error = format!("{:#}", worker::store::migrate::migrate(&wrong).await.unwrap_err());
    assert!(error.contains("not signed by a trusted CA"), "{error}");
    let out = hookctl(&full_url, &wrong_ca);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not signed by a trusted CA"), "{stderr}");
    let error = pooled_connection_uses_tls(&settings(&full_url, Some(&impostor_ca))).await.unwrap_err();
    assert!(error.contains("not signed by a trusted CA"), "a CA with the right name but another key: {error}");

    // require with the wrong CA given: libpq checks the chain then too.
    let require_wrong = settings(&server.url_with("127.0.0.1", "postgres", "sslmode=require"), Some(&wrong_ca));
    assert!(pooled_connection_uses_tls(&require_wrong).await.is_err());

    // The certificate names localhost, not 127.0.0.1: verify-full refuses the address, naming
    // the mismatch; verify-ca checks only the chain and connects.
    let by_address = settings(&server.url_with("127.0.0.1", "postgres", "sslmode=verify-full"), Some(&right_ca));
    let error = pooled_connection_uses_tls(&by_address).await.unwrap_err();
    assert!(error.contains("does not match the host") && error.contains("verify-ca"), "{error}");
    let chain_only = settings(&server.url_with("127.0.0.1", "postgres", "sslmode=verify-ca"), Some(&right_ca));
    assert_eq!(pooled_connection_uses_tls(&chain_only).await, Ok(true));
    let chain_wrong = settings(&server.url_with("127.0.0.1", "postgres", "sslmode=verify-ca"), Some(&wrong_ca));
    assert!(pooled_connection_uses_tls(&chain_wrong).await.is_err(), "verify-ca still checks the chain");
}

#[tokio::test]
async fn sslmode_disable_still_works_against_the_shared_server() {
    let db = TestDb::create().await;
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let disable = settings(&format!("{}{separator}sslmode=disable", db.url), None);
    assert_eq!(pooled_connection_uses_tls(&disable).await, Ok(false));
    // And the default (prefer) connects whether or not the shared server offers TLS.
    assert!(pooled_connection_uses_tls(&settings(&db.url, None)).await.is_ok());
}
