//! The Tokio runtime of every binary that receives AMQP messages, on threads whose stacks take
//! the deepest message the broker delivers.
//!
//! A message's `headers` may nest tables in tables as deep as the broker's frame size allows:
//! about 21,800 levels at RabbitMQ's default `frame_max` (128 KiB, 6 bytes a level). lapin
//! parses a content header on its I/O thread with amq-protocol's recursive parser, which has
//! no depth limit, and a nested table is dropped (and cloned) recursively too. On a default
//! 2 MiB stack about 900 levels (6 KB of headers) overflow it, and a stack overflow aborts the
//! whole process: one such message, published by anyone who may publish to the events
//! exchange, would abort every worker it reaches, again on each redelivery. The broker is not
//! a trust boundary, so such a message must end like any other unverifiable one: parked with
//! its reason.
//!
//! lapin starts its I/O thread without a stack size of its own, so the thread gets Rust's
//! default, `RUST_MIN_STACK`. [`build`] sets that (unless it is set larger already) before any
//! thread exists, and gives the runtime's threads the same size. It is address space the
//! threads reserve, not memory they use: a thread touches only the pages it needs.

use std::io;

/// What the deepest header at RabbitMQ's default `frame_max` needs, with room: 48 MiB was the
/// least that held in a release build, and where it overflows moves by about a tenth between
/// builds. Unoptimised code spends several times the stack a level (384 MiB held, 256 did not).
/// A broker configured with a larger `frame_max` allows deeper nesting, and needs more.
pub const THREAD_STACK: usize = if cfg!(debug_assertions) { 512 << 20 } else { 64 << 20 };

/// The multi-thread runtime `main` runs on, every thread of the process on a stack of at least
/// [`THREAD_STACK`]. Call it first thing in `main`: `RUST_MIN_STACK` is read once, when the
/// process starts its first thread.
pub fn build() -> io::Result<tokio::runtime::Runtime> {
    let stack = match std::env::var("RUST_MIN_STACK").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(set) if set >= THREAD_STACK => set,
        _ => {
            // Single-threaded still: nothing else reads the environment meanwhile.
            std::env::set_var("RUST_MIN_STACK", THREAD_STACK.to_string());
            THREAD_STACK
        }
    };
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(stack).build()
}
