//! Moving deliveries through the worker: the reconnecting [`consumer`] cuts them into
//! [`batch`]es, [`process`] takes a batch end to end (a [`bundle`] of webhooks opened into
//! its webhooks; read, verify, apply through the store,
//! [`conclude`] each event, [`settle`] each delivery with the broker), and [`halt`] stops
//! taking batches while the database rejects the worker's own SQL.
//!
//! The pipeline drives the [`crate::store`] and the [`crate::domain`]; neither knows it.

pub mod acks;
pub mod batch;
pub mod bundle;
pub mod conclude;
pub mod consumer;
pub mod halt;
pub mod item;
pub mod process;
pub mod settle;
