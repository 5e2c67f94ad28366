//! The address plan: `--app-prefix` gives each application a subnet of that size (a /22 holds
//! a thousand instances), its instances serve through the data plane from there, and a daemon
//! started later with another plan while the application exists refuses to start and names the
//! flags of the one its subnet was cut under. Neighbour entries are permanent on both sides
//! of an instance's link, so that a thousand instances do not fill the kernel's neighbour
//! table, which every network namespace shares.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;

fn manifest(port: u16) -> String {
    format!(
        r#"
app = "wide"

[services.web]
image = "host"
command = ["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"]
ports = [{{ port = 8000, protocol = "http", publish = {port} }}]
health = {{ http = "/", interval = "200ms" }}
replicas = 2
stop_signal = "KILL"
"#
    )
}

#[test]
fn an_application_gets_a_subnet_of_the_plan_size_and_a_daemon_with_another_plan_refuses_to_start() {
    let p = Platform::new();
    let port = p.port(0);
    let file = p.manifest("wide", &manifest(port));
    let with_prefix = |prefix: &str, args: &[&str]| {
        p.command()
            .env("PARACLOUD_APP_PREFIX", prefix)
            .args(args)
            .output()
            .unwrap()
    };
    let up = with_prefix("22", &["up", "-f", file.to_str().unwrap()]);
    assert!(
        up.status.success(),
        "up: {}\n{}",
        String::from_utf8_lossy(&up.stderr),
        p.daemon_log()
    );
    let ps = p.wait_ps(
        "wide",
        Duration::from_secs(30),
        "two ready instances",
        |ps| ps.len() == 2 && ps.iter().all(|i| i["state"] == "running"),
    );
    let slot_pool = p.subnet();
    let pool_base = slot_pool.trim_end_matches("/16");
    for instance in &ps {
        let address: Ipv4Addr = field(instance, "address").parse().unwrap();
        let network = ipnet::Ipv4Net::new(address, 22).unwrap().trunc();
        assert_eq!(
            network.to_string(),
            format!("{pool_base}/22"),
            "{instance}: the first /22 of the pool"
        );
    }
    let (status, _) = http_get(port, "/").expect("the published port answers");
    assert_eq!(status, 200);

    let network = u32::from(pool_base.parse::<Ipv4Addr>().unwrap());
    let gateway = Ipv4Addr::from(network + 1);
    let bridge = format!("pc{network:08x}");
    let host_side = neighbours(None, &bridge);
    for instance in &ps {
        let address = field(instance, "address");
        assert!(
            host_side
                .lines()
                .any(|l| l.starts_with(&format!("{address} "))
                    && l.trim_end().ends_with("PERMANENT")),
            "the host knows {address} for good: {host_side}"
        );
        let inside = neighbours(instance["pid"].as_i64(), "eth0");
        let bridge_side: Vec<&str> = inside
            .lines()
            .filter(|l| l.contains("lladdr 02:50:") && l.trim_end().ends_with("PERMANENT"))
            .collect();
        assert_eq!(
            bridge_side.len(),
            15,
            "the gateway and the 14 service addresses: {inside}"
        );
        assert!(
            bridge_side
                .iter()
                .any(|l| l.starts_with(&format!("{gateway} "))),
            "{inside}"
        );
    }

    terminate(p.daemon_pid().expect("the daemon runs"));
    let refused = with_prefix("24", &["ps", "-a", "wide"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(&format!(
            "the applications of this state root have subnets cut from {slot_pool} in /22, and this daemon was started with {slot_pool} in /24: start it with `--subnet {slot_pool} --app-prefix 22` as before"
        )),
        "{said}"
    );

    let too_wide = with_prefix("21", &["ps", "-a", "wide"]);
    let said = String::from_utf8_lossy(&too_wide.stderr);
    assert!(
        said.contains("--app-prefix 21: an application subnet of /21 cannot be used")
            && said.contains("at most 1,024 ports"),
        "{said}"
    );

    let again = with_prefix("22", &["ps", "-a", "wide", "-o", "json"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let ps = p.wait_ps(
        "wide",
        Duration::from_secs(30),
        "the instances adopted",
        |ps| ps.len() == 2 && ps.iter().all(|i| i["state"] == "running"),
    );
    assert_eq!(ps.len(), 2);
    assert_eq!(http_get(port, "/").map(|(s, _)| s), Ok(200));

    let down = with_prefix("22", &["down", "-a", "wide"]);
    assert!(down.status.success());
    terminate(p.daemon_pid().expect("the daemon runs"));
    let after = with_prefix("24", &["ps", "-o", "json"]);
    assert!(
        after.status.success(),
        "with no application left the plan may change: {}",
        String::from_utf8_lossy(&after.stderr)
    );
}

/// `ip neigh show dev DEV`, on the host or in the network namespace of `pid`.
fn neighbours(pid: Option<i64>, dev: &str) -> String {
    let mut command = match pid {
        Some(pid) => {
            let mut c = std::process::Command::new("nsenter");
            c.args(["-t", &pid.to_string(), "-n", "ip"]);
            c
        }
        None => std::process::Command::new("ip"),
    };
    let out = command
        .args(["neigh", "show", "dev", dev])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_daemon_refuses_a_pool_in_the_loopback_or_another_special_range() {
    let p = Platform::new();
    for (pool, range) in [
        ("127.0.0.0/16", "127.0.0.0/8, the loopback range"),
        ("169.254.0.0/16", "169.254.0.0/16, the link-local range"),
    ] {
        let out = p
            .command()
            .args(["daemon", "--subnet", pool])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{pool} was taken");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!("--subnet {pool}: the pool overlaps {range}"))
                && said.contains("give a private range such as 10.213.0.0/16"),
            "{said}"
        );
        assert!(p.daemon_pid().is_none(), "no daemon runs after {pool}");
    }
}
