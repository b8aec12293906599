//! What a replay refuses before it reads a message.

use secrecy::SecretString;

use super::*;

fn secrets() -> WebhookSecrets {
    WebhookSecrets { stripe: vec![SecretString::from("whsec_test")], toss: None, fetched: None }
}

fn one(id: &str) -> Selection {
    Selection { ids: vec![id.into()], ..Default::default() }
}

/// Make the `Queue::Events` arm of `check_request` `Ok(secrets)` (accepting `None`) and a
/// replay of events goes back to work unchecked: this fails.
#[test]
fn a_replay_of_events_without_the_secrets_to_check_them_is_refused() {
    let refused = check_request(Queue::Events, &one("evt_1"), None);
    assert!(matches!(refused, Err(DeadLetterError::NoSecrets)), "{refused:?}");
    assert!(DeadLetterError::NoSecrets.to_string().contains("STRIPE_WEBHOOK_SECRET"));
    let secrets = secrets();
    assert!(matches!(check_request(Queue::Events, &one("evt_1"), Some(&secrets)), Ok(Some(_))));
}

#[test]
fn notifications_carry_no_provider_signature_and_are_replayed_without_a_check() {
    assert!(matches!(check_request(Queue::Notifications, &one("n-1"), None), Ok(None)));
    let secrets = secrets();
    assert!(matches!(check_request(Queue::Notifications, &one("n-1"), Some(&secrets)), Ok(None)));
}

#[test]
fn a_replay_must_say_what_to_replay() {
    let secrets = secrets();
    let nothing = check_request(Queue::Events, &Selection::default(), Some(&secrets));
    assert!(matches!(nothing, Err(DeadLetterError::NothingSelected)), "{nothing:?}");
    for selection in [
        Selection { all: true, ..Default::default() },
        Selection { provider: Some(Provider::Toss), ..Default::default() },
        Selection { since: Some(Duration::from_secs(60)), ..Default::default() },
        Selection { ids: vec!["a".into(), "b".into()], ..Default::default() },
    ] {
        assert!(check_request(Queue::Events, &selection, Some(&secrets)).is_ok(), "{selection:?}");
    }
}

/// A signed Stripe webhook as ingest queues it, signed with `secret`.
fn webhook(key: &str, secret: &str) -> (lapin::BasicProperties, Vec<u8>) {
    let body = format!(
        r#"{{"id":"{key}","type":"checkout.session.completed","data":{{"object":{{"object":"checkout.session","client_reference_id":"o-{key}","payment_status":"paid","amount_total":100,"currency":"usd"}}}}}}"#
    );
    let signature =
        shared::verify::stripe::sign_stripe_payload(body.as_bytes(), secret, chrono::Utc::now().timestamp());
    let properties = shared::envelope::EnvelopeHeaders {
        provider: Provider::Stripe,
        event_type: "checkout.session.completed",
        event_key: key,
        verification: shared::envelope::IngestVerification::Signature,
        received_at: chrono::Utc::now(),
        request_id: "req",
        attempt: 0,
    }
    .properties([("stripe-signature", signature.as_str())]);
    (properties, body.into_bytes())
}

/// A dead-lettered bundle goes back only when every webhook in it proves itself.
#[test]
fn a_bundle_is_replayed_only_if_every_webhook_in_it_holds() {
    let secrets = secrets();
    let (one, two) = (webhook("evt_1", "whsec_test"), webhook("evt_2", "whsec_test"));
    let (alone_properties, alone_body) = &one;
    assert_eq!(check_message_bytes(alone_properties, alone_body, &secrets), Ok(()));
    let bundle = shared::bundle::properties(2);
    let good = shared::bundle::encode(&[one.clone(), two]);
    assert_eq!(check_message_bytes(&bundle, &good, &secrets), Ok(()));

    let forged = shared::bundle::encode(&[one, webhook("evt_3", "whsec_someone_else")]);
    let refused = check_message_bytes(&bundle, &forged, &secrets).unwrap_err();
    assert!(refused.starts_with(UNVERIFIABLE), "{refused}");
    let refused = check_message_bytes(&bundle, &good[..good.len() - 1], &secrets).unwrap_err();
    assert!(refused.contains("bundle"), "{refused}");
}
