//! Telling a refused permission from a broker that is away.
//!
//! As deployed, each process connects as a RabbitMQ user of its role (ingest, worker,
//! operator) whose permissions allow its own job and nothing else
//! ([`PERMISSIONS_FILE`]). A missing permission is not a broker outage: retrying does not fix
//! it, and the operator has to grant it. Log lines say so, instead of "broker unreachable".

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// Where the permissions of each role are written, relative to the repository.
pub const PERMISSIONS_FILE: &str = "deploy/rabbitmq/permissions";

/// What the broker refused, if it refused anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user name or password of `AMQP_URL` is wrong (or the user does not exist).
    Login,
    /// The user may not use the virtual host of `AMQP_URL`.
    VirtualHost,
    /// The user lacks a configure, write or read permission on an exchange or queue.
    Permission,
}

impl Refusal {
    /// What the operator should do about it, for the log line.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::Login => "the broker refused the login: check the user and password in AMQP_URL",
            Self::VirtualHost => {
                "the AMQP user may not use the virtual host of AMQP_URL: grant it permissions there \
                 (deploy/rabbitmq/setup.sh does)"
            }
            Self::Permission => {
                "the AMQP user lacks a permission its role needs: grant what deploy/rabbitmq/permissions \
                 grants the role of this process (deploy/rabbitmq/setup.sh applies it)"
            }
        }
    }
}

/// Classifies `error`: `Some` when the broker refused this user something.
pub fn refusal(error: &lapin::Error) -> Option<Refusal> {
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else { return None };
    match amqp.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if is_login(amqp.get_message().as_str()) => {
            Some(Refusal::Login)
        }
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Some(Refusal::Permission),
        AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Some(Refusal::VirtualHost),
        _ => None,
    }
}

/// RabbitMQ answers a failed login with ACCESS_REFUSED too, saying "Login was refused".
fn is_login(message: &str) -> bool {
    message.contains("Login was refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_says_what_to_do() {
        assert!(Refusal::Login.remedy().contains("AMQP_URL"));
        assert!(Refusal::Permission.remedy().contains(PERMISSIONS_FILE));
        assert!(Refusal::VirtualHost.remedy().contains("virtual host"));
    }
}
