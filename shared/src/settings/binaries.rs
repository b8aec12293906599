//! Each binary's settings: the parts it uses, listed once in its [`Settings::read`].
//!
//! A new part (say, reconciliation's) is a [`Part`] in a file of its own, then a field and a
//! `parts.read()?` line in each binary that uses it; its names then count in that binary's
//! [`Settings::env_names`] and in [`env_names`].

use super::{
    CommonSettings, DatabaseSettings, IngestPart, NotifySettings, Parts, ReconcilePart, ServiceSettings, Settings,
    SettingsError, TossApiSettings, WebhookSecretSettings, WorkerPart,
};

/// What `ingest` reads.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    pub common: CommonSettings,
    pub service: ServiceSettings,
    pub secrets: WebhookSecretSettings,
    pub ingest: IngestPart,
}

impl Settings for IngestSettings {
    fn read(parts: &mut Parts) -> Result<Self, SettingsError> {
        Ok(Self { common: parts.read()?, service: parts.read()?, secrets: parts.read()?, ingest: parts.read()? })
    }

    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// What `worker` (and `worker migrate`) reads.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub common: CommonSettings,
    pub service: ServiceSettings,
    pub database: DatabaseSettings,
    pub secrets: WebhookSecretSettings,
    pub toss_api: TossApiSettings,
    pub worker: WorkerPart,
    pub notify: NotifySettings,
    pub reconcile: ReconcilePart,
}

impl Settings for WorkerSettings {
    fn read(parts: &mut Parts) -> Result<Self, SettingsError> {
        Ok(Self {
            common: parts.read()?,
            service: parts.read()?,
            database: parts.read()?,
            secrets: parts.read()?,
            toss_api: parts.read()?,
            worker: parts.read()?,
            notify: parts.read()?,
            reconcile: parts.read()?,
        })
    }

    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// What `hookctl` reads. It has no part of its own: it works with what the worker works with.
#[derive(Clone, Debug)]
pub struct HookctlSettings {
    pub common: CommonSettings,
    pub database: DatabaseSettings,
    pub secrets: WebhookSecretSettings,
    pub toss_api: TossApiSettings,
    pub reconcile: ReconcilePart,
}

impl Settings for HookctlSettings {
    fn read(parts: &mut Parts) -> Result<Self, SettingsError> {
        Ok(Self {
            common: parts.read()?,
            database: parts.read()?,
            secrets: parts.read()?,
            toss_api: parts.read()?,
            reconcile: parts.read()?,
        })
    }

    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// The environment name of every setting any binary reads, each once, in the order of the
/// binaries' parts: what the README's table documents and what deployments may set.
pub fn env_names() -> Vec<String> {
    let mut names = IngestSettings::env_names();
    for name in WorkerSettings::env_names().into_iter().chain(HookctlSettings::env_names()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}
