//! How the API refuses a request: a status and an [`ErrorBody`], from every error a handler
//! meets. Shared by the handlers of `api` and `debug`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use paracloud_api::ErrorBody;

use crate::commands::{status_of, CommandError};
use crate::images::ImageError;

#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                diagnostics: vec![],
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<paracloud_state::Error> for ApiError {
    fn from(e: paracloud_state::Error) -> Self {
        let status = match e {
            paracloud_state::Error::NoApp(_) | paracloud_state::Error::NoService { .. } => {
                StatusCode::NOT_FOUND
            }
            paracloud_state::Error::AddressesExhausted { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<paracloud_command::Refusal> for ApiError {
    fn from(refusal: paracloud_command::Refusal) -> Self {
        ApiError::new(status_of(&refusal), refusal.message)
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Refused(refusal) => refusal.into(),
            CommandError::State(e) => e.into(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the query string is not valid: {}", e.body_text()),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the path is not valid: {}; see the route's parameters in /v1/openapi.json",
                e.body_text()
            ),
        )
    }
}

/// The largest request body a route reads (a manifest, a command): 2 MiB.
pub const MAX_BODY: usize = 2 << 20;

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than the {} bytes the API takes",
                    MAX_BODY
                ),
            );
        }
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid: {}", e.body_text()),
        )
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let status = if e.not_found {
            StatusCode::NOT_FOUND
        } else if e.bad_request {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, e.message)
    }
}

impl From<crate::capsules::CapsuleError> for ApiError {
    fn from(e: crate::capsules::CapsuleError) -> Self {
        use crate::capsules::CapsuleError;
        let status = match &e {
            CapsuleError::NotFound(_) => StatusCode::NOT_FOUND,
            CapsuleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CapsuleError::Refused(_) => StatusCode::FORBIDDEN,
            CapsuleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CapsuleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}
