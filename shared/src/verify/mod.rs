//! Signature checks over raw bytes and header values. Pure functions: no I/O, no clock
//! (callers pass `now`), so they are unit- and property-tested directly.
//!
//! [`message`] checks a queued message again where it is used (the worker, a replay): the
//! broker is not a trust boundary. [`fetched`] proves that an event came from our own
//! reconciler's call to a provider's API.
//!
//! Every comparison of a computed MAC with a received one goes through
//! [`hmac::Mac::verify_slice`], which compares in constant time.

pub mod fetched;
pub mod message;
pub mod stripe;
pub mod toss;

use hmac::Hmac;
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;
