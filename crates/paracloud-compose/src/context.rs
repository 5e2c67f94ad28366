//! What each service of a Compose file is read against: the file's origin, its variables and
//! the machine (`Context`), and what the file declares at the top level (`Declared`).

use std::collections::BTreeMap;

use paracloud_manifest::Origin;

use crate::Host;

/// What the file declares at the top level for its services to use.
#[derive(Default)]
pub(crate) struct Declared {
    pub(crate) volumes: Vec<String>,
    /// Secrets and configs by name: their host files, as manifest bind sources.
    pub(crate) secrets: BTreeMap<String, String>,
    pub(crate) configs: BTreeMap<String, String>,
    /// Networks by their Compose names.
    pub(crate) networks: Vec<String>,
}

/// What every service is read against.
pub(crate) struct Context<'a> {
    pub(crate) origin: &'a Origin,
    /// The environment with the project's `.env` under it.
    pub(crate) vars: &'a BTreeMap<String, String>,
    pub(crate) host: &'a dyn Host,
}
