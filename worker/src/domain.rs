//! What the worker decides, without I/O: from an envelope to an intent ([`event`]), control
//! characters caught before anything is used ([`screen`]), every event of a batch against its
//! payment ([`decide`], with the [`state_machine`] and the provider's [`ordering`]), the
//! trainer's [`notification`], what an attempt produced ([`outcome`]) and what happens after a
//! failed one ([`retry`]). Imports nothing of the crate outside this folder.

pub mod decide;
pub mod event;
pub mod notification;
pub mod ordering;
pub mod outcome;
pub mod retry;
pub mod screen;
pub mod state_machine;
