//! The console's one AMQP connection, opened when first needed and again after it broke, and
//! the queue depths of the overview. Depths come from passive declares (a message count, no
//! permission needed, works on every RabbitMQ without the management plugin).

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use secrecy::SecretString;
use shared::topology::Topology;
use tokio::sync::Mutex;

/// A lazily (re)connected connection.
pub struct BrokerHandle {
    amqp_url: SecretString,
    connection: Mutex<Option<Connection>>,
}

/// How deep one queue is, if it exists.
#[derive(Debug, Clone)]
pub struct QueueDepth {
    pub name: String,
    /// `None`: no such queue (not declared yet, or a part that is off).
    pub messages: Option<u32>,
    pub consumers: Option<u32>,
}

impl BrokerHandle {
    pub fn new(amqp_url: SecretString) -> Self {
        Self { amqp_url, connection: Mutex::new(None) }
    }

    /// Runs `work` on a connected connection (connecting first if needed). A failure drops a
    /// connection that is no longer connected, so the next call connects again.
    pub async fn with<T, F>(&self, work: F) -> anyhow::Result<T>
    where
        F: for<'c> AsyncFnOnce(&'c Connection) -> anyhow::Result<T>,
    {
        let mut guard = self.connection.lock().await;
        if !guard.as_ref().is_some_and(|c| c.status().connected()) {
            let connection = shared::broker::connect_first(&self.amqp_url, "console")
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to AMQP_URL: {e}"))?;
            *guard = Some(connection);
        }
        let connection = guard.as_ref().expect("connected above");
        let result = work(connection).await;
        if !connection.status().connected() {
            *guard = None;
        }
        result
    }

    /// The depth of every queue of `topology`, in its order.
    pub async fn depths(&self, topology: &Topology) -> anyhow::Result<Vec<QueueDepth>> {
        self.with(async |connection| {
            let mut depths = Vec::new();
            for name in topology.queues() {
                // A passive declare of a missing queue closes its channel, so each gets its own.
                let channel = connection.create_channel().await?;
                let options = QueueDeclareOptions { passive: true, ..Default::default() };
                let queue = channel.queue_declare(name.as_str().into(), options, FieldTable::default()).await.ok();
                let _ = channel.close(200, "".into()).await;
                depths.push(QueueDepth {
                    name,
                    messages: queue.as_ref().map(|q| q.message_count()),
                    consumers: queue.as_ref().map(|q| q.consumer_count()),
                });
            }
            Ok(depths)
        })
        .await
    }

    /// Closes the connection (at shutdown).
    pub async fn close(&self) {
        if let Some(connection) = self.connection.lock().await.take() {
            let _ = connection.close(200, "console stopping".into()).await;
        }
    }
}
