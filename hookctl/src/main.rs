//! `hookctl`: send signed test events, inspect and replay dead letters, trace an order.

// Not `#[tokio::main]`: the runtime's threads need stacks for any header the broker delivers
// (dead letters are anyone's messages).
fn main() {
    let runtime = shared::runtime::build().unwrap_or_else(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        std::process::exit(1)
    });
    runtime.block_on(hookctl::cli::main())
}
