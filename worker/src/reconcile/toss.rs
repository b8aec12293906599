//! Toss catch-up: Toss has no events list, so payments still waiting for an outcome are looked
//! up by order id, at most `RECONCILE_TOSS_RATE` a second. A payment whose API status is an
//! outcome other than its own is published as an unsigned Toss payment event whose body (so
//! whose key) is made of the payment's `paymentKey`, `status` and `lastTransactionKey` only:
//! the same change found twice is one inbox key. The worker's fetch-back then verifies it
//! against the API (`fetched`); a late webhook for the same change finds the payment already
//! moved and changes nothing.

use std::time::Duration;

use serde_json::{json, Value};
use shared::envelope::IngestVerification;
use shared::providers::toss::parse_toss_event;
use shared::Provider;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Found, Outgoing, Reconciler, Report, RunError, RunOptions};
use crate::domain::event::toss_status;
use crate::store::reconcile::Lease;

/// Payments looked up in one run, at most; the oldest first, the rest in the next run.
const MAX_LOOKUPS_PER_RUN: i64 = 10_000;

/// The event reconciliation publishes for a Toss payment the API shows changed: its type, its
/// body and its key (`None`: the payment is not a change of `current` worth publishing).
pub fn toss_change(current: &str, payment: &Value) -> Option<(String, Vec<u8>, String)> {
    let status = payment.get("status")?.as_str()?;
    let target = toss_status(status).ok()??;
    if target.as_str() == current {
        return None;
    }
    let body = json!({
        "eventType": "PAYMENT_STATUS_CHANGED",
        "data": {
            "orderId": payment.get("orderId"),
            "paymentKey": payment.get("paymentKey"),
            "status": status,
            "lastTransactionKey": payment.get("lastTransactionKey"),
        }
    })
    .to_string()
    .into_bytes();
    let event = parse_toss_event(&body).ok()?;
    Some((event.event_type.clone(), body.clone(), event.event_key()))
}

impl Reconciler {
    /// One Toss run; with `lease`, renewing it after each lookup.
    pub(super) async fn reconcile_toss(
        &self,
        options: RunOptions,
        lease: Option<&Lease>,
        shutdown: &CancellationToken,
    ) -> Result<Report, RunError> {
        let api = self.toss.as_ref().ok_or(RunError::NotConfigured("TOSS_SECRET_KEY"))?;
        let mut report = Report::new(Provider::Toss);
        let stuck = self
            .store
            .stuck_toss_payments(
                self.settings.reconcile_after,
                self.settings.reconcile_horizon,
                options.since,
                MAX_LOOKUPS_PER_RUN,
            )
            .await?;
        let mut pace = tokio::time::interval(Duration::from_secs(1) / self.settings.reconcile_toss_rate);
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let request_id = format!("reconcile-{}", uuid::Uuid::new_v4().simple());
        for payment in &stuck {
            tokio::select! {
                _ = shutdown.cancelled() => return Err(RunError::Stopped),
                _ = pace.tick() => {}
            }
            let order_id = payment.order_id.as_str();
            let looked_up = self.call(Provider::Toss, shutdown, move || api.lookup_order(order_id)).await?;
            report.examined += 1;
            if let Some(lease) = lease {
                if !self.store.advance_watermark(lease, None).await? {
                    return Err(RunError::LeaseLost);
                }
            }
            // Unknown to Toss (404): nothing to say about it.
            let Some(api_payment) = looked_up else { continue };
            let Some((event_type, body, key)) = toss_change(&payment.payment_status, &api_payment) else { continue };
            self.metrics.missed.with_label_values(&[Provider::Toss.as_str()]).inc();
            let status = api_payment.get("status").and_then(Value::as_str).unwrap_or_default();
            report.found.push(Found {
                event_key: key.clone(),
                event_type: event_type.clone(),
                detail: format!("order {order_id}: {} -> {status}", payment.payment_status),
            });
            if !options.dry_run {
                let event = Outgoing {
                    provider: Provider::Toss,
                    event_type: &event_type,
                    event_key: &key,
                    verification: IngestVerification::Unsigned,
                    body: &body,
                    mac: None,
                };
                self.publish_with_retries(event, &request_id).await?;
                report.published += 1;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_keyed_by_the_payment_so_finding_it_twice_is_one_event() {
        let api = json!({"orderId": "o-1", "paymentKey": "pk-1", "status": "DONE", "lastTransactionKey": "tx-1",
            "totalAmount": 1000, "approvedAt": "2026-01-02T14:46:58+09:00", "secret": "ps_x"});
        let (event_type, body, key) = toss_change("pending", &api).unwrap();
        assert_eq!(event_type, "PAYMENT_STATUS_CHANGED");
        assert!(!String::from_utf8_lossy(&body).contains("ps_x"), "no secret in the body");
        let mut later = api.clone();
        later["approvedAt"] = json!("2026-01-02T15:00:00+09:00");
        assert_eq!(toss_change("pending", &later).unwrap().2, key, "the same change, the same key");
        let mut next = api.clone();
        next["lastTransactionKey"] = json!("tx-2");
        assert_ne!(toss_change("pending", &next).unwrap().2, key);
        assert!(toss_change("paid", &api).is_none(), "nothing changed");
        assert!(toss_change("pending", &json!({"orderId": "o-1", "status": "IN_PROGRESS"})).is_none());
        assert!(toss_change("pending", &json!({"orderId": "o-1"})).is_none());
        let waiting = json!({"orderId": "o-1", "paymentKey": "pk", "status": "WAITING_FOR_DEPOSIT"});
        assert!(toss_change("pending", &waiting).is_some());
        assert!(toss_change("waiting_for_deposit", &waiting).is_none());
    }
}
