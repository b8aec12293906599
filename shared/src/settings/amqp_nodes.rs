//! `AMQP_URL` may name several nodes of one cluster, comma-separated (the common client
//! convention); a single URL is the one-node case. Processes connect to the first node that
//! answers and, when it goes away, to the next one. Passwords never leave here in clear:
//! [`redacted_urls`] is what logs and errors show. Pure: the settings validate the list with it
//! and the broker connects through it.

use secrecy::{ExposeSecret, SecretString};

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
}
