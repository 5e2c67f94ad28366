//! Who asks, and what each may ask for: the one place where that is decided.

use paracloud_reconcile::InstanceKey;

use paracloud_state::Role;

use crate::{Command, Refusal, RefusalKind};

/// Who asks for a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// A user of this machine over the API socket, known by its peer credentials. The socket
    /// lives in the state root, which only root can enter: a local caller may do everything.
    Local { uid: Option<u32> },
    /// A remote client, by the name and role of its token.
    Token { name: String, role: Role },
    /// An instance, through its own PaCI socket.
    Instance(InstanceKey),
    /// The application's autoscaler, running the manifest's policy.
    Autoscaler { policy: String },
    /// The scale-to-zero follower: starts services a request waits for, stops idle ones.
    Follower,
    /// A capsule schedule of the manifest (`[schedules.NAME]`).
    Schedule { name: String },
    /// A task farm running a batch: sets its own workers.
    TaskFarm { batch: u64 },
}

impl Caller {
    /// How the caller is named in events and capsule history.
    pub fn describe(&self) -> String {
        match self {
            Caller::Local { uid: Some(uid) } => format!("uid {uid}"),
            Caller::Local { uid: None } => "a local user".into(),
            Caller::Token { name, .. } => format!("token {name}"),
            Caller::Instance(key) => format!("{} through PaCI", key.name()),
            Caller::Autoscaler { policy } => format!("autoscaler {policy}"),
            Caller::Follower => "scale to zero".into(),
            Caller::Schedule { name } => format!("schedule {name}"),
            Caller::TaskFarm { batch } => format!("task farm batch {batch}"),
        }
    }
}

/// Whether `caller` may ask for `command`, before anything about the state is looked at (a
/// caller learns nothing of what it may not touch).
pub fn authorize(caller: &Caller, command: &Command) -> Result<(), Refusal> {
    let allowed = match caller {
        Caller::Local { .. } => true,
        Caller::Token { role, .. } => match role {
            Role::Admin => true,
            Role::Operator => matches!(
                command,
                Command::Scale { .. }
                    | Command::Restart { .. }
                    | Command::Migrate { .. }
                    | Command::RunCapsule { writes: false, .. }
                    | Command::CancelBatch { .. }
            ),
            Role::Viewer => false,
        },
        // An instance speaks for itself and its own application alone: its weight, and
        // instances of its application's services within the manifest's bounds (checked
        // against the state in `decide`).
        Caller::Instance(key) => match command {
            Command::SetWeight { instance, .. } => instance == key,
            Command::Scale {
                app,
                cpu: None,
                replicas: Some(_),
                ..
            } => *app == key.app,
            _ => false,
        },
        Caller::Autoscaler { .. } | Caller::Follower => matches!(command, Command::Scale { .. }),
        Caller::Schedule { .. } => matches!(command, Command::RunCapsule { .. }),
        Caller::TaskFarm { .. } => matches!(command, Command::Scale { cpu: None, .. }),
    };
    if allowed {
        return Ok(());
    }
    let message = match caller {
        Caller::Token { name, role } => format!(
            "token {name} has the {} role, which may not {}: ask an admin for a token with {}",
            role.name(),
            command.verb(),
            match command {
                Command::Scale { .. }
                | Command::Restart { .. }
                | Command::Migrate { .. }
                | Command::RunCapsule { writes: false, .. }
                | Command::CancelBatch { .. } => "the operator role",
                _ => "the admin role",
            }
        ),
        Caller::Instance(key) => format!(
            "{} may not {} through PaCI: an instance sets its own weight and asks for instances of its application's services",
            key.name(),
            command.verb()
        ),
        other => format!("{} may not {}", other.describe(), command.verb()),
    };
    Err(Refusal::new(RefusalKind::Forbidden, message))
}

/// Whether `caller` may use a route of the API that needs at least `least` (reads need a
/// viewer; what acts on the host, such as builds, imports and debug shells, needs an admin). A
/// command sent through a route is then authorized again, for what it asks ([`authorize`]).
pub fn authorize_route(caller: &Caller, least: Role, what: &str) -> Result<(), Refusal> {
    match caller {
        Caller::Local { .. } => Ok(()),
        Caller::Token { role, .. } if *role >= least => Ok(()),
        Caller::Token { name, role } => Err(Refusal::new(
            RefusalKind::Forbidden,
            format!(
                "token {name} has the {} role, which may not {what}: ask an admin for a token with the {} role",
                role.name(),
                least.name()
            ),
        )),
        other => Err(Refusal::new(
            RefusalKind::Forbidden,
            format!("{} may not {what}", other.describe()),
        )),
    }
}
