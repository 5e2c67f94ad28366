//! Disk space as a filler meets it: an instance with `resources.disk` writes until its own
//! filesystem is full and the host's disk is untouched; an instance without one fills a small
//! state root, and the platform can still stop it, scale it down and take the application down.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;

/// Writes 100M into the root, then reports how that went and waits.
fn filler(resources: &str) -> String {
    format!(
        r#"
app = "disk"

[services.filler]
image = "host"
command = ["/bin/sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=100 2>&1; echo dd-exit=$?; exec sleep 100000"]
stop_signal = "KILL"
{resources}
"#
    )
}

fn filler_log(p: &Platform) -> String {
    let path = p.root().join("instances/disk/filler.1/output.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains("dd-exit=") || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_disk_limit_stops_a_filler_at_its_size() {
    let p = Platform::new();
    let manifest = p.manifest("paracloud.toml", &filler("resources = { disk = \"32M\" }"));
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let log = filler_log(&p);
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("dd-exit=1"), "{log}");
    // What it wrote lies in its own image, no bigger than the limit.
    let image = p.root().join("instances/disk/filler.1/disk.img");
    let used = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(used <= 32 << 20, "the image holds {used} bytes");
    // Stopped, the instance leaves no mount and no loop device behind.
    p.ok(&["scale", "-a", "disk", "filler=0"]);
    p.wait_ps("disk", Duration::from_secs(20), "the filler gone", |ps| {
        ps.is_empty()
    });
    let loops = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!loops.contains(image.to_str().unwrap()), "{loops}");
}

#[test]
fn a_full_state_root_still_lets_the_platform_stop_and_remove() {
    let p = Platform::new();
    p.on_small_filesystem("64m");
    let manifest = p.manifest("paracloud.toml", &filler(""));
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    // Its log lies on the full filesystem too: watch the filesystem instead.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let fs = nix::sys::statvfs::statvfs(p.root()).unwrap();
        let free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
        if free < 1 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the root never filled"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Events, records and commands still go through, on the database's reserve.
    p.ok(&["scale", "-a", "disk", "filler=0"]);
    p.wait_ps("disk", Duration::from_secs(20), "the filler gone", |ps| {
        ps.is_empty()
    });
    p.ok(&["down", "-a", "disk"]);
    let left = p.ok(&["ps", "-A", "-o", "json"]);
    assert!(!left.contains("\"disk\""), "{left}");
    assert!(alive(p.daemon_pid().unwrap()), "{}", p.daemon_log());
}

#[test]
fn the_roots_default_disk_bounds_every_instance_without_its_own() {
    let p = Platform::new();
    std::fs::write(p.root().join("daemon.toml"), "default_disk = \"32M\"\n").unwrap();
    let manifest = p.manifest("paracloud.toml", &filler(""));
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let log = filler_log(&p);
    assert!(log.contains("No space left on device"), "{log}");
    assert!(p.root().join("instances/disk/filler.1/disk.img").exists());
}

#[test]
fn bad_settings_stop_the_daemon_with_their_location() {
    let p = Platform::new();
    std::fs::write(p.root().join("daemon.toml"), "\ndefault_disk = \"lots\"\n").unwrap();
    let err = p.fails(&["ps"]);
    assert!(
        err.contains("daemon.toml: line 2: default_disk: invalid memory size \"lots\""),
        "{err}"
    );
}

/// Two instances share a size-limited volume; together they cannot write more than its size,
/// and an unlimited volume beside it is not touched by what fills the limited one.
const VOLUMES: &str = r#"
app = "vols"

[volumes.small]
size = "24M"

[services.filler]
image = "host"
replicas = 2
volumes = ["small:/small", "big:/big"]
command = ["/bin/sh", "-c", "dd if=/dev/zero of=/small/$PARACLOUD_INSTANCE bs=1M count=20 2>&1; echo dd-exit=$?; echo kept > /big/$PARACLOUD_INSTANCE; exec sleep 100000"]
stop_signal = "KILL"
"#;

#[test]
fn a_volume_size_limits_what_its_instances_write_together() {
    let p = Platform::new();
    let manifest = p.manifest("paracloud.toml", VOLUMES);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let small = p.root().join("volumes/vols/small");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let logs = loop {
        let logs: Vec<String> = ["filler.1", "filler.2"]
            .iter()
            .map(|i| {
                std::fs::read_to_string(p.root().join(format!("instances/vols/{i}/output.log")))
                    .unwrap_or_default()
            })
            .collect();
        if logs.iter().all(|l| l.contains("dd-exit=")) {
            break logs;
        }
        assert!(std::time::Instant::now() < deadline, "{logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // 2 × 20M do not fit in 24M: one of them (at least) was told the volume is full.
    assert!(
        logs.iter().any(|l| l.contains("No space left on device")),
        "{logs:?}"
    );
    let written: u64 = std::fs::read_dir(&small)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum();
    assert!(written <= 24 << 20, "the volume holds {written} bytes");
    // A filesystem of its own, closed to others, holding only what the instances wrote.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts.contains(small.to_str().unwrap()), "{mounts}");
    let mode = std::fs::metadata(&small).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(!small.join("lost+found").exists());
    // The other volume got what each instance wrote after.
    let big = p.root().join("volumes/vols/big");
    assert_eq!(std::fs::read_dir(&big).unwrap().count(), 2);

    // `down` keeps the volume's data, unmounted; `up` finds it again; `down --volumes` removes
    // it, image and all.
    p.ok(&["down", "-a", "vols"]);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(small.to_str().unwrap()), "{mounts}");
    assert!(p.root().join("volumes/vols/small.img").exists());
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    assert!(
        std::fs::read_dir(&small).unwrap().count() >= 1,
        "the data is there again"
    );
    // A changed size is refused: the data would not fit, or would be lost.
    let bigger = p.manifest(
        "paracloud.toml",
        &VOLUMES
            .replace("24M", "48M")
            .replace("replicas = 2", "replicas = 3"),
    );
    let out = p.run(&["up", "-f", bigger.to_str().unwrap(), "--timeout", "10s"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("its size cannot change"), "{said}");
    p.ok(&["down", "-a", "vols", "--volumes"]);
    assert!(!p.root().join("volumes/vols").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(small.to_str().unwrap()), "{mounts}");
}
