//! `paracloud daemon --install`: the systemd unit that keeps a server's daemon running.

use std::path::Path;

use crate::cli::DaemonArgs;

/// The unit running the daemon of `root` with `daemon`'s settings. `Restart=always` brings it
/// back after any end; `KillMode=process` ends only the daemon on a stop or restart: the data
/// plane and the instances run on (they are in cgroups of their own) and the next daemon
/// re-adopts them, as after a crash.
pub fn unit(
    exe: &Path,
    root: &Path,
    daemon: &DaemonArgs,
    listen: Option<std::net::SocketAddr>,
) -> String {
    let quoted = |path: &Path| format!("\"{}\"", path.display().to_string().replace('"', "\\\""));
    format!(
        "[Unit]
Description=Paracloud daemon for {root}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe} --root {root_arg} --cgroup-parent {cgroup} --subnet {subnet} --app-prefix {app_prefix} daemon{listen}
Restart=always
RestartSec=1
KillMode=process
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
",
        root = root.display(),
        exe = quoted(exe),
        root_arg = quoted(root),
        cgroup = quoted(Path::new(&daemon.cgroup_parent)),
        subnet = daemon.subnet,
        app_prefix = daemon.app_prefix,
        listen = listen.map(|a| format!(" --listen {a}")).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_restarts_the_daemon_of_its_root_and_spares_the_instances() {
        let daemon = DaemonArgs {
            cgroup_parent: "paracloud".into(),
            subnet: "10.213.0.0/16".parse().unwrap(),
            app_prefix: 24,
        };
        let unit = unit(
            Path::new("/usr/local/bin/paracloud"),
            Path::new("/srv/pc root"),
            &daemon,
            None,
        );
        assert!(unit.contains(
            "ExecStart=\"/usr/local/bin/paracloud\" --root \"/srv/pc root\" --cgroup-parent \"paracloud\" --subnet 10.213.0.0/16 --app-prefix 24 daemon\n"
        ));
        assert!(unit.contains("Restart=always\n"));
        assert!(unit.contains("KillMode=process\n"));
        assert!(unit.contains("WantedBy=multi-user.target\n"));
        let remote = super::unit(
            Path::new("/usr/local/bin/paracloud"),
            Path::new("/srv/pc"),
            &daemon,
            Some("0.0.0.0:8443".parse().unwrap()),
        );
        assert!(
            remote.contains(" daemon --listen 0.0.0.0:8443\n"),
            "{remote}"
        );
    }
}
