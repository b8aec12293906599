//! A queued message, checked again where it is used: the broker is not a trust boundary.
//!
//! Anyone who can publish to the events exchange can write any header, `x-verification:
//! signature` and `x-event-key` included. So the worker, and every replay of a dead letter,
//! believes only what the message's own bytes prove with the configured secrets:
//!
//! - a Stripe event must carry a `stripe-signature` that matches its body under one of the
//!   Stripe secrets. The time window is not applied again: the message may have waited in a
//!   queue for hours, and the window was enforced when ingest received it;
//! - a Stripe event that claims `x-verification: fetched` (found by reconciliation in Stripe's
//!   events list, which carries no signature) must carry an `x-fetched-mac` that holds under
//!   the key derived from `STRIPE_API_KEY` ([`crate::verify::fetched`]); without that key, or
//!   with a MAC that does not hold, it is unverifiable. No other message may claim `fetched`;
//! - a Toss event of a type Toss signs (`payout.changed`, `seller.changed`), or any Toss event
//!   that carries a signature, must match it under the Toss security key (again without a time
//!   window); Toss payment events are unsigned and are verified later, against the Toss API or
//!   the payment's deposit secret;
//! - the event key and type are computed from the body; a header that says otherwise, or a
//!   claim of a signature that does not hold, makes the message unverifiable. (A signed Stripe
//!   body from which no key can be read keeps the one it names: it fails as unparseable.)

use secrecy::SecretString;

use crate::envelope::{EventEnvelope, IngestVerification, H_FETCHED_MAC};
use crate::providers::stripe_head::parse_stripe_event_head;
use crate::providers::toss::parse_toss_event;
use crate::providers::Provider;
use crate::settings::{SettingsError, WebhookSecretSettings};
use crate::verify::fetched::FetchedMacKey;
use crate::verify::stripe::verify_stripe_signature_at_any_time;
use crate::verify::toss::{verify_toss_signature, Freshness};

/// The secrets a message can be checked with. `Debug` shows no secret.
#[derive(Clone, Debug)]
pub struct WebhookSecrets {
    /// Every configured Stripe endpoint secret (two while one is being rolled).
    pub stripe: Vec<SecretString>,
    /// The Toss security key, when configured.
    pub toss: Option<SecretString>,
    /// The key of `x-fetched-mac`, derived from `STRIPE_API_KEY` when it is configured.
    pub fetched: Option<FetchedMacKey>,
}

impl WebhookSecrets {
    /// `STRIPE_WEBHOOK_SECRET` is required: without it no Stripe event could ever be applied.
    /// Fetched events are refused until [`WebhookSecrets::with_stripe_api_key`] says otherwise.
    pub fn from_settings(settings: &WebhookSecretSettings) -> Result<Self, SettingsError> {
        Ok(Self { stripe: settings.stripe_secrets()?, toss: settings.toss_webhook_secret.clone(), fetched: None })
    }

    /// Believes Stripe events fetched with this API key (reconciliation).
    pub fn with_stripe_api_key(mut self, api_key: Option<&SecretString>) -> Self {
        self.fetched = api_key.map(FetchedMacKey::derive);
        self
    }
}

/// What a message proved about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The dedupe key, computed from the body (equal to the message's `x-event-key`).
    pub event_key: String,
    /// The event type, read from the body (equal to the message's `x-event-type`).
    pub event_type: String,
    /// A provider signature over the body matched a configured secret.
    pub signed: bool,
    /// Our reconciler fetched it from the provider's API (its `x-fetched-mac` held).
    pub fetched: bool,
}

/// Why a message cannot be believed. Dead-lettered with reason `unverifiable`, never applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unverifiable(pub String);

/// Checks `envelope` with `secrets`; see the module documentation.
pub fn check_message(envelope: &EventEnvelope, secrets: &WebhookSecrets) -> Result<Checked, Unverifiable> {
    let header = |name: &str| envelope.delivery_headers.get(name).map(String::as_str);
    let body = envelope.body.as_slice();
    let checked = match envelope.provider {
        Provider::Stripe if envelope.verification == IngestVerification::Fetched => {
            let key = secrets.fetched.as_ref().ok_or_else(|| {
                Unverifiable("claims to be fetched from Stripe but no STRIPE_API_KEY is configured to check it".into())
            })?;
            let mac = header(H_FETCHED_MAC).unwrap_or_default();
            if !key.verify(envelope.provider, &envelope.event_key, body, mac) {
                return Err(Unverifiable(
                    "claims to be fetched from Stripe but its x-fetched-mac does not hold".into(),
                ));
            }
            let head = parse_stripe_event_head(body)
                .map_err(|e| Unverifiable(format!("fetched body is not a Stripe event: {e}")))?;
            Checked {
                event_key: head.id.into_owned(),
                event_type: head.event_type.into_owned(),
                signed: false,
                fetched: true,
            }
        }
        Provider::Stripe => {
            verify_stripe_signature_at_any_time(body, header("stripe-signature"), &secrets.stripe)
                .map_err(|e| Unverifiable(format!("Stripe signature does not hold: {e}")))?;
            match parse_stripe_event_head(body) {
                Ok(head) => Checked {
                    event_key: head.id.into_owned(),
                    event_type: head.event_type.into_owned(),
                    signed: true,
                    fetched: false,
                },
                // Signed, so it comes from Stripe (or a holder of the secret), but no key can be
                // read from it (ingest never queues such a body): it fails as unparseable under
                // the key it names, which its signature at least vouches was sent with it.
                Err(_) => {
                    return Ok(Checked {
                        event_key: envelope.event_key.clone(),
                        event_type: envelope.event_type.clone(),
                        signed: true,
                        fetched: false,
                    })
                }
            }
        }
        Provider::Toss => {
            if envelope.verification == IngestVerification::Fetched {
                // Toss has no events list: what reconciliation finds there is queued unsigned
                // and fetched back like any Toss payment event.
                return Err(Unverifiable("a Toss event cannot claim to be fetched".into()));
            }
            let event = parse_toss_event(body).map_err(|e| Unverifiable(format!("body is not a Toss event: {e}")))?;
            let signature = header("tosspayments-webhook-signature");
            let signed = match (&secrets.toss, event.is_signed_type(), signature) {
                (None, true, _) => {
                    return Err(Unverifiable(format!(
                        "{} is signed by Toss but no TOSS_WEBHOOK_SECRET is configured to check it",
                        event.event_type
                    )))
                }
                (Some(secret), true, _) | (Some(secret), false, Some(_)) => {
                    let time = header("tosspayments-webhook-transmission-time");
                    verify_toss_signature(body, signature, time, secret, Freshness::Any)
                        .map_err(|e| Unverifiable(format!("Toss signature does not hold: {e}")))?;
                    true
                }
                // An unsigned payment event (a signature header without a key to check it is
                // ignored, as ingest ignores it): verified later, or recorded as unverified.
                _ => false,
            };
            Checked { event_key: event.event_key(), event_type: event.event_type, signed, fetched: false }
        }
    };
    if checked.event_key != envelope.event_key {
        return Err(Unverifiable(format!(
            "x-event-key {:?} is not the key of the body ({})",
            envelope.event_key, checked.event_key
        )));
    }
    if checked.event_type != envelope.event_type {
        return Err(Unverifiable(format!(
            "x-event-type {:?} is not the type of the body ({})",
            envelope.event_type, checked.event_type
        )));
    }
    if envelope.verification == IngestVerification::Signature && !checked.signed {
        return Err(Unverifiable("claims a verified signature but carries none that holds".into()));
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::verify::stripe::sign_stripe_payload;
    use crate::verify::toss::sign_toss_payload;

    const STRIPE: &str = "whsec_test_message";
    const TOSS: &str = "toss_security_key";

    const STRIPE_API_KEY: &str = "rk_test_reconcile";

    fn secrets(toss: bool) -> WebhookSecrets {
        WebhookSecrets {
            stripe: vec![SecretString::from("whsec_old"), SecretString::from(STRIPE)],
            toss: toss.then(|| SecretString::from(TOSS)),
            fetched: None,
        }
    }

    fn envelope(
        provider: Provider,
        event_type: &str,
        key: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> EventEnvelope {
        EventEnvelope {
            provider,
            event_type: event_type.into(),
            event_key: key.into(),
            verification: match provider {
                Provider::Stripe => IngestVerification::Signature,
                Provider::Toss => IngestVerification::Unsigned,
            },
            received_at: Utc::now(),
            request_id: "req".into(),
            attempt: 0,
            delivery_headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            body: body.to_vec(),
        }
    }

    const STRIPE_BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed","data":{"object":{}}}"#;

    fn signed_stripe(body: &[u8], key: &str, timestamp: i64) -> EventEnvelope {
        let signature = sign_stripe_payload(body, STRIPE, timestamp);
        envelope(Provider::Stripe, "checkout.session.completed", key, body, &[("stripe-signature", &signature)])
    }

    #[test]
    fn a_signed_stripe_event_holds_however_long_it_waited() {
        let days_ago = Utc::now().timestamp() - 30 * 24 * 3600;
        let checked = check_message(&signed_stripe(STRIPE_BODY, "evt_1", days_ago), &secrets(false)).unwrap();
        assert_eq!(
            checked,
            Checked {
                event_key: "evt_1".into(),
                event_type: "checkout.session.completed".into(),
                signed: true,
                fetched: false
            }
        );
    }

    fn fetched_stripe(body: &[u8], key: &str, mac: &str) -> EventEnvelope {
        let mut e = envelope(
            Provider::Stripe,
            "checkout.session.completed",
            key,
            body,
            &[(H_FETCHED_MAC, mac), ("x-source", "reconciliation")],
        );
        e.verification = IngestVerification::Fetched;
        e
    }

    fn with_api_key() -> WebhookSecrets {
        secrets(false).with_stripe_api_key(Some(&SecretString::from(STRIPE_API_KEY)))
    }

    #[test]
    fn a_fetched_stripe_event_holds_only_with_its_mac_under_the_api_key() {
        let mac =
            FetchedMacKey::derive(&SecretString::from(STRIPE_API_KEY)).sign(Provider::Stripe, "evt_1", STRIPE_BODY);
        let checked = check_message(&fetched_stripe(STRIPE_BODY, "evt_1", &mac), &with_api_key()).unwrap();
        assert!(checked.fetched && !checked.signed, "{checked:?}");

        // Claiming `fetched` without a MAC, with a MAC under another key, or with no key to
        // check it: unverifiable, never applied.
        let no_mac = check_message(&fetched_stripe(STRIPE_BODY, "evt_1", ""), &with_api_key()).unwrap_err();
        assert!(no_mac.0.contains("x-fetched-mac"), "{no_mac}");
        let guessed =
            FetchedMacKey::derive(&SecretString::from("rk_guess")).sign(Provider::Stripe, "evt_1", STRIPE_BODY);
        assert!(check_message(&fetched_stripe(STRIPE_BODY, "evt_1", &guessed), &with_api_key()).is_err());
        let unconfigured = check_message(&fetched_stripe(STRIPE_BODY, "evt_1", &mac), &secrets(false)).unwrap_err();
        assert!(unconfigured.0.contains("STRIPE_API_KEY"), "{unconfigured}");
        // The MAC covers the body: a changed body does not carry it along.
        let tampered = br#"{"id":"evt_1","type":"checkout.session.completed","data":{"object":{"x":1}}}"#;
        assert!(check_message(&fetched_stripe(tampered, "evt_1", &mac), &with_api_key()).is_err());
        // A Toss message cannot claim it at all.
        let key = toss_key(TOSS_PAYMENT);
        let mut toss = envelope(Provider::Toss, "PAYMENT_STATUS_CHANGED", &key, TOSS_PAYMENT, &[]);
        toss.verification = IngestVerification::Fetched;
        assert!(check_message(&toss, &with_api_key()).is_err());
    }

    #[test]
    fn a_stripe_event_without_a_signature_that_holds_is_unverifiable() {
        let unsigned = envelope(Provider::Stripe, "checkout.session.completed", "evt_1", STRIPE_BODY, &[]);
        assert!(check_message(&unsigned, &secrets(false)).unwrap_err().0.contains("missing"));
        let forged = sign_stripe_payload(STRIPE_BODY, "whsec_guessed", Utc::now().timestamp());
        let forged = envelope(
            Provider::Stripe,
            "checkout.session.completed",
            "evt_1",
            STRIPE_BODY,
            &[("stripe-signature", &forged)],
        );
        assert!(check_message(&forged, &secrets(false)).is_err());
        let mut tampered = signed_stripe(STRIPE_BODY, "evt_1", Utc::now().timestamp());
        tampered.body = br#"{"id":"evt_1","type":"checkout.session.completed","data":{"object":{"x":1}}}"#.to_vec();
        assert!(check_message(&tampered, &secrets(false)).is_err());
    }

    #[test]
    fn keys_and_types_come_from_the_body_not_the_headers() {
        let now = Utc::now().timestamp();
        let wrong_key = check_message(&signed_stripe(STRIPE_BODY, "evt_other", now), &secrets(false)).unwrap_err();
        assert!(wrong_key.0.contains("x-event-key"), "{wrong_key}");
        let mut wrong_type = signed_stripe(STRIPE_BODY, "evt_1", now);
        wrong_type.event_type = "checkout.session.expired".into();
        assert!(check_message(&wrong_type, &secrets(false)).unwrap_err().0.contains("x-event-type"));
    }

    const TOSS_PAYMENT: &[u8] = br#"{"eventType":"PAYMENT_STATUS_CHANGED","data":{"orderId":"o-1","status":"DONE"}}"#;

    fn toss_key(body: &[u8]) -> String {
        parse_toss_event(body).unwrap().event_key()
    }

    #[test]
    fn an_unsigned_toss_payment_event_passes_as_unsigned_unless_it_claims_a_signature() {
        let key = toss_key(TOSS_PAYMENT);
        let plain = envelope(Provider::Toss, "PAYMENT_STATUS_CHANGED", &key, TOSS_PAYMENT, &[]);
        assert!(!check_message(&plain, &secrets(true)).unwrap().signed);
        let mut claiming = plain.clone();
        claiming.verification = IngestVerification::Signature;
        assert!(check_message(&claiming, &secrets(true)).unwrap_err().0.contains("claims"));
        let wrong_key = envelope(Provider::Toss, "PAYMENT_STATUS_CHANGED", "sha256:00", TOSS_PAYMENT, &[]);
        assert!(check_message(&wrong_key, &secrets(true)).is_err());
    }

    #[test]
    fn signed_toss_events_need_the_key_and_a_signature_that_holds() {
        let body = br#"{"eventType":"payout.changed","eventId":"evt-p1","entityBody":{"status":"COMPLETED"}}"#;
        let time = "2024-09-05T12:19:21+09:00";
        let good = sign_toss_payload(body, time, TOSS);
        let headers = |signature: &str| {
            vec![
                ("tosspayments-webhook-signature".to_string(), format!("v1:{signature}")),
                ("tosspayments-webhook-transmission-time".to_string(), time.to_string()),
            ]
        };
        let with = |signature: &str| {
            let h = headers(signature);
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            envelope(Provider::Toss, "payout.changed", "evt-p1", body, &h)
        };
        assert!(check_message(&with(&good), &secrets(true)).unwrap().signed, "an old transmission time is fine here");
        assert!(check_message(&with(&good), &secrets(false)).unwrap_err().0.contains("TOSS_WEBHOOK_SECRET"));
        let forged = sign_toss_payload(body, time, "guessed");
        assert!(check_message(&with(&forged), &secrets(true)).is_err());
        let none = envelope(Provider::Toss, "payout.changed", "evt-p1", body, &[]);
        assert!(check_message(&none, &secrets(true)).is_err());
    }

    #[test]
    fn a_body_of_the_other_provider_is_unverifiable() {
        let key = toss_key(TOSS_PAYMENT);
        let as_stripe = envelope(Provider::Stripe, "PAYMENT_STATUS_CHANGED", &key, TOSS_PAYMENT, &[]);
        assert!(check_message(&as_stripe, &secrets(true)).is_err());
        let as_toss = envelope(Provider::Toss, "checkout.session.completed", "evt_1", STRIPE_BODY, &[]);
        assert!(check_message(&as_toss, &secrets(true)).is_err());
    }
}
