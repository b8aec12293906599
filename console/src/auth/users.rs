//! Users from configuration and their password hashes (Argon2id, PHC strings). Hashing and
//! verifying take tens of milliseconds of CPU on purpose, so both run on the blocking pool,
//! never on the async runtime's threads.

use std::fmt;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use secrecy::{ExposeSecret, SecretString};

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads every page.
    Viewer,
    /// Also replays, purges and re-checks.
    Operator,
}

impl Role {
    /// `viewer` or `operator`, as configured and as the audit table records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    /// Parses a configured role (case-insensitive).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// A configured user. `Debug` does not show the hash.
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// The Argon2 PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    hash: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// Whether `name` is acceptable as a user name: what an SSO proxy or a person would use, and
/// nothing that could be mistaken for a separator or markup.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "._@-+".contains(c))
}

/// Parses `CONSOLE_USERS`: entries `name:role:hash` separated by `;` or new lines (a PHC
/// string has commas in it, so commas cannot separate entries).
pub fn parse_users(raw: &str) -> Result<Vec<User>, String> {
    let mut users: Vec<User> = Vec::new();
    for entry in raw.split([';', '\n']).map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("each entry is name:role:argon2-hash".into());
        };
        if !valid_name(name) {
            return Err(format!("user name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ @ - +"));
        }
        let role = Role::parse(role).ok_or_else(|| format!("user {name}: role must be viewer or operator"))?;
        let parsed = PasswordHash::new(hash).map_err(|_| {
            format!("user {name}: the hash is not a PHC string (make one with `console hash-password`)")
        })?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err(format!("user {name}: the hash must be Argon2 (`console hash-password`)"));
        }
        if users.iter().any(|u| u.name == name) {
            return Err(format!("user {name} is listed twice"));
        }
        users.push(User { name: name.to_string(), role, hash: hash.to_string() });
    }
    Ok(users)
}

/// Hashes a password with Argon2id and its default (OWASP-recommended) cost, on the blocking pool.
pub async fn hash_password(password: SecretString) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))
    })
    .await?
}

/// The configured users, and a stand-in hash so that an unknown name costs as much time as a
/// wrong password (no timing tells which names exist).
#[derive(Debug, Clone)]
pub struct Directory {
    users: Vec<User>,
    stand_in: String,
}

impl Directory {
    /// Builds the directory; the stand-in is hashed with the first user's parameters.
    pub fn new(users: Vec<User>) -> Self {
        let params = users
            .first()
            .and_then(|u| PasswordHash::new(&u.hash).ok())
            .and_then(|h| argon2::Params::try_from(&h).ok().map(|p| (p, h.algorithm.as_str().to_string())));
        let argon = match params {
            Some((params, _)) => Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params),
            None => Argon2::default(),
        };
        let salt = SaltString::generate(&mut OsRng);
        let stand_in = argon.hash_password(b"no such user", &salt).map(|h| h.to_string()).unwrap_or_default();
        Self { users, stand_in }
    }

    /// The user `name` if `password` is theirs; checked on the blocking pool.
    pub async fn verify(&self, name: &str, password: SecretString) -> Option<User> {
        let user = self.users.iter().find(|u| u.name == name).cloned();
        let hash = user.as_ref().map_or_else(|| self.stand_in.clone(), |u| u.hash.clone());
        let matches = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else { return false };
            Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok()
        })
        .await
        .unwrap_or(false);
        user.filter(|_| matches)
    }

    /// Whether any user may log in with a password.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap_hash(password: &str) -> String {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        argon.hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng)).unwrap().to_string()
    }

    #[tokio::test]
    async fn a_configured_user_logs_in_with_their_password_only() {
        let raw = format!("ann:operator:{};\nbob:viewer:{}", cheap_hash("pw-ann"), cheap_hash("pw-bob"));
        let directory = Directory::new(parse_users(&raw).unwrap());
        let ann = directory.verify("ann", SecretString::from("pw-ann")).await.expect("ann");
        assert_eq!(ann.role, Role::Operator);
        assert!(directory.verify("ann", SecretString::from("pw-bob")).await.is_none());
        assert!(directory.verify("carol", SecretString::from("pw-ann")).await.is_none());
        assert_eq!(directory.verify("bob", SecretString::from("pw-bob")).await.unwrap().role, Role::Viewer);
    }

    #[test]
    fn malformed_entries_are_refused_with_the_reason() {
        assert!(parse_users("ann:operator").unwrap_err().contains("name:role"));
        assert!(parse_users("ann:root:$argon2id$x").unwrap_err().contains("viewer or operator"));
        assert!(parse_users("ann:viewer:plaintext").unwrap_err().contains("PHC"));
        assert!(parse_users("a<b>:viewer:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA").is_err());
        let twice = format!("ann:viewer:{0};ann:operator:{0}", cheap_hash("x"));
        assert!(parse_users(&twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn debug_shows_no_hash() {
        let users = parse_users(&format!("ann:viewer:{}", cheap_hash("x"))).unwrap();
        let shown = format!("{users:?}");
        assert!(!shown.contains("argon2"), "{shown}");
    }
}
