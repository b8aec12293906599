//! A message the broker cannot route comes back (`basic.return`, before its confirm) without a
//! delivery tag, so a publisher cannot tell from the return which of its publishes it was. Many
//! publishes share a channel, and the worker's notifications are unroutable whenever nothing
//! subscribes to them, while its other publishes (retries, dead letters, events found by
//! reconciliation) must each learn exactly whether they were stored. Each publish here must be
//! told the truth about its own message while as many broadcasts are unroutable.
//!
//! Publishes that share a channel and a confirm can still be told one another's outcome when
//! some are unroutable (lapin hands out a confirm's returns in its own order): a publish that
//! must be stored is then told it was although its message came back. That needs a queue or
//! binding gone mid-flight, and what can be done is to notice: the returned message is compared
//! with what was sent, and a stranger's is counted and logged with its message ids.

use std::time::Duration;

use futures_util::future::join_all;
use lapin::BasicProperties;
use prometheus::Registry;
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

/// How the unroutable half is sent.
#[derive(Clone, Copy)]
enum Unroutable {
    /// As the worker sends notifications: on the channel of its own broadcasts have.
    AsBroadcasts,
    /// On the channel of the publishes that must be stored, as a message whose queue vanished.
    OnTheStoredChannel,
}

/// What a run of [`PUBLISHES`] publishes, half of them unroutable, came to.
struct Run {
    /// Per publish, in order: even ones routable, odd ones not.
    results: Vec<Result<(), PublishError>>,
    /// Messages the work queue holds afterwards.
    routed: usize,
    metrics: BrokerMetrics,
}

impl Run {
    /// Publishes told another's outcome, as (index, result).
    fn wrong(&self) -> Vec<(usize, &Result<(), PublishError>)> {
        self.results
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
            .collect()
    }
}

async fn run(unroutable: Unroutable) -> Run {
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
    let metrics = BrokerMetrics::register(&Registry::new());
    let broker =
        Broker::start(testkit::amqp_url().into(), topology.clone(), options, metrics.clone(), cancel.clone(), &tracker);
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
                let result = match (i % 2, unroutable) {
                    (0, _) => broker.publish(events, "stripe.test", body.as_bytes(), properties).await,
                    (_, Unroutable::AsBroadcasts) => {
                        broker.publish_broadcast(notifications, "stripe.test", body.as_bytes(), properties).await
                    }
                    (_, Unroutable::OnTheStoredChannel) => {
                        broker.publish(notifications, "stripe.test", body.as_bytes(), properties).await
                    }
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
    let routed = test_broker.count(&topology.work_queue()).await as usize;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    Run { results, routed, metrics }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_publish_learns_whether_its_own_message_was_routed_whatever_shares_its_channel() {
    let run = run(Unroutable::AsBroadcasts).await;
    let wrong = run.wrong();
    assert!(
        wrong.is_empty(),
        "{} of {PUBLISHES} publishes were told another's outcome (first: {:?}); the work queue holds {}",
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        run.routed
    );
    assert_eq!(run.routed, PUBLISHES / 2, "every routable message stored");
    assert_eq!(run.metrics.returns_misattributed.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_handed_to_another_publish_is_noticed() {
    // Rounds until lapin hands out a return in another order than the publishes' (a few dozen
    // of the 4,000 a round, usually): only then is there something to notice.
    for round in 1..=5 {
        let run = run(Unroutable::OnTheStoredChannel).await;
        let wrong = run.wrong();
        let told_stored = wrong.iter().filter(|(i, _)| i % 2 == 1).count();
        let told_returned = wrong.len() - told_stored;
        assert_eq!(run.routed, PUBLISHES / 2, "every routable message stored");
        assert_eq!(told_stored, told_returned, "each return lands on one publish: {wrong:?}");
        let noticed = run.metrics.returns_misattributed.get() as usize;
        // Every routable publish handed a return noticed it; so did unroutable ones handed each
        // other's (those were told the truth by chance).
        assert!(noticed >= told_returned, "{noticed} noticed, {told_returned} handed a stranger's return");
        if told_stored > 0 {
            return;
        }
        eprintln!("round {round}: every return went to its own publish");
    }
    panic!("no return was handed to another publish in five rounds: nothing here was shown");
}
