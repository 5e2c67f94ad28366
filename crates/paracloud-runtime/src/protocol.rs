//! Messages from the daemon to sandbox-init over the config pipe: length-prefixed JSON.
//!
//! The other direction is the error pipe: sandbox-init writes a plain message there when the
//! sandbox fails, and the pipe closing without a message means the command was exec'd.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::InstanceConfig;

/// What the daemon tells sandbox-init, in this order: the config at once (the root filesystem is
/// built meanwhile), then `Go` once the veth is in place.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToInit {
    Config {
        config: Box<InstanceConfig>,
        /// Cgroup files sandbox-init writes "0" into first, to join the instance's cgroups
        /// that clone3 did not place it in.
        join_cgroups: Vec<PathBuf>,
        /// Instead of the command, restore a checkpoint into the new namespaces.
        restore: Option<RestorePlan>,
        /// Note the end of each step and write the notes to the instance directory before the
        /// exec (see [`crate::start_steps`]).
        #[serde(default)]
        record_steps: bool,
    },
    Go,
}

/// What sandbox-init needs to exec `criu restore` (sent with its config).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RestorePlan {
    pub criu: PathBuf,
    pub images: PathBuf,
    pub log_keys: Vec<String>,
    /// (mount point, source in the successor).
    pub binds: Vec<(String, PathBuf)>,
}

/// Larger messages are refused rather than allocated.
const MAX_MESSAGE: u32 = 16 << 20;

pub(crate) fn write_message(w: &mut impl Write, message: &ToInit) -> io::Result<()> {
    w.write_all(&frame(message)?)
}

/// `message` as it goes on the pipe: its length (u32, little-endian), then its JSON.
pub(crate) fn frame(message: &ToInit) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

pub(crate) fn read_message(r: &mut impl Read) -> io::Result<ToInit> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes from the daemon is too large"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_in_order() {
        let mut buf = Vec::new();
        write_message(&mut buf, &ToInit::Go).unwrap();
        write_message(&mut buf, &ToInit::Go).unwrap();
        let mut r = &buf[..];
        assert!(matches!(read_message(&mut r).unwrap(), ToInit::Go));
        assert!(matches!(read_message(&mut r).unwrap(), ToInit::Go));
        assert_eq!(
            read_message(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn oversized_frames_are_refused() {
        let frame = (MAX_MESSAGE + 1).to_le_bytes();
        assert!(read_message(&mut &frame[..]).is_err());
    }
}
