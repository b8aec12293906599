use tracing_subscriber::layer::SubscriberExt;

use super::*;

const RECEIVED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Runs `test` with a subscriber as the services have (a registry), exporting nothing.
fn without_export(test: impl FnOnce()) {
    assert!(!exporting(), "no unit test turns export on");
    let subscriber = tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO);
    tracing::subscriber::with_default(subscriber, test);
}

/// To see it fail, make `traceparent` return `None` when nothing is exported.
#[test]
fn without_export_a_received_traceparent_is_passed_on_by_the_span_and_its_children() {
    without_export(|| {
        let delivery = tracing::info_span!("delivery");
        continue_trace(&delivery, RECEIVED);
        assert_eq!(traceparent(&delivery).as_deref(), Some(RECEIVED));
        let child = tracing::info_span!(parent: &delivery, "notification");
        assert_eq!(traceparent(&child).as_deref(), Some(RECEIVED), "a child passes its parent's on");
        let _entered = child.enter();
        assert_eq!(traceparent(&tracing::Span::current()).as_deref(), Some(RECEIVED));
    });
}

#[test]
fn without_export_nothing_is_invented() {
    without_export(|| {
        let request = tracing::info_span!("webhook");
        assert_eq!(traceparent(&request), None, "nothing received");
        for invalid in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nx: y",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let span = tracing::info_span!("webhook");
            continue_trace(&span, invalid);
            assert_eq!(traceparent(&span), None, "{invalid:?} is not passed on");
        }
        // A span the filter turned off has nowhere to keep it.
        let off = tracing::debug_span!("below the filter");
        continue_trace(&off, RECEIVED);
        assert_eq!(traceparent(&off), None);
    });
}

#[test]
fn a_span_that_received_twice_passes_the_last_on() {
    without_export(|| {
        let span = tracing::info_span!("delivery");
        continue_trace(&span, "00-11111111111111111111111111111111-2222222222222222-00");
        continue_trace(&span, RECEIVED);
        assert_eq!(traceparent(&span).as_deref(), Some(RECEIVED));
    });
}
