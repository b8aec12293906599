//! Several webhooks in one message ([`shared::bundle`]), as the worker takes them.

use lapin::message::Delivery;

/// A delivery as the batch takes it ([`shared::bundle`]).
pub enum Bundle {
    /// A single webhook, or a message that is not a well-formed bundle (refused as any
    /// message whose headers do not describe a webhook).
    Not(Box<Delivery>),
    /// A bundle delivered the first time: its webhooks, each a delivery of its own sharing the
    /// bundle's tag (settled together: acknowledged once all are, returned whole otherwise).
    First(Vec<Delivery>),
    /// A bundle delivered again: split before anything in it is tried.
    Again(Vec<Delivery>),
}

impl Bundle {
    pub fn of(delivery: Delivery) -> Self {
        if !shared::bundle::is_bundle(&delivery.properties) {
            return Self::Not(Box::new(delivery));
        }
        let Some(entries) = shared::bundle::decode(&delivery.data) else { return Self::Not(Box::new(delivery)) };
        let parts = entries
            .into_iter()
            .map(|(properties, data)| Delivery {
                delivery_tag: delivery.delivery_tag,
                exchange: delivery.exchange.clone(),
                routing_key: delivery.routing_key.clone(),
                redelivered: delivery.redelivered,
                properties,
                data,
                acker: delivery.acker.clone(),
            })
            .collect();
        if delivery.redelivered {
            Self::Again(parts)
        } else {
            Self::First(parts)
        }
    }
}
