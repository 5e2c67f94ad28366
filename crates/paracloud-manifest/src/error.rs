//! Diagnostics: what is wrong in a manifest, where it is, and how to fix it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem found in a manifest, with its position and a way to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Diagnostic {
    /// The manifest as shown to the user, such as `examples/shop/paracloud.toml`.
    pub file: String,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column (in characters) of the offending key or value.
    pub column: usize,
    /// Dotted path of the field, such as `services.api.ports[0].publish`; empty for TOML syntax
    /// errors, which belong to no field.
    pub field: String,
    /// What is wrong, in lower case without a trailing period.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// A manifest that cannot be used: every problem found, in source order.
///
/// A TOML syntax error stops parsing, so it comes alone; semantic problems are all reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", render(.diagnostics))]
pub struct ManifestError {
    pub diagnostics: Vec<Diagnostic>,
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(Diagnostic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
