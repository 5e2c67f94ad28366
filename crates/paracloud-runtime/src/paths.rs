//! Where an instance's own files lie in its instance directory: the overlay's directories and
//! the generated /etc files.

use std::path::{Path, PathBuf};

use crate::{EtcFile, InstanceConfig};

/// Where the generated /etc file `file` lies in the instance directory (see
/// [`crate::etc_file_path`]).
pub(crate) fn etc_file_path(instance_dir: &Path, file: EtcFile) -> PathBuf {
    instance_dir.join(match file {
        EtcFile::Hosts => "etc-hosts",
        EtcFile::Hostname => "etc-hostname",
        EtcFile::ResolvConf => "etc-resolv.conf",
    })
}

/// The directories of the instance directory that sandbox-init makes first (a restore's
/// writable layer is a copy the daemon made before).
pub(crate) fn instance_dirs(cfg: &InstanceConfig) -> [PathBuf; 3] {
    [
        cfg.dir.join("rootfs"),
        cfg.dir.join("upper"),
        cfg.dir.join("work"),
    ]
}
