//! `hookctl`: the operator's tools, as a library the web console calls and as the `hookctl`
//! command line.
//!
//! The library takes typed arguments and returns typed results; it prints nothing:
//!
//! - [`dead_letters`]: the dead-letter queues: list, show, purge, and [`dead_letters::replay`],
//!   which checks each message as the worker checks every delivery (an unverifiable one stays
//!   dead, and the report says why) before it moves it back to work;
//! - [`outbox`]: notifications the broker kept refusing, set aside in the outbox table;
//! - [`unverified`]: events nothing could verify, and [`unverified::recheck`], which sends them
//!   through the workers again once a verification means exists;
//! - [`events`]: what the pipeline received and did for an order;
//! - [`reconcile`]: the worker's reconciliation against the providers' APIs, run by hand;
//! - [`shown`]: how a message's text is shown to a person (control characters escaped, Toss's
//!   payment `secret` masked).
//!
//! Nothing here declares broker topology: it runs under the operator's broker user, which may
//! read the dead-letter queues and publish through the default exchange only.
//!
//! [`cli`] is the command line over it (`send`, `dead`, `unverified`, `events`, `reconcile`,
//! `probe`): it
//! parses, calls the library and prints.

pub mod cli;
pub mod dead_letters;
pub mod events;
pub mod outbox;
pub mod reconcile;
pub mod shown;
pub mod unverified;
