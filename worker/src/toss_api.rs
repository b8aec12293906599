//! Fetch-back verification of Toss payment events. Toss does not sign payment events, so the
//! webhook is only a trigger: the payment is fetched from the Toss API and the **API's**
//! status, amount and keys are applied.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use shared::providers::toss::parse_toss_event;
use shared::Settings;

use crate::apply::Confirmed;
use crate::event::{toss_status, IncomingEvent, Intent, PaymentRef};
use crate::outcome::HandleError;

/// A Toss API client with its own connection pool and deadlines.
pub struct TossApi {
    client: reqwest::Client,
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
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let Some(key) = settings.toss_secret_key_for_fetch()? else { return Ok(None) };
        let base = reqwest::Url::parse(&settings.toss_api_base)?;
        let client = reqwest::Client::builder()
            .connect_timeout(settings.toss_api_timeout.min(Duration::from_secs(5)))
            .timeout(settings.toss_api_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent("webhooks-worker")
            .build()?;
        let token = STANDARD.encode(format!("{}:", key.expose_secret()));
        Ok(Some(Self { client, base, authorization: SecretString::from(format!("Basic {token}")) }))
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
        let body = response
            .bytes()
            .await
            .map_err(|e| HandleError::Transient(format!("Toss API response cut short: {}", without_url(&e))))?;
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
    event.intent = match toss_status(&status).map_err(|e| HandleError::Permanent(e.0))? {
        Some(target) => Intent::SetStatus { payment: PaymentRef::OrderId(api_order), target },
        None => Intent::Ignore(format!("Toss API reports status {status}, not an outcome")),
    };
    event.provider_status = Some(status);
    event.amount = api.total_amount;
    event.currency = api.currency.clone();
    event.provider_payment_id = api.payment_key.clone().or(event.provider_payment_id);
    event.data = crate::event::without_secrets(fetched);
    Ok((event, Confirmed { fetched: true, fetched_secret: api.secret }))
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
