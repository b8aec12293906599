//! Every non-200 answer of the webhook routes, with its status code and a short JSON body
//! `{"error": "<code>", "detail": "..."}`. Nothing secret is ever put in a body.

use http::StatusCode;
use serde_json::json;
use shared::http_server::{json_response, HttpResponse};

/// Why a webhook was not queued. 4xx: the request is at fault and a retry of the same request
/// will fail the same way. 5xx: the pipeline could not store it now; the provider should retry.
#[derive(Debug, thiserror::Error)]
pub enum RejectReason {
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    MalformedBody(String),
    #[error("payout and seller events must be signed, and no TOSS_WEBHOOK_SECRET is configured to verify them")]
    SignatureUnverifiable,
    #[error("source address is not allowed to post Toss webhooks")]
    ForbiddenSource,
    #[error("body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("body was not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("body could not be read")]
    BodyUnreadable,
    #[error("the message broker is unavailable; retry later")]
    BrokerUnavailable,
    #[error("too many requests in flight; retry later")]
    Saturated,
}

impl RejectReason {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadSignature(_) | Self::MalformedBody(_) | Self::SignatureUnverifiable | Self::BodyUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Self::ForbiddenSource => StatusCode::FORBIDDEN,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BrokerUnavailable | Self::Saturated => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadSignature(_) => "invalid_signature",
            Self::MalformedBody(_) => "malformed_body",
            Self::SignatureUnverifiable => "signature_unverifiable",
            Self::ForbiddenSource => "forbidden_source",
            Self::TooLarge(_) => "body_too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::BodyUnreadable => "body_unreadable",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::Saturated => "saturated",
        }
    }

    pub fn into_response(self) -> HttpResponse {
        let status = self.status();
        let mut response = json_response(status, &json!({"error": self.code(), "detail": self.to_string()}));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Stripe and Toss retry on their own schedules; this tells any other client when.
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
        }
        response
    }
}

/// `404` / `405` for anything that is not a route.
pub fn not_found() -> HttpResponse {
    json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found", "detail": "no such route"}))
}

pub fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method_not_allowed", "detail": format!("use {allow}")}),
    );
    response.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}
