//! The query strings of the routes that take one, as the daemon reads them: one type each, so
//! that the OpenAPI description lists exactly the parameters the handlers accept.

use serde::Deserialize;
use utoipa::IntoParams;

/// The query of a route that takes none.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoQuery;

impl IntoParams for NoQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        Vec::new()
    }
}

/// `DELETE /v1/apps/{app}`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownQuery {
    /// Remove the application's volumes too.
    #[serde(default)]
    pub volumes: bool,
}

/// A listing of one application or of all: `GET /v1/instances`, `GET /v1/stats`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AppQuery {
    /// The application; every one when left out.
    pub app: Option<String>,
}

/// `GET /v1/apps/{app}/logs`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// A service (`web`) or an instance (`web.1`); every instance of the application when left out.
    pub target: Option<String>,
    /// The last lines to send first (default 100).
    pub tail: Option<usize>,
    /// Keep the answer open and send the lines as they come.
    #[serde(default)]
    pub follow: bool,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The application; every one when left out.
    pub app: Option<String>,
    /// Only events after this one (default: from the start).
    #[serde(default)]
    pub after: i64,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

/// An image of the store, by name: `GET /v1/images/inspect`, `DELETE /v1/images`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImageQuery {
    /// A reference (`web:1`, `docker.io/library/busybox:1`) or a digest.
    pub name: String,
}

/// `GET /v1/capsules`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CapsulesQuery {
    /// The application whose own capsules are listed beside the built-in ones.
    pub app: Option<String>,
}

/// `GET /v1/capsules/history`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The application; every one when left out.
    pub app: Option<String>,
    /// At most this many runs (default 50, at most 10 000).
    pub limit: Option<u32>,
}

/// `GET /v1/capsules/debug`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DebugQuery {
    /// The instance, such as `web.1`.
    pub instance: String,
    /// The application, when instance names are not unique.
    pub app: Option<String>,
    /// The command as a JSON array of strings; the capsule's interactive shell when left out.
    pub command: Option<String>,
    /// The terminal's rows.
    pub rows: Option<u16>,
    /// The terminal's columns.
    pub cols: Option<u16>,
}

/// The query of `GET /v1/capsules/debug/terminal`: the debug session as a WebSocket.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TerminalQuery {
    /// The instance, such as `web.1`.
    pub instance: String,
    /// The application, when instance names are not unique.
    pub app: Option<String>,
    /// The terminal's rows.
    pub rows: Option<u16>,
    /// The terminal's columns.
    pub cols: Option<u16>,
}
