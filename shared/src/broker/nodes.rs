//! `AMQP_URL` may name several nodes of one cluster, comma-separated (the common client
//! convention); a single URL is the one-node case. Processes connect to the first node that
//! answers and, when it goes away, to the next one. Passwords never leave here in clear:
//! [`redacted_urls`] is what logs and errors show.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

/// A TCP connect to an unreachable host can hang for minutes without this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The node URLs in `AMQP_URL`, in order (empty entries skipped). A comma inside a password
/// must be percent-encoded (`%2C`), as any reserved character in a URL.
pub fn node_urls(amqp_url: &SecretString) -> Vec<SecretString> {
    amqp_url
        .expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| SecretString::from(s.to_string()))
        .collect()
}

/// One URL with its password replaced, safe for log lines.
pub fn redacted_node(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}

/// Every URL of a list with its password replaced, comma-separated like the setting.
pub fn redacted_urls(amqp_url: &SecretString) -> String {
    node_urls(amqp_url).iter().map(|u| redacted_node(u.expose_secret())).collect::<Vec<_>>().join(",")
}

/// Why no node of the list could be reached. Shows addresses without passwords.
#[derive(Debug, thiserror::Error)]
#[error("no broker node answered ({nodes}): {last_error}")]
pub struct ConnectError {
    nodes: String,
    last_error: String,
}

/// Connects to the first node of `amqp_url` that answers, trying each in order (for one-shot
/// tools such as `hookctl`; long-running processes use [`super::Broker`], which also moves on
/// when a node goes away).
pub async fn connect_first(amqp_url: &SecretString, name: &str) -> Result<Connection, ConnectError> {
    let mut last_error = "AMQP_URL names no node".to_string();
    for url in node_urls(amqp_url) {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url.expose_secret(), properties)).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => last_error = format!("{}: {error}", redacted_node(url.expose_secret())),
            Err(_) => {
                last_error = format!("{}: no answer within {CONNECT_TIMEOUT:?}", redacted_node(url.expose_secret()))
            }
        }
    }
    Err(ConnectError { nodes: redacted_urls(amqp_url), last_error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_and_every_password_redacted() {
        let list = SecretString::from(" amqp://u:p1@a:5672/%2f , ,amqps://u:p2@b:5671/v?heartbeat=10,amqp://c");
        let urls: Vec<String> = node_urls(&list).iter().map(|u| u.expose_secret().to_string()).collect();
        assert_eq!(urls, ["amqp://u:p1@a:5672/%2f", "amqps://u:p2@b:5671/v?heartbeat=10", "amqp://c"]);
        let shown = redacted_urls(&list);
        assert!(!shown.contains("p1") && !shown.contains("p2"), "{shown}");
        assert_eq!(shown, "amqp://u:***@a:5672/%2f,amqps://u:***@b:5671/v?heartbeat=10,amqp://c");
    }

    #[test]
    fn a_single_url_is_a_list_of_one() {
        let one = SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(node_urls(&one).len(), 1);
        assert_eq!(redacted_urls(&one), "amqp://guest:***@127.0.0.1:5672/%2f");
    }

    #[tokio::test]
    async fn connect_errors_name_nodes_without_passwords() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let list = SecretString::from(format!(
            "amqp://u:hunter2@127.0.0.1:{closed}/%2f,amqp://u:hunter3@127.0.0.1:{closed}/%2f"
        ));
        let error = connect_first(&list, "test").await.unwrap_err().to_string();
        assert!(!error.contains("hunter"), "{error}");
        assert!(error.contains(&format!("127.0.0.1:{closed}")), "{error}");
    }
}
