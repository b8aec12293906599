//! `worker`: consumes queued webhooks (`worker` or `worker run`), or migrates the database
//! (`worker migrate`). Everything is in the library: [`worker::cli::main`].

// Not `#[tokio::main]`: the runtime's threads need stacks for any header the broker delivers.
fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { shared::runtime::block_on(worker::cli::main) }?
}
