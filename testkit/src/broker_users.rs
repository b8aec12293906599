//! The RabbitMQ users of a deployment, made by the deployment's own script: for tests that
//! run a process as its role's user and check what that user may and may not do.
//!
//! `deploy/rabbitmq/setup.sh` applies `deploy/rabbitmq/permissions` (what compose's
//! rabbitmq-setup service runs) to the test's prefix on the shared broker, with user names
//! and passwords of the test's own; the users are deleted when the handle drops, also when the
//! test panics. `rabbitmqctl` talks to the local node (the tests run as root, as the CLI
//! tools need).

use lapin::{Connection, ConnectionProperties};

use crate::prometheus::repo_root;

/// The roles of `deploy/rabbitmq/permissions`, in its order.
pub const ROLES: [&str; 3] = ["ingest", "worker", "operator"];

/// One user per role; deleted when dropped.
pub struct RoleUsers {
    names: [String; 3],
    passwords: [String; 3],
}

impl RoleUsers {
    /// Runs deploy/rabbitmq/setup.sh for `prefix` with unique user names and passwords.
    pub async fn create(prefix: &str) -> Self {
        let names = ROLES.map(|role| crate::unique(&format!("webhooks-{role}")));
        let passwords = ROLES.map(|_| uuid::Uuid::new_v4().simple().to_string());
        // Made before the script runs, so a failure halfway still deletes what it created.
        let users = Self { names, passwords };
        let mut command = tokio::process::Command::new("bash");
        command
            .arg(repo_root().join("deploy/rabbitmq/setup.sh"))
            .env("AMQP_PREFIX", prefix)
            .env_remove("RABBITMQ_NODE");
        for (i, role) in ROLES.iter().enumerate() {
            let upper = role.to_uppercase();
            command.env(format!("RABBITMQ_{upper}_USER"), &users.names[i]);
            command.env(format!("RABBITMQ_{upper}_PASSWORD"), &users.passwords[i]);
        }
        let output = command.output().await.expect("bash runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "deploy/rabbitmq/setup.sh failed:\n{text}");
        users
    }

    fn index(role: &str) -> usize {
        ROLES.iter().position(|r| *r == role).unwrap_or_else(|| panic!("no role {role}"))
    }

    /// The password of `role`'s user (to check that no log line shows it).
    pub fn password(&self, role: &str) -> &str {
        &self.passwords[Self::index(role)]
    }

    /// `AMQP_URL` of the test broker with `role`'s user and password.
    pub fn url(&self, role: &str) -> String {
        let i = Self::index(role);
        let mut url = reqwest::Url::parse(&crate::amqp_url()).expect("TEST_AMQP_URL is a URL");
        url.set_username(&self.names[i]).expect("user");
        url.set_password(Some(&self.passwords[i])).expect("password");
        url.to_string()
    }

    /// A connection as `role`'s user.
    pub async fn connect(&self, role: &str) -> Connection {
        Connection::connect(&self.url(role), ConnectionProperties::default()).await.expect("the role's user logs in")
    }
}

impl Drop for RoleUsers {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["--quiet", "delete_user", name])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
