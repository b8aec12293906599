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
