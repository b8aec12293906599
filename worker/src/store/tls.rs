//! Postgres over TLS, as libpq's `sslmode` describes it. Every connection the worker, `worker
//! migrate` and `hookctl` open goes through [`DatabaseTarget`], so one `DATABASE_URL` means
//! the same everywhere.
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | checked against the CA when one is given, else not |
//! | `require` | always | checked against the CA when one is given (libpq does the same), else not |
//! | `verify-ca` | always | signed by the CA |
//! | `verify-full` | always | signed by the CA and issued for the host in the URL |
//!
//! The CA comes from `DATABASE_CA_FILE` or libpq's `sslrootcert=<file>` URL parameter (a PEM
//! file), or `sslrootcert=system` for the operating system's trusted roots, which, as in
//! libpq, needs `verify-full`: a public CA vouches for anybody's host, so only the host name
//! check makes it mean something. `verify-*` without any CA is refused at start.
//!
//! `DATABASE_URL` may list several hosts (`postgres://u@db1:5432,db2:5432/webhooks`), as libpq
//! does; each is tried in turn, and only a server that takes writes is kept
//! (`target_session_attrs=read-write`, whatever the URL says: every connection opened here
//! writes), so after a failover new connections find the new primary. With TLS, each host's
//! certificate is checked against that host's name.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use secrecy::ExposeSecret;
use shared::settings::DatabaseSettings;
use tokio_postgres::config::{SslMode as DriverSslMode, TargetSessionAttrs};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values this pipeline honours (`allow` is not among them: it prefers
/// plaintext, which nothing here wants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, DatabaseTlsError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(DatabaseTlsError::UnknownSslMode(other.to_string())),
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// A PEM file (`DATABASE_CA_FILE` or `sslrootcert=<file>`).
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

/// A TLS setting that cannot work. The messages name the setting; none contains the URL, which
/// may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseTlsError {
    #[error("setting DATABASE_URL is invalid: {0}")]
    InvalidUrl(String),
    #[error(
        "setting DATABASE_URL has target_session_attrs=read-only, but the worker, `worker migrate` and hookctl \
         write; leave it out (read-write is used) or set read-write"
    )]
    ReadOnlyTarget,
    #[error("setting DATABASE_URL is invalid: sslmode={0} is not supported (use disable, prefer, require, verify-ca or verify-full)")]
    UnknownSslMode(String),
    #[error(
        "setting DATABASE_URL has sslmode={0}, which checks the server's certificate against a CA: set \
         DATABASE_CA_FILE (or sslrootcert=<PEM file> in the URL), or sslrootcert=system for the system's trusted roots"
    )]
    MissingCa(&'static str),
    #[error("settings DATABASE_CA_FILE and sslrootcert in DATABASE_URL name different CA files; set only one")]
    ConflictingCa,
    #[error(
        "setting DATABASE_URL has sslrootcert=system with sslmode={0}: the system's roots vouch for any public \
         host, so they need sslmode=verify-full"
    )]
    SystemRootsNeedVerifyFull(&'static str),
    #[error("cannot read the Postgres CA file {path} (DATABASE_CA_FILE / sslrootcert): {why}")]
    UnreadableCa { path: PathBuf, why: String },
    #[error("the Postgres CA file {0} (DATABASE_CA_FILE / sslrootcert) holds no PEM certificate")]
    EmptyCa(PathBuf),
    #[error("no trusted root certificates found on this system (sslrootcert=system)")]
    NoSystemRoots,
    #[error("cannot set up TLS for Postgres: {0}")]
    Tls(String),
}

/// `DATABASE_URL` (and `DATABASE_CA_FILE`) turned into what tokio-postgres needs.
#[derive(Clone)]
pub struct DatabaseTarget {
    /// The connection settings, without the TLS parameters tokio-postgres does not know.
    pub config: tokio_postgres::Config,
    /// Negotiates TLS as `sslmode` says (tokio-postgres calls it only when TLS is used).
    pub tls: MakeRustlsConnect,
    pub ssl_mode: SslMode,
    pub ca: Option<CaSource>,
}

impl std::fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password; the connector has nothing to show.
        f.debug_struct("DatabaseTarget")
            .field("config", &self.config)
            .field("ssl_mode", &self.ssl_mode)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl DatabaseTarget {
    pub fn from_settings(settings: &DatabaseSettings) -> Result<Self, DatabaseTlsError> {
        Self::new(settings.database_url.expose_secret(), settings.database_ca_file.as_deref())
    }

    /// From a `postgres://` URL and an optional CA file (`DATABASE_CA_FILE`).
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, DatabaseTlsError> {
        let (url, params) = take_tls_params(url);
        let ssl_mode = params.ssl_mode.as_deref().map(SslMode::parse).transpose()?.unwrap_or(SslMode::Prefer);
        let from_url =
            params.root_cert.map(|v| if v == "system" { CaSource::System } else { CaSource::File(v.into()) });
        let ca = match (ca_file.map(|p| CaSource::File(p.to_path_buf())), from_url) {
            (Some(a), Some(b)) if a != b => return Err(DatabaseTlsError::ConflictingCa),
            (a, b) => a.or(b),
        };
        if ca == Some(CaSource::System) && ssl_mode != SslMode::VerifyFull {
            return Err(DatabaseTlsError::SystemRootsNeedVerifyFull(ssl_mode.as_str()));
        }
        let mut config =
            tokio_postgres::Config::from_str(&url).map_err(|e| DatabaseTlsError::InvalidUrl(e.to_string()))?;
        // A standby, or a primary fenced in a failover, accepts a connection and then refuses
        // every write: skip such servers when connecting (one `SHOW transaction_read_only`).
        if config.get_target_session_attrs() == TargetSessionAttrs::ReadOnly {
            return Err(DatabaseTlsError::ReadOnlyTarget);
        }
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        });
        let check = match (ssl_mode, &ca) {
            (SslMode::VerifyFull, Some(_)) => Check::ChainAndName,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(DatabaseTlsError::MissingCa(ssl_mode.as_str()));
            }
            (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => Check::Nothing,
            (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(_)) => Check::Chain,
        };
        let roots = match (&ca, ssl_mode) {
            (_, SslMode::Disable) | (None, _) => None,
            (Some(source), _) => Some(Arc::new(load_roots(source)?)),
        };
        let tls = MakeRustlsConnect::new(client_config(check, roots)?);
        Ok(Self { config, tls, ssl_mode, ca })
    }
}

/// What the server's certificate must satisfy.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Encryption only (`prefer`/`require` without a CA, as libpq).
    Nothing,
    /// Signed by a trusted CA (`verify-ca`, or a CA given with `prefer`/`require`).
    Chain,
    /// Signed by a trusted CA and issued for the host (`verify-full`).
    ChainAndName,
}

/// `sslmode` and `sslrootcert` as written in the URL.
#[derive(Default)]
struct TlsParams {
    ssl_mode: Option<String>,
    root_cert: Option<String>,
}

/// Removes `sslmode` and `sslrootcert` from the URL's query (tokio-postgres refuses the
/// `verify-*` modes and does not know `sslrootcert`); everything else stays byte for byte.
fn take_tls_params(url: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let Some((base, query)) = url.split_once('?') else { return (url.to_string(), params) };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
        match key {
            "sslmode" => params.ssl_mode = Some(value),
            "sslrootcert" => params.root_cert = Some(value),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (url, params)
}

fn load_roots(source: &CaSource) -> Result<RootCertStore, DatabaseTlsError> {
    let mut roots = RootCertStore::empty();
    match source {
        CaSource::File(path) => {
            let unreadable = |why: String| DatabaseTlsError::UnreadableCa { path: path.clone(), why };
            let pem = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
            let certificates = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unreadable(format!("not PEM ({e})")))?;
            if certificates.is_empty() {
                return Err(DatabaseTlsError::EmptyCa(path.clone()));
            }
            for certificate in certificates {
                roots.add(certificate).map_err(|e| unreadable(format!("not a CA certificate ({e})")))?;
            }
        }
        CaSource::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(DatabaseTlsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

fn client_config(check: Check, roots: Option<Arc<RootCertStore>>) -> Result<ClientConfig, DatabaseTlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DatabaseTlsError::Tls(e.to_string()))?;
    let config = match (check, roots) {
        (Check::ChainAndName, Some(roots)) => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| DatabaseTlsError::Tls(e.to_string()))?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
        (check, roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier {
                roots: roots.filter(|_| matches!(check, Check::Chain)),
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Checks the chain against `roots` without the host name (`verify-ca`), or nothing at all
/// when `roots` is `None` (`prefer`/`require` without a CA). Handshake signatures are always
/// verified, so the peer holds the key of the certificate it presented.
#[derive(Debug)]
struct ChainOnlyVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let certificate = ParsedCertificate::try_from(end_entity)?;
            let algorithms = self.provider.signature_verification_algorithms.all;
            verify_server_cert_signed_by_trust_anchor(&certificate, roots, intermediates, now, algorithms)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A failed connection in words an operator can act on: TLS certificate problems say what
/// was wrong and which setting decides it; everything else is tokio-postgres's own message.
pub fn describe_connect_error(error: &tokio_postgres::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        // io::Error hides the error it wraps from `source()`; look inside.
        let inner =
            current.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|e| e as &dyn std::error::Error);
        for candidate in [Some(current), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return describe_tls_error(tls);
            }
        }
        source = current.source();
    }
    error.to_string()
}

fn describe_tls_error(error: &rustls::Error) -> String {
    match error {
        // BadSignature: a CA of the same name, but not the one that signed the certificate.
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "TLS handshake failed: the Postgres server's certificate is not signed by a trusted CA \
             (DATABASE_CA_FILE / sslrootcert in DATABASE_URL; or the server presents another certificate)"
                .into()
        }
        rustls::Error::InvalidCertificate(
            e @ (CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
        ) => format!(
            "TLS handshake failed: the Postgres server's certificate does not match the host in DATABASE_URL \
             ({e}); connect by a name on the certificate, or use sslmode=verify-ca"
        ),
        rustls::Error::InvalidCertificate(e) => {
            format!("TLS handshake failed: the Postgres server's certificate is not acceptable: {e}")
        }
        other => format!("TLS handshake with Postgres failed: {other}"),
    }
}

#[cfg(test)]
mod tests;
