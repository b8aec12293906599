//! A queue policy of the test's own on the shared broker, for faults a queue's arguments cannot
//! be changed to make after it is declared (a length limit that refuses every publish). Its
//! pattern is anchored to the test's prefix, so it matches no one else's queues, and it is
//! cleared when the handle drops, also when the test panics. `rabbitmqctl` talks to the local
//! node (the tests run as root, as the CLI tools need).

/// A policy on the queues of one prefix; cleared when dropped.
pub struct QueuePolicy {
    name: String,
}

impl QueuePolicy {
    /// Applies `definition` (policy JSON, e.g. `{"max-length":0}`) to the queues whose names
    /// start with `prefix` followed by `rest` (a regular expression, e.g. `\.work\.retry\.`).
    pub async fn set(prefix: &str, rest: &str, definition: &str) -> Self {
        assert!(
            prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "a test prefix needs no escaping: {prefix}"
        );
        let policy = Self { name: crate::unique("test-policy") };
        let pattern = format!("^{prefix}{rest}");
        // Above any policy the broker may carry, for these queues only.
        let args = ["--quiet", "set_policy", "--apply-to", "queues", "--priority", "1000"];
        let output = tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .args([policy.name.as_str(), &pattern, definition])
            .output()
            .await
            .expect("rabbitmqctl runs");
        assert!(output.status.success(), "set_policy failed: {}", String::from_utf8_lossy(&output.stderr));
        policy
    }

    /// Removes the policy now.
    pub fn clear(self) {
        drop(self);
    }
}

impl Drop for QueuePolicy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["--quiet", "clear_policy", &self.name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
