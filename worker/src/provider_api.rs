//! The providers' own APIs, called with our keys: [`toss`] fetches a Toss payment back to
//! verify an unsigned event and looks stuck payments up for reconciliation; [`stripe`] lists
//! Stripe's events for reconciliation. Imports the [`crate::domain`] only.

pub mod stripe;
pub mod toss;

use std::time::Duration;

/// Longest `Retry-After` honoured: a longer one is cut to this (the run is retried anyway).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why a call to a provider's API gave nothing usable. [`ApiError::kind`] is the
/// `reconcile_errors_total` label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 401 or 403: the key is wrong, revoked or lacks the permission. Retrying cannot help.
    #[error("the API refused our key ({0})")]
    Auth(u16),
    /// 429, with the wait the API asked for.
    #[error("rate limited by the API (retry after {0:?})")]
    RateLimited(Option<Duration>),
    /// 5xx.
    #[error("the API answered {0}")]
    Server(u16),
    /// No answer in time.
    #[error("the API did not answer in time")]
    Timeout,
    /// No connection, or the answer was cut short.
    #[error("the API could not be reached ({0})")]
    Network(&'static str),
    /// An answer that is not what the API documents: an error, never "nothing more".
    #[error("malformed answer from the API: {0}")]
    Malformed(String),
    /// An answer larger than any the API gives.
    #[error("answer from the API larger than {0} bytes")]
    TooLarge(usize),
    /// Any other status.
    #[error("the API answered {0}")]
    Status(u16),
}

impl ApiError {
    /// The `kind` label of `reconcile_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth(_) => "auth",
            Self::RateLimited(_) => "rate_limited",
            Self::Server(_) => "server",
            Self::Timeout => "timeout",
            Self::Network(_) => "network",
            Self::Malformed(_) => "malformed",
            Self::TooLarge(_) => "too_large",
            Self::Status(_) => "status",
        }
    }

    /// Worth another try after a pause (a rate limit, a server error, a timeout).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::RateLimited(_) | Self::Server(_) | Self::Timeout | Self::Network(_))
    }

    fn of_send(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout
        } else if error.is_connect() {
            Self::Network("connection failed")
        } else {
            Self::Network("request failed")
        }
    }

    /// The error for a status that is not a success (404 is the caller's to read first).
    fn of_status(response: &reqwest::Response) -> Self {
        let status = response.status().as_u16();
        match status {
            401 | 403 => Self::Auth(status),
            429 => Self::RateLimited(retry_after(response.headers())),
            500..=599 => Self::Server(status),
            _ => Self::Status(status),
        }
    }
}

/// `Retry-After` in seconds (the providers send seconds), capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Reads a response body, refusing one larger than `limit` bytes as it arrives (a
/// `Content-Length` is not trusted to be there, nor to be true).
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ApiError> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ApiError::of_send(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
