//! The `hookctl` binary under a name of its own, for the end-to-end tests (see Cargo.toml).

// Not `#[tokio::main]`: the runtime's threads need stacks for any header the broker delivers
// (dead letters are anyone's messages).
fn main() {
    // SAFETY: first thing in `main`, before any other thread exists.
    if let Err(error) = unsafe { shared::runtime::block_on(hookctl::cli::main) } {
        eprintln!("error: cannot start the runtime: {error}");
        std::process::exit(1)
    }
}
