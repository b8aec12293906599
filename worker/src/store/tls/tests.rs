use super::*;

fn target(url: &str, ca_file: Option<&Path>) -> Result<DatabaseTarget, DatabaseTlsError> {
    DatabaseTarget::new(url, ca_file)
}

fn ca_file() -> tempfile::NamedTempFile {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), params.self_signed(&key).unwrap().pem()).unwrap();
    file
}

#[test]
fn tls_parameters_leave_the_url_and_everything_else_stays_as_written() {
    let (url, params) = take_tls_params(
        "postgres://u:p@db:5432/x?sslmode=verify-full&options=-c%20a%3Db&sslrootcert=%2Fetc%2Fca%20x.pem",
    );
    assert_eq!(url, "postgres://u:p@db:5432/x?options=-c%20a%3Db");
    assert_eq!(params.ssl_mode.as_deref(), Some("verify-full"));
    assert_eq!(params.root_cert.as_deref(), Some("/etc/ca x.pem"));
    let (url, params) = take_tls_params("postgres://db/x?sslmode=disable");
    assert_eq!(url, "postgres://db/x");
    assert_eq!(params.ssl_mode.as_deref(), Some("disable"));
}

#[test]
fn several_hosts_are_tried_in_order_and_only_a_server_that_takes_writes_is_kept() {
    use tokio_postgres::config::Host;
    let ca = ca_file();
    let url = format!(
        "postgres://u:p@db-a:5433,db-b:5434/webhooks?target_session_attrs=read-write&sslmode=verify-full&sslrootcert={}",
        ca.path().display()
    );
    let listed = target(&url, None).unwrap();
    let hosts: Vec<String> = listed
        .config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    assert_eq!(hosts, ["db-a", "db-b"]);
    assert_eq!(listed.config.get_ports(), [5433, 5434]);
    assert_eq!(listed.config.get_dbname(), Some("webhooks"));
    assert_eq!(listed.ssl_mode, SslMode::VerifyFull);
    assert_eq!(listed.config.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
    // Without the parameter, the same: every connection opened here writes.
    let plain = target("postgres://db-a,db-b/webhooks", None).unwrap();
    assert_eq!(plain.config.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
    let error = target("postgres://db-a,db-b/webhooks?target_session_attrs=read-only", None).unwrap_err();
    assert!(error.to_string().contains("target_session_attrs=read-only"), "{error}");
}

#[test]
fn prefer_is_the_default_like_libpq() {
    assert_eq!(target("postgres://db/x", None).unwrap().ssl_mode, SslMode::Prefer);
    assert_eq!(target("postgres://db/x?sslmode=require", None).unwrap().config.get_ssl_mode(), DriverSslMode::Require);
    assert_eq!(target("postgres://db/x?sslmode=disable", None).unwrap().config.get_ssl_mode(), DriverSslMode::Disable);
}

#[test]
fn verifying_modes_need_a_ca_and_say_where_to_put_it() {
    for mode in ["verify-ca", "verify-full"] {
        let error = target(&format!("postgres://db/x?sslmode={mode}"), None).unwrap_err().to_string();
        assert!(error.contains("DATABASE_CA_FILE") && error.contains("sslrootcert") && error.contains(mode), "{error}");
    }
    let ca = ca_file();
    for url in ["postgres://db/x?sslmode=verify-full", "postgres://db/x?sslmode=verify-ca"] {
        let target = target(url, Some(ca.path())).unwrap();
        assert_eq!(target.config.get_ssl_mode(), DriverSslMode::Require);
        assert_eq!(target.ca, Some(CaSource::File(ca.path().to_path_buf())));
    }
    let in_url = format!("postgres://db/x?sslmode=verify-full&sslrootcert={}", ca.path().display());
    assert_eq!(target(&in_url, None).unwrap().ca, Some(CaSource::File(ca.path().to_path_buf())));
    assert!(target(&in_url, Some(ca.path())).is_ok(), "the same file twice is no conflict");
    let error = target(&in_url, Some(Path::new("/elsewhere.pem"))).unwrap_err();
    assert!(matches!(error, DatabaseTlsError::ConflictingCa), "{error}");
}

#[test]
fn system_roots_only_with_verify_full() {
    let error = target("postgres://db/x?sslmode=require&sslrootcert=system", None).unwrap_err().to_string();
    assert!(error.contains("verify-full"), "{error}");
    match target("postgres://db/x?sslmode=verify-full&sslrootcert=system", None) {
        Ok(target) => assert_eq!(target.ca, Some(CaSource::System)),
        Err(DatabaseTlsError::NoSystemRoots) => {} // a machine without a trust store
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn bad_values_are_refused_with_the_setting_named_and_no_password_shown() {
    let error = target("postgres://u:hunter2@db/x?sslmode=allow", None).unwrap_err().to_string();
    assert!(error.contains("sslmode=allow") && error.contains("DATABASE_URL"), "{error}");
    assert!(!error.contains("hunter2"));
    let error = target("postgres://u:hunter2@db/x?sslmode=require&bogus=1", None).unwrap_err().to_string();
    assert!(error.contains("DATABASE_URL") && !error.contains("hunter2"), "{error}");
    let missing = Path::new("/nonexistent/ca.pem");
    let error = target("postgres://db/x?sslmode=verify-full", Some(missing)).unwrap_err().to_string();
    assert!(error.contains("/nonexistent/ca.pem") && error.contains("DATABASE_CA_FILE"), "{error}");
    let empty = tempfile::NamedTempFile::new().unwrap();
    let error = target("postgres://db/x?sslmode=verify-ca", Some(empty.path())).unwrap_err().to_string();
    assert!(error.contains("no PEM certificate"), "{error}");
}

#[test]
fn debug_output_hides_the_password() {
    let target = target("postgres://u:hunter2@db/x?sslmode=require", None).unwrap();
    let shown = format!("{target:?}");
    assert!(!shown.contains("hunter2") && shown.contains("Require"), "{shown}");
}
