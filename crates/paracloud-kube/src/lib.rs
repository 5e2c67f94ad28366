//! An application on Kubernetes as plain data: the objects a manifest renders to (`render`), the
//! `ParacloudApp` custom resource (`resource`), the operator's decisions, made from what it
//! observes (`reconcile`), and the autoscaler's pods and changes (`autoscale`). No I/O and no clock: the operator and the CLI bring both.

pub mod access;
pub mod autoscale;
pub mod dataplane;
pub mod install;
pub mod migration;
pub mod names;
pub mod object;
pub mod paci;
pub mod reconcile;
pub mod render;
pub mod resource;

pub use object::{to_json_list, to_yaml, Object, ObjectKey};
pub use render::{
    render, HostFile, HostFiles, NoHostFiles, Problem, RenderError, RenderOptions, Rendered,
};
pub use resource::{
    ParacloudApp, ParacloudAppSpec, ParacloudAppStatus, ServiceScale, ServiceStatus,
};
