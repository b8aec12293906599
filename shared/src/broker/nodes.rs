//! Connecting to the first node of `AMQP_URL` that answers, for one-shot tools. The list
//! itself (splitting and redacting it) belongs to the settings ([`crate::settings::amqp_nodes`]).

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

use crate::settings::amqp_nodes::{node_urls, redacted_node, redacted_urls};

/// A TCP connect to an unreachable host can hang for minutes without this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
