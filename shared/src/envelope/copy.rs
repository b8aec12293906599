//! The properties of a copy of a delivered message that a worker or an operator publishes (to a
//! delay tier, the dead letters, the work queue for a webhook of a bundle, or a replay).

use std::collections::BTreeMap;

use super::{headers_out_of_bounds, long_string, H_HEADERS_DROPPED};
use lapin::types::FieldTable;
use lapin::BasicProperties;

/// Headers the broker routes by (sender-selected distribution): on a copy the worker publishes
/// they would send it to any queue named in them, with the worker's permissions.
const ROUTING_HEADERS: [&str; 2] = ["CC", "BCC"];

/// The properties a copy of a delivery is published with: its own, except what the copy must
/// not carry, none of which ingest sends:
/// - `user_id`, which the broker refuses unless it is the publishing user (the worker's is
///   not the original publisher's), and `expiration`, which would let the copy vanish from a
///   delay tier or the dead letters (and, unchecked inside a bundle, could be refused as
///   malformed): a copy the broker refuses for what it carries would be refused forever;
/// - the `CC` and `BCC` headers, which would route the copy to the queues they name;
/// - headers out of bounds ([`headers_out_of_bounds`]), which give way to why they were
///   dropped: nested that deep they would overflow the stack of whoever reads the copy, and so
///   large the copy with its reason could pass the broker's frame size, which closes the
///   connection.
pub fn copied(properties: &BasicProperties) -> BasicProperties {
    let headers = match headers_out_of_bounds(properties) {
        Some(why) => {
            let mut dropped = FieldTable::default();
            dropped.insert(H_HEADERS_DROPPED.into(), long_string(why));
            Some(dropped)
        }
        None => properties.headers().as_ref().map(|headers| {
            let kept: BTreeMap<_, _> = headers
                .inner()
                .iter()
                .filter(|(name, _)| !ROUTING_HEADERS.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            FieldTable::from(kept)
        }),
    };
    let mut copy = BasicProperties::default();
    if let Some(headers) = headers {
        copy = copy.with_headers(headers);
    }
    // Every other property, one by one: the type has no way to unset one.
    macro_rules! keep {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(value) = properties.$get() {
                copy = copy.$set(Clone::clone(value));
            })*
        };
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    copy
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldArray};

    use super::*;

    fn headers(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in entries {
            table.insert((*name).into(), value.clone());
        }
        table
    }

    #[test]
    fn a_copy_keeps_what_the_message_says_and_leaves_out_what_would_refuse_or_reroute_it() {
        let queues = AMQPValue::FieldArray(FieldArray::from(vec![long_string("someone.elses")]));
        let key = ("x-event-key", long_string("evt_1"));
        let base = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_message_id("m".into())
            .with_timestamp(7)
            .with_type("checkout.session.completed".into())
            .with_app_id("ingest".into())
            .with_cluster_id("k".into());
        let original = base
            .clone()
            .with_headers(headers(&[key.clone(), ("CC", queues.clone()), ("BCC", queues)]))
            .with_user_id("publisher".into())
            .with_expiration("1".into());
        assert_eq!(copied(&original), base.with_headers(headers(&[key])));
        assert_eq!(copied(&BasicProperties::default()), BasicProperties::default(), "no headers, none added");
    }

    #[test]
    fn headers_out_of_bounds_give_way_to_why() {
        let mut nested = FieldTable::default();
        for _ in 0..20 {
            let mut outer = FieldTable::default();
            outer.insert("x".into(), AMQPValue::FieldTable(nested));
            nested = outer;
        }
        let copy = copied(&BasicProperties::default().with_headers(nested).with_message_id("m".into()));
        let kept = copy.headers().as_ref().unwrap();
        assert_eq!(kept.inner().keys().map(|k| k.as_str()).collect::<Vec<_>>(), [H_HEADERS_DROPPED]);
        assert_eq!(copy.message_id().as_ref().map(|m| m.as_str()), Some("m"));
    }
}
