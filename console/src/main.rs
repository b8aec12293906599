//! `console`: the web console (`console`), and `console hash-password`, which reads a password
//! on standard input and prints its Argon2id hash for `CONSOLE_USERS`.

use std::io::BufRead;

use clap::Parser;
use console::cli::{Cli, Command};
use secrecy::SecretString;
use shared::settings::Settings;
use shared::{shutdown, telemetry};

// Not `#[tokio::main]`: the runtime's threads need stacks for any header the broker delivers
// (dead letters are anyone's messages).
fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { shared::runtime::block_on(run) }?
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Some(Command::HashPassword) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "no password on standard input");
            println!("{}", console::auth::users::hash_password(SecretString::from(password.to_string())).await?);
            Ok(())
        }
        None => {
            let settings = console::PipelineSettings::load()?;
            let console_settings = console::ConsoleSettings::load()?;
            let _logs = telemetry::init(settings.service.log_format, "console").map_err(anyhow::Error::msg)?;
            let console = console::Console::build(settings, console_settings).await?;
            console.run(shutdown::token_on_signal()).await;
            Ok(())
        }
    }
}
