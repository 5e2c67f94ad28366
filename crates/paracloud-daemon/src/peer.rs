//! Who calls the API: the peer credentials of its Unix socket connection.

#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

impl Peer {
    /// The caller of the commands it sends: a user of this machine.
    pub fn caller(&self) -> paracloud_command::Caller {
        paracloud_command::Caller::Local { uid: self.uid }
    }

    /// The user's name (`root`), or `uid N` when it has none.
    pub fn who(&self) -> String {
        match self.uid {
            None => "unknown".into(),
            Some(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {uid}")),
        }
    }
}
