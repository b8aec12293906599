//! The `worker` binary's own command line: `worker` / `worker run` consumes, `worker migrate`
//! migrates. In the library so deployment checks can parse the commands the compose file runs.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "worker", version, about = "Applies queued payment webhooks to Postgres exactly once in effect")]
pub struct WorkerCli {
    #[command(subcommand)]
    pub command: Option<WorkerCommand>,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCommand {
    /// Consume the work queue (the default).
    Run,
    /// Create the database if missing and apply migrations; safe to run concurrently.
    Migrate,
}
