//! Reaching the daemon of a root: its client, and its errors turned into what to do.

use anyhow::anyhow;
use paracloud_api::{Client, ClientError};

use crate::cli::Global;

/// The client of the daemon of `--root`.
pub(crate) fn client(global: &Global) -> Client {
    Client::new(global.root.join(paracloud_api::SOCKET_NAME))
}

/// Turns a client error into a message that says what to do.
pub(crate) fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Unreachable { path, .. } => anyhow!(
            "no paracloud daemon runs for this root (socket {}): start one with `paracloud up` or `paracloud daemon`",
            path.display()
        ),
        ClientError::Api { body, .. } if !body.diagnostics.is_empty() => anyhow!("{}", body.error),
        other => anyhow!(other),
    }
}
