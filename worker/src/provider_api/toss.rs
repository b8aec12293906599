//! Fetch-back verification of Toss payment events. Toss does not sign payment events, so the
//! webhook is only a trigger: the payment is fetched from the Toss API and the **API's**
//! status, amount and keys are applied. Reconciliation looks stuck payments up with the same
//! client ([`TossApi::lookup_order`]).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use shared::providers::toss::{parse_toss_event, without_secrets};
use shared::settings::TossApiSettings;

use crate::domain::event::{toss_failure_reason, toss_status, Confirmed, EventData, IncomingEvent, Intent, PaymentRef};
use crate::domain::outcome::HandleError;
use crate::domain::state_machine::{decide, Transition};
use crate::provider_api::{read_limited, ApiError};

/// Largest Payment object accepted from a lookup; a payment with many partial cancels is a few
/// KiB.
pub const MAX_PAYMENT_BYTES: usize = 1024 * 1024;

/// A Toss API client with its own connection pool, deadlines and a cap on calls at once.
pub struct TossApi {
    client: reqwest::Client,
    /// One permit per call in flight (`TOSS_API_CONCURRENCY`), shared by everything that uses
    /// this client: every batch's fetch-back (the worker's one client), or reconciliation's
    /// lookups (its own, one at a time).
    calls: tokio::sync::Semaphore,
    /// `TOSS_API_TIMEOUT`: one call's deadline.
    timeout: Duration,
    base: reqwest::Url,
    /// `Basic base64("{secret key}:")`: the trailing colon is Toss's convention (empty password).
    authorization: SecretString,
}

impl std::fmt::Debug for TossApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TossApi").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl TossApi {
    /// `None` when fetch-back is off.
    pub fn from_settings(settings: &TossApiSettings) -> anyhow::Result<Option<Self>> {
        let Some(key) = settings.toss_secret_key_for_fetch()? else { return Ok(None) };
        let base = reqwest::Url::parse(&settings.toss_api_base)?;
        let client = reqwest::Client::builder()
            .connect_timeout(settings.toss_api_timeout.min(Duration::from_secs(5)))
            .timeout(settings.toss_api_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent("webhooks-worker")
            .build()?;
        let token = STANDARD.encode(format!("{}:", key.expose_secret()));
        Ok(Some(Self {
            client,
            calls: tokio::sync::Semaphore::new(settings.toss_api_concurrency),
            timeout: settings.toss_api_timeout,
            base,
            authorization: SecretString::from(format!("Basic {token}")),
        }))
    }

    /// Looks a payment up by its order id (reconciliation): the Payment object, or `None`
    /// when Toss does not know the order (404).
    pub async fn lookup_order(&self, order_id: &str) -> Result<Option<Value>, ApiError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| ApiError::Malformed("TOSS_API_BASE cannot carry a path".into()))?
            .pop_if_empty()
            .push("v1")
            .push("payments")
            .push("orders")
            .push(order_id);
        let _call = self.calls.acquire().await.expect("the semaphore is never closed");
        let response = self
            .client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.expose_secret())
            .send()
            .await
            .map_err(|e| ApiError::of_send(&e))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(ApiError::of_status(&response));
        }
        let body = read_limited(response, MAX_PAYMENT_BYTES).await?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(payment) if payment.is_object() => Ok(Some(payment)),
            _ => Err(ApiError::Malformed("a Toss payment lookup answered something that is not a Payment".into())),
        }
    }

    /// How long one batch's calls may take in all, waiting for a permit included: three
    /// calls' deadlines. A batch of many Toss events facing an API that hangs would otherwise
    /// wait for each in turn; the calls left when it passes are retried like any timeout.
    pub fn batch_budget(&self) -> Duration {
        self.timeout * 3
    }

    /// Fetches the payment behind `event` and returns the event as the API describes it.
    pub async fn confirm(&self, event: IncomingEvent) -> Result<(IncomingEvent, Confirmed), HandleError> {
        let Intent::SetStatus { payment, .. } = &event.intent else {
            return Ok((event, Confirmed::default()));
        };
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| HandleError::Permanent("TOSS_API_BASE cannot carry a path".into()))?;
            segments.pop_if_empty().push("v1").push("payments");
            match (&event.provider_payment_id, payment) {
                (Some(key), _) | (None, PaymentRef::ProviderPaymentId(key)) => segments.push(key),
                (None, PaymentRef::OrderId(order)) => segments.push("orders").push(order),
            };
        }
        let _call = self.calls.acquire().await.expect("the semaphore is never closed");
        let response = self
            .client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.expose_secret())
            .send()
            .await
            .map_err(|e| HandleError::Transient(format!("Toss API unreachable: {}", without_url(&e))))?;
        let status = response.status();
        match status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(HandleError::Permanent(format!("Toss API does not know this payment ({payment})")))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(HandleError::Transient(format!(
                    "Toss API refused the credentials ({status}); check TOSS_SECRET_KEY"
                )))
            }
            s => return Err(HandleError::Transient(format!("Toss API answered {s}"))),
        }
        let body = read_limited(response, MAX_PAYMENT_BYTES).await.map_err(|e| match e {
            // No Payment is that large: asking again gets the same answer.
            ApiError::TooLarge(_) => HandleError::Permanent(format!("Toss API response not read: {e}")),
            e => HandleError::Transient(format!("Toss API response not read: {e}")),
        })?;
        let fetched: Value = serde_json::from_slice(&body)
            .map_err(|_| HandleError::Transient("Toss API answered with something that is not JSON".into()))?;
        apply_fetched(event, &fetched)
    }
}

/// Replaces what the webhook claimed with what the API says. Pure, for tests.
pub fn apply_fetched(mut event: IncomingEvent, fetched: &Value) -> Result<(IncomingEvent, Confirmed), HandleError> {
    // The API's Payment has the same fields as a webhook's `data`, so the same parser reads it.
    let wrapped = serde_json::json!({"eventType": "PAYMENT_STATUS_CHANGED", "data": fetched});
    let api = parse_toss_event(wrapped.to_string().as_bytes())
        .map_err(|e| HandleError::Transient(format!("Toss API payment unreadable: {e}")))?;
    let api_order =
        api.order_id.clone().ok_or_else(|| HandleError::Transient("Toss API payment has no orderId".into()))?;
    if let Some(claimed) = event.order_id() {
        if claimed != api_order {
            return Err(HandleError::Permanent(format!(
                "order mismatch: webhook says {claimed}, Toss API says {api_order}"
            )));
        }
    }
    let status = api.status.clone().ok_or_else(|| HandleError::Transient("Toss API payment has no status".into()))?;
    let api_target = toss_status(&status).map_err(|e| HandleError::Permanent(e.0))?;
    let claimed = match &event.intent {
        Intent::SetStatus { target, .. } => Some(*target),
        Intent::Ignore(_) => None,
    };
    // The webhook describes a later state than the API shows: the API may not have caught up
    // yet, or the webhook is forged. The caller retries a few times before trusting the API.
    let api_behind = match (api_target, claimed) {
        (Some(api), Some(claimed)) => api != claimed && decide(api, claimed) == Transition::Apply,
        (None, Some(_)) => true,
        _ => false,
    };
    let behind = api_behind.then(|| {
        format!("Toss API reports {status} while the webhook says {}", event.provider_status.as_deref().unwrap_or("?"))
    });
    event.intent = match api_target {
        Some(target) => Intent::SetStatus { payment: PaymentRef::OrderId(api_order), target },
        None => Intent::Ignore(format!("Toss API reports status {status}, not an outcome")),
    };
    // Everything the payment and the notification will say comes from the API, the failure
    // text included: a forged ABORTED must not put its own words in a trainer's notification.
    event.provider_status = Some(status);
    event.amount = api.total_amount;
    event.currency = api.currency.clone();
    event.failure_reason = toss_failure_reason(&api.payment);
    event.provider_payment_id = api.payment_key.clone().or(event.provider_payment_id);
    event.data = EventData::Json(without_secrets(fetched));
    // The API's state is dated by the API's payment (its approval or latest cancel), not by
    // the webhook's unverified `createdAt`: a forged date far ahead would freeze the payment.
    event.provider_time = api.event_time();
    Ok((event, Confirmed { fetched: true, fetched_secret: api.secret, api_behind: behind, ..Confirmed::default() }))
}

/// reqwest errors print the URL; it carries no secret here, but keep log lines short.
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    kind.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;
    use shared::envelope::{EventEnvelope, IngestVerification};
    use shared::providers::toss::toss_time;
    use shared::status::PaymentStatus;
    use shared::Provider;

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            provider: Provider::Toss,
            event_type: "PAYMENT_STATUS_CHANGED".into(),
            event_key: "k".into(),
            verification: IngestVerification::Unsigned,
            received_at: Utc::now(),
            request_id: String::new(),
            attempt: 0,
            delivery_headers: Default::default(),
            body: Vec::new(),
        }
    }

    fn webhook(status: &str, amount: i64) -> IncomingEvent {
        let body = json!({"eventType": "PAYMENT_STATUS_CHANGED",
            "data": {"orderId": "o-1", "paymentKey": "pk", "status": status, "totalAmount": amount, "currency": "KRW"}});
        IncomingEvent::parse(&EventEnvelope { body: body.to_string().into_bytes(), ..envelope() }).unwrap()
    }

    fn api(order: &str, status: &str, amount: i64) -> Value {
        json!({"orderId": order, "paymentKey": "pk", "status": status, "totalAmount": amount, "currency": "KRW", "secret": "ps_api"})
    }

    #[test]
    fn the_apis_status_amount_and_secret_replace_the_webhooks() {
        let (event, confirmed) = apply_fetched(webhook("DONE", 100), &api("o-1", "WAITING_FOR_DEPOSIT", 5000)).unwrap();
        assert_eq!(
            event.intent,
            Intent::SetStatus { payment: PaymentRef::OrderId("o-1".into()), target: PaymentStatus::WaitingForDeposit }
        );
        assert_eq!(event.amount, Some(5000.into()));
        assert!(confirmed.fetched);
        assert_eq!(confirmed.fetched_secret.as_deref(), Some("ps_api"));
        assert!(!event.data.to_json().contains("\"secret\""), "the secret is not stored in metadata");
    }

    #[test]
    fn a_webhook_ahead_of_the_api_is_flagged() {
        let (_, behind) = apply_fetched(webhook("DONE", 1), &api("o-1", "WAITING_FOR_DEPOSIT", 1)).unwrap();
        assert!(behind.api_behind.is_some());
        let (_, behind) = apply_fetched(webhook("CANCELED", 1), &api("o-1", "DONE", 1)).unwrap();
        assert!(behind.api_behind.is_some());
        let (_, behind) = apply_fetched(webhook("DONE", 1), &api("o-1", "IN_PROGRESS", 1)).unwrap();
        assert!(behind.api_behind.is_some());
        let (_, same) = apply_fetched(webhook("DONE", 1), &api("o-1", "DONE", 1)).unwrap();
        assert!(same.api_behind.is_none());
        let (_, api_ahead) = apply_fetched(webhook("WAITING_FOR_DEPOSIT", 1), &api("o-1", "DONE", 1)).unwrap();
        assert!(api_ahead.api_behind.is_none(), "the API being ahead is simply applied");
    }

    #[test]
    fn the_apis_payment_dates_the_event_not_the_webhook() {
        let mut canceled = api("o-1", "CANCELED", 1);
        canceled["approvedAt"] = json!("2026-01-02T14:46:58+09:00");
        canceled["cancels"] = json!([{"canceledAt": "2026-01-03T09:00:00+09:00"}]);
        let mut far_ahead = webhook("DONE", 1);
        far_ahead.provider_time = toss_time("2099-01-01T00:00:00");
        let (event, _) = apply_fetched(far_ahead.clone(), &canceled).unwrap();
        assert_eq!(event.provider_time, toss_time("2026-01-03T09:00:00+09:00"));
        let (event, _) = apply_fetched(far_ahead, &api("o-1", "WAITING_FOR_DEPOSIT", 1)).unwrap();
        assert_eq!(event.provider_time, None, "a payment waiting for its deposit has no time of its own");
    }

    #[test]
    fn the_failure_text_is_the_apis_never_the_webhooks() {
        let body = json!({"eventType": "PAYMENT_STATUS_CHANGED",
            "data": {"orderId": "o-1", "status": "ABORTED", "failure": {"code": "X", "message": "Call 010-0000 now"}}});
        let forged =
            IncomingEvent::parse(&EventEnvelope { body: body.to_string().into_bytes(), ..envelope() }).unwrap();
        assert_eq!(forged.failure_reason.as_deref(), Some("Call 010-0000 now"));
        let mut from_api = api("o-1", "ABORTED", 1);
        from_api["failure"] = json!({"code": "REJECT_CARD_COMPANY", "message": "카드사 거절"});
        let (event, _) = apply_fetched(forged.clone(), &from_api).unwrap();
        assert_eq!(event.failure_reason.as_deref(), Some("카드사 거절"));
        let (event, _) = apply_fetched(forged, &api("o-1", "ABORTED", 1)).unwrap();
        assert_eq!(event.failure_reason, None, "the API gave no reason, so there is none");
    }

    #[test]
    fn another_order_is_a_permanent_mismatch() {
        let err = apply_fetched(webhook("DONE", 1), &api("o-2", "DONE", 1)).unwrap_err();
        assert!(err.is_permanent() && err.to_string().contains("order mismatch"), "{err}");
    }
}
