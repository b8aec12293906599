//! The providers' own APIs, called with our keys: [`toss`] fetches a Toss payment back to
//! verify an unsigned event. Imports the [`crate::domain`] only.

pub mod toss;
