//! The `worker` binary under a name of its own, for the end-to-end tests (see Cargo.toml).

// Not `#[tokio::main]`: the runtime's threads need stacks for any header the broker delivers.
fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { shared::runtime::block_on(worker::cli::main) }?
}
