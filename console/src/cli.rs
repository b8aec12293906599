//! The `console` binary's command line: no argument serves the console; `hash-password` reads
//! a password on standard input and prints its Argon2id hash for `CONSOLE_USERS`.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "console", version, about = "Web console for the people on call")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Read a password from standard input (one line) and print its Argon2id hash.
    HashPassword,
}
