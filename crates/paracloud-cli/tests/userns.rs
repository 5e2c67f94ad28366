//! Instances as unprivileged users of the host, by default: root inside an instance is a host
//! id of its application's range, its image and volumes keep their owners inside through
//! idmapped mounts, and its exec health checks run as it. A service with `userns = false` or
//! `migrate = "criu"` runs with host ids, and so does every one with `userns = false` in the
//! root's daemon.toml.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;

/// The first host id of the range of the application on the first subnet.
const BASE: u32 = 1 << 30;

fn manifest() -> String {
    r#"
app = "uns"

[services.host]
image = "host"
command = ["/bin/sh", "-c", "echo inside=$(id -u); echo made > /made-by-root; echo data > /data/by-root; cat /etc/shadow >/dev/null 2>&1 || echo shadow-hidden; ls -ln /usr/bin/env | cut -d' ' -f3 | sed 's/^/usr-owner=/'; exec python3 -m http.server 80"]
stop_signal = "KILL"
volumes = [{ source = "data", target = "/data" }]
health = { exec = ["/bin/sh", "-c", 'test $(id -u) = 0 && python3 -c "import urllib.request as u; u.urlopen(\"http://127.0.0.1:80/\")"'], interval = "200ms" }

[services.layered]
image = "busybox:1"
command = ["/bin/sh", "-c", "echo inside=$(id -u); echo appended >> /etc/passwd && echo copied-up; ls -ln /bin/busybox | awk '{print \"bin-owner=\" $3}'; exec sleep 100000"]
stop_signal = "KILL"

[services.hostids]
image = "host"
command = ["sleep", "100000"]
stop_signal = "KILL"
userns = false

[services.criu]
image = "host"
command = ["sleep", "100000"]
stop_signal = "KILL"
migrate = "criu"
"#
    .to_string()
}

fn log_of(p: &Platform, instance: &str, needle: &str) -> String {
    let path = p
        .root()
        .join("instances/uns")
        .join(instance)
        .join("output.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} never came: {log}\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_uid(pid: i64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn root_in_an_instance_is_an_unprivileged_host_user() {
    let p = Platform::new();
    p.busybox_image();
    let manifest = p.manifest("paracloud.toml", &manifest());
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);

    // Root inside, with the host's and the image's files owned as they are on disk.
    let host = log_of(&p, "host.1", "usr-owner=");
    assert!(host.contains("inside=0\n"), "{host}");
    assert!(host.contains("usr-owner=0\n"), "{host}");
    assert!(host.contains("shadow-hidden"), "{host}");
    let layered = log_of(&p, "layered.1", "bin-owner=");
    assert!(layered.contains("inside=0\n"), "{layered}");
    assert!(layered.contains("copied-up\n"), "{layered}");
    assert!(layered.contains("bin-owner=0\n"), "{layered}");

    // On the host, the same processes and files belong to the application's range.
    // `running`, not `unready`: host.1's exec check passed, as root inside, on port 80.
    let ps = p.wait_ps("uns", Duration::from_secs(30), "all running", |ps| {
        ps.len() == 4 && ps.iter().all(|i| field(i, "state") == "running")
    });
    for (name, pid) in pids(&ps) {
        let uid = host_uid(pid);
        if ["hostids.1", "criu.1"].contains(&name.as_str()) {
            assert_eq!(uid, 0, "{name} runs with host ids");
            continue;
        }
        assert!(
            (BASE..BASE + 256 * 65536).contains(&uid) && (uid - BASE).is_multiple_of(65536),
            "{name} runs as host uid {uid}"
        );
    }
    // `describe` says which services run with host ids, and why.
    let why = |service: &str| -> Option<String> {
        let view: serde_json::Value =
            serde_json::from_str(&p.ok(&["describe", "-a", "uns", service, "-o", "json"])).unwrap();
        view["host_ids"].as_str().map(str::to_owned)
    };
    assert_eq!(why("layered"), None);
    assert!(why("hostids").unwrap().contains("`userns = false`"));
    assert!(why("criu").unwrap().contains("CRIU"));
    let table = p.ok(&["describe", "-a", "uns", "layered"]);
    assert!(table.contains("a user namespace per instance"), "{table}");

    let made = p.root().join("instances/uns/host.1/upper/made-by-root");
    assert!(made.metadata().unwrap().uid() >= BASE, "{made:?}");
    // A volume is an idmapped mount: what root inside writes is root's on disk, as the files
    // it finds there are root's inside (the volume lies in the closed state root).
    let volume = p.root().join("volumes/uns/data/by-root");
    assert_eq!(volume.metadata().unwrap().uid(), 0);
}

#[test]
fn the_settings_can_run_every_instance_with_host_ids() {
    let p = Platform::new();
    std::fs::write(p.root().join("daemon.toml"), "userns = false\n").unwrap();
    let manifest = p.manifest(
        "paracloud.toml",
        "app = \"uns\"\n[services.plain]\nimage = \"host\"\ncommand = [\"sleep\", \"100000\"]\nstop_signal = \"KILL\"\n",
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let ps = p.ps("uns");
    let (_, pid) = pids(&ps).into_iter().next().unwrap();
    assert_eq!(host_uid(pid), 0);
    let table = p.ok(&["describe", "-a", "uns", "plain"]);
    assert!(
        table.contains("the host's: user namespaces are off for this daemon"),
        "{table}"
    );
}
