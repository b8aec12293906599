//! Server-side sessions. The cookie holds only a random token; who is logged in, since when,
//! and the form token (CSRF) live here, in memory: a restart logs everyone out, which is fine
//! for a handful of people on call, and nothing about a session can be forged or read from
//! the cookie.
//!
//! A visitor who is not logged in gets an anonymous session too (at the login page), so the
//! login form carries a form token like every other form. Logging in replaces that session
//! with a new one (a token planted before the login is worth nothing after it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use subtle::ConstantTimeEq;

use super::users::Role;

/// The session cookie's name. The `__Host-` prefix (which needs `Secure`) is used when the
/// cookie is secure: the browser then refuses it from a subdomain or with a `Domain`.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-console_session"
    } else {
        "console_session"
    }
}

/// Most sessions held at once; past it the oldest anonymous ones go first. Anyone can open an
/// anonymous session by loading the login page, so memory must be bounded.
const MAX_SESSIONS: usize = 10_000;
/// An anonymous session (a login form) lasts this long.
const ANONYMOUS_TTL: Duration = Duration::from_secs(15 * 60);

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
    /// Logged in through the SSO proxy's header rather than a password.
    pub via_proxy: bool,
}

/// One session as the handlers see it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie value.
    pub token: String,
    /// `None` before login.
    pub identity: Option<Identity>,
    /// The synchronizer token every form of this session carries.
    pub csrf: String,
}

impl Session {
    /// Whether `submitted` is this session's form token (constant time).
    pub fn csrf_matches(&self, submitted: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(submitted.as_bytes()))
    }
}

struct Entry {
    session: Session,
    created: Instant,
    last_seen: Instant,
}

/// Every live session, by token.
pub struct SessionStore {
    entries: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
    idle: Duration,
}

impl SessionStore {
    /// Sessions end `ttl` after they start, or after `idle` without a request.
    pub fn new(ttl: Duration, idle: Duration) -> Self {
        Self { entries: Mutex::new(HashMap::new()), ttl, idle }
    }

    /// A new session (anonymous when `identity` is `None`).
    pub fn create(&self, identity: Option<Identity>) -> Session {
        let session = Session { token: random_token(), identity, csrf: random_token() };
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("session store");
        if entries.len() >= MAX_SESSIONS {
            self.evict(&mut entries, now);
        }
        entries.insert(session.token.clone(), Entry { session: session.clone(), created: now, last_seen: now });
        session
    }

    /// The live session of `token`, refreshed; an expired one is removed and `None`.
    pub fn get(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("session store");
        let entry = entries.get_mut(token)?;
        if self.expired(entry, now) {
            entries.remove(token);
            return None;
        }
        entry.last_seen = now;
        Some(entry.session.clone())
    }

    /// Ends a session.
    pub fn remove(&self, token: &str) {
        self.entries.lock().expect("session store").remove(token);
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        let (ttl, idle) = match entry.session.identity {
            Some(_) => (self.ttl, self.idle),
            None => (ANONYMOUS_TTL, ANONYMOUS_TTL),
        };
        now.duration_since(entry.created) >= ttl || now.duration_since(entry.last_seen) >= idle
    }

    /// Drops expired sessions; if still full, the anonymous ones seen longest ago.
    fn evict(&self, entries: &mut HashMap<String, Entry>, now: Instant) {
        entries.retain(|_, e| !self.expired(e, now));
        if entries.len() < MAX_SESSIONS {
            return;
        }
        let mut anonymous: Vec<(Instant, String)> = entries
            .iter()
            .filter(|(_, e)| e.session.identity.is_none())
            .map(|(k, e)| (e.last_seen, k.clone()))
            .collect();
        anonymous.sort();
        for (_, token) in anonymous.into_iter().take(MAX_SESSIONS / 10) {
            entries.remove(&token);
        }
    }

    /// Live sessions (for tests and the audit of a logout).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("session store").len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 256 random bits from the operating system, base64url without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> Option<Identity> {
        Some(Identity { user: "ann".into(), role: Role::Operator, via_proxy: false })
    }

    #[test]
    fn a_session_lives_until_its_idle_time_or_its_lifetime_runs_out() {
        let store = SessionStore::new(Duration::from_millis(200), Duration::from_millis(80));
        let session = store.create(ann());
        assert!(store.get(&session.token).is_some());
        std::thread::sleep(Duration::from_millis(100));
        assert!(store.get(&session.token).is_none(), "idle too long");

        let session = store.create(ann());
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(50));
            let _ = store.get(&session.token);
        }
        assert!(store.get(&session.token).is_none(), "kept busy, yet past its lifetime");
    }

    #[test]
    fn tokens_are_unguessable_and_the_form_token_is_compared_whole() {
        let store = SessionStore::new(Duration::from_secs(60), Duration::from_secs(60));
        let session = store.create(None);
        assert_eq!(session.token.len(), 43);
        assert_ne!(session.token, session.csrf);
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(&session.csrf[..20]));
        assert!(!session.csrf_matches(""));
    }

    #[test]
    fn the_store_stays_bounded_under_a_flood_of_anonymous_sessions() {
        let store = SessionStore::new(Duration::from_secs(60), Duration::from_secs(60));
        let kept = store.create(ann());
        for _ in 0..(MAX_SESSIONS + 50) {
            store.create(None);
        }
        assert!(store.len() <= MAX_SESSIONS);
        assert!(store.get(&kept.token).is_some(), "a logged-in session is never evicted for anonymous ones");
    }
}
