//! (being written) — PLACEHOLDER from the config branch so `config` compiles; the DNS helper's real
//! `DnsProviderConfig` replaces this file at merge.

/// The DNS provider a dns01 solver uses, tagged by `provider = "..."`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(tag = "provider", rename_all = "kebab-case")]
pub enum DnsProviderConfig {
    /// Run an external command.
    Exec(ExecConfig),
}

/// Placeholder settings of the `exec` provider.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The command to run.
    pub command: String,
}
