//! Errors as the real server answers them: a `Status` object with its HTTP code and reason.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::resources::ResourceInfo;

/// A failed request, answered as a `meta/v1` `Status` (which kube-rs reads into
/// `kube::Error::Api`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError {
            code,
            reason,
            message,
            details: json!({}),
        }
    }

    fn about(mut self, info: &ResourceInfo, name: &str) -> Self {
        self.details = json!({"name": name, "group": info.group, "kind": info.plural});
        self
    }

    /// What the real server answers for a path it does not serve.
    pub fn no_such_resource() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    }

    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", info.qualified()),
        )
        .about(info, name)
    }

    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", info.qualified()),
        )
        .about(info, name)
    }

    /// A stale resourceVersion or a failed precondition.
    pub fn conflict(info: &ResourceInfo, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                info.qualified()
            ),
        )
        .about(info, name)
    }

    pub fn modified(info: &ResourceInfo, name: &str) -> Self {
        Self::conflict(
            info,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    pub fn invalid(kind: &str, name: &str, message: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {message}"),
        )
    }

    /// A JSON patch that does not apply: 422 with the patch library's message, as the real
    /// server's generic response for it.
    pub fn unprocessable(message: String) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn method_not_allowed(what: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {what}"),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"))
    }

    /// Too old a resourceVersion for a watch: history before it is compacted.
    pub fn expired(asked: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {asked} ({oldest})"),
        )
    }

    pub fn forbidden(message: String) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// The kubelet of a pod's node cannot be reached (for `exec`): the real server passes its
    /// proxy's dial error on as a plain error, which is a 500 with no reason.
    pub fn backend_unreachable(why: &str) -> Self {
        Self::new(500, "", format!("error dialing backend: {why}"))
    }

    /// A server-side apply that other managers' fields stop: `(owner, field)` pairs, the
    /// message grouped by owner as the real server writes it.
    pub fn apply_conflict(causes: Vec<(String, String)>) -> Self {
        let message = match causes.as_slice() {
            [(who, field)] => format!("Apply failed with 1 conflict: conflict with {who}: {field}"),
            _ => {
                let mut owners: Vec<&String> = causes.iter().map(|(who, _)| who).collect();
                owners.sort();
                owners.dedup();
                let lines: Vec<String> = owners
                    .iter()
                    .flat_map(|owner| {
                        std::iter::once(format!("conflicts with {owner}:")).chain(
                            causes
                                .iter()
                                .filter(|(who, _)| who == *owner)
                                .map(|(_, field)| format!("- {field}")),
                        )
                    })
                    .collect();
                format!(
                    "Apply failed with {} conflicts: {}",
                    causes.len(),
                    lines.join("\n")
                )
            }
        };
        let mut error = Self::new(409, "Conflict", message);
        error.details = json!({"causes": causes
            .iter()
            .map(|(who, field)| json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {who}"),
                "field": field,
            }))
            .collect::<Vec<_>>()});
        error
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        });
        // An unknown reason is left out, as the real server leaves it out.
        if self.reason.is_empty() {
            if let Some(fields) = status.as_object_mut() {
                fields.remove("reason");
            }
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.status())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_conflicts_are_grouped_by_owner() {
        let error = ApiError::apply_conflict(vec![
            ("\"b\"".into(), ".spec.y".into()),
            ("\"a\" using apps/v1 at t".into(), ".spec.x".into()),
            ("\"b\"".into(), ".spec.z".into()),
        ]);
        assert_eq!(
            error.message,
            "Apply failed with 3 conflicts: conflicts with \"a\" using apps/v1 at t:\n- .spec.x\nconflicts with \"b\":\n- .spec.y\n- .spec.z"
        );
        let status = error.status();
        assert_eq!(status["code"], 409);
        assert_eq!(
            status["details"]["causes"][0]["message"],
            "conflict with \"b\""
        );
    }
}
