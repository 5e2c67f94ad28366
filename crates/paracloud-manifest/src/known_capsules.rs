//! The capsules a manifest may name: the built-in ones and the application's own once read,
//! carried by the checker for service policies and schedules.

use paracloud_capsule::CapsuleSpec;

use crate::units;

/// The capsules a manifest may name: the built-in ones and the application's own.
pub(crate) struct KnownCapsules {
    /// Every capsule that parsed, built-in ones first.
    pub(crate) specs: Vec<CapsuleSpec>,
    /// Names of the application's capsules that did not parse (already reported): a policy or
    /// schedule naming one is not reported again.
    pub(crate) broken: Vec<String>,
}

impl Default for KnownCapsules {
    fn default() -> Self {
        Self {
            specs: paracloud_capsule::builtins(),
            broken: Vec::new(),
        }
    }
}

impl KnownCapsules {
    pub(crate) fn get(&self, name: &str) -> Option<&CapsuleSpec> {
        self.specs.iter().find(|c| c.name == name)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.specs.iter().map(|c| c.name.clone()).collect()
    }

    /// What a misspelt capsule name may have meant: every capsule, broken ones included.
    pub(crate) fn suggest(&self, name: &str) -> Option<String> {
        let names = self.specs.iter().map(|c| c.name.as_str());
        units::suggest(name, names.chain(self.broken.iter().map(String::as_str))).map(str::to_owned)
    }

    pub(crate) fn is_broken(&self, name: &str) -> bool {
        self.broken.iter().any(|b| b == name)
    }
}
