//! `hookctl`: send signed test events, inspect and replay dead letters, trace an order.

// Not `#[tokio::main]`: the runtime's threads need stacks for any header the broker delivers
// (dead letters are anyone's messages).
fn main() {
    // SAFETY: first thing in `main`, before any other thread exists.
    if let Err(error) = unsafe { shared::runtime::block_on(hookctl::cli::main) } {
        eprintln!("error: cannot start the runtime: {error}");
        std::process::exit(1)
    }
}
