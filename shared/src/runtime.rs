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
//! default, `RUST_MIN_STACK`. [`block_on`] sets that (unless it is set larger already) before
//! any thread exists, gives the runtime's threads the same size, and runs `main`'s future on a
//! thread of that size too rather than on the process's main thread (whose stack is the
//! system's, 8 MiB with the usual `ulimit -s`). It is address space the threads reserve, not memory they use:
//! a thread touches only the pages it needs.

use std::future::Future;
use std::io;

/// What the deepest header at RabbitMQ's default `frame_max` needs, with room: 48 MiB was the
/// least that held in a release build, and where it overflows moves by about a tenth between
/// builds. Unoptimised code spends several times the stack a level (384 MiB held, 256 did not).
/// A broker configured with a larger `frame_max` allows deeper nesting, and needs more.
pub const THREAD_STACK: usize = if cfg!(debug_assertions) { 512 << 20 } else { 64 << 20 };

/// Runs the future `main()` makes to its end, on a multi-thread runtime whose threads, the
/// thread that drives `main` and every other thread the process starts without a size of its
/// own have stacks of at least [`THREAD_STACK`]. A panic in `main` is a panic here.
///
/// # Safety
///
/// No other thread may exist yet: it sets `RUST_MIN_STACK` in the environment, which another
/// thread could be reading, and which the standard library reads once, when the process starts
/// its first thread. Call it first thing in `main`.
pub unsafe fn block_on<M, F>(main: M) -> io::Result<F::Output>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future,
    F::Output: Send + 'static,
{
    let stack = match std::env::var("RUST_MIN_STACK").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(set) if set >= THREAD_STACK => set,
        _ => {
            std::env::set_var("RUST_MIN_STACK", THREAD_STACK.to_string());
            THREAD_STACK
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(stack).build()?;
    // The future need not be `Send` (a test build's fail points hold a lock across `main`): it is
    // made on the thread that drives it.
    let driver =
        std::thread::Builder::new().name("main".into()).stack_size(stack).spawn(move || runtime.block_on(main()))?;
    match driver.join() {
        Ok(output) => Ok(output),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
