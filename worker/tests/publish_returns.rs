//! A message the broker cannot route comes back (`basic.return`, before its confirm) without a
//! delivery tag, so a publisher cannot tell from the return which of its publishes it was. Many
//! publishes share a channel, and the worker's notifications are unroutable whenever nothing
//! subscribes to them, while its other publishes (retries, dead letters, events found by
//! reconciliation) must each learn exactly whether they were stored. Each publish here must be
//! told the truth about its own message while as many broadcasts are unroutable.
//!
//! (Send the broadcasts through `Broker::publish` to see a few dozen of the 4,000 told
//! another's outcome: routable ones `Unroutable`, unroutable ones `Ok`.)

use std::time::Duration;

use futures_util::future::join_all;
use lapin::BasicProperties;
use shared::broker::{Broker, BrokerOptions, PublishError};
use shared::metrics::BrokerMetrics;
use shared::settings::WorkerSettings;
use shared::topology::{Declaring, Topology};
use testkit::TestBroker;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Publishes in flight at once, half of them unroutable.
const PUBLISHES: usize = 4000;
/// Tasks publishing at once, each waiting for its confirm before its next publish.
const PUBLISHERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_publish_learns_whether_its_own_message_was_routed_whatever_shares_its_channel() {
    let test_broker = TestBroker::new().await;
    let settings: WorkerSettings = test_broker.settings(Some("postgres://unused@127.0.0.1/unused"), &[]);
    let topology = Topology::from_settings(&settings.common);
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let options = BrokerOptions {
        connection_name: "publish-returns-test".into(),
        // One channel for the publishes that must be stored (and one for broadcasts).
        publish_channels: 1,
        publish_timeout: Duration::from_secs(30),
        declaring: Declaring::Everything,
    };
    let metrics = BrokerMetrics::register(&prometheus::Registry::new());
    let broker =
        Broker::start(testkit::amqp_url().into(), topology.clone(), options, metrics, cancel.clone(), &tracker);
    tokio::time::timeout(Duration::from_secs(30), broker.connected(&cancel)).await.expect("connected in time");

    // Even: to the work queue (the events exchange binds it to every key); odd: to the
    // notifications exchange, which no queue is bound to.
    let (events, notifications) = (topology.events_exchange(), topology.notifications_exchange());
    // Publishers that each publish one message after another, as the worker's tasks do.
    let results: Vec<Result<(), PublishError>> = join_all((0..PUBLISHERS).map(|p| {
        let (broker, events, notifications) = (&broker, &events, &notifications);
        async move {
            let mut results = Vec::new();
            for i in (p..PUBLISHES).step_by(PUBLISHERS) {
                let properties = BasicProperties::default().with_message_id(format!("m{i}").into());
                let body = format!("{i}");
                let result = if i % 2 == 0 {
                    broker.publish(events, "stripe.test", body.as_bytes(), properties).await
                } else {
                    broker.publish_broadcast(notifications, "stripe.test", body.as_bytes(), properties).await
                };
                results.push((i, result));
            }
            results
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect::<std::collections::BTreeMap<_, _>>()
    .into_values()
    .collect();
    let wrong: Vec<(usize, &Result<(), PublishError>)> = results
        .iter()
        .enumerate()
        .filter(
            |(i, result)| {
                if i % 2 == 0 {
                    result.is_err()
                } else {
                    !matches!(result, Err(PublishError::Unroutable(_)))
                }
            },
        )
        .collect();
    let routed = test_broker.count(&topology.work_queue()).await as usize;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    assert!(
        wrong.is_empty(),
        "{} of {PUBLISHES} publishes were told another's outcome (first: {:?}); the work queue holds {routed}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(routed, PUBLISHES / 2, "every routable message stored");
}
