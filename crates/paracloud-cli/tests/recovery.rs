//! The platform comes back by itself after a crash of both its processes: a data plane that
//! died while the daemon was down is started again by the next daemon, which any command
//! starts.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Found by killing the data plane while the daemon was down: the published port stayed dead
/// (50 of 50 requests failed over 5 s) until someone ran `up` or `paracloud daemon`.
#[test]
fn regression_a_data_plane_dead_while_the_daemon_was_down_serves_again_after_any_command() {
    let p = Platform::new();
    let manifest = p.shop();
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let (daemon, dataplane) = (p.daemon_pid().unwrap(), p.dataplane_pid().unwrap());
    kill9(daemon);
    kill9(dataplane);
    while alive(daemon) || alive(dataplane) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(http_get(p.port(0), "/").is_err(), "nothing serves the port");

    // Any command: `ps` starts the daemon, which starts the data plane and re-adopts the
    // instances, which never stopped.
    let ps = p.ok(&["ps", "-a", "shop"]);
    assert!(ps.contains("running"), "{ps}");
    assert_ne!(p.daemon_pid(), Some(daemon));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(p.port(0), "/") {
            Ok((200, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "the published port does not serve again: {other:?}\n{}",
                p.daemon_log()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let new_dataplane = p.dataplane_pid().unwrap();
    assert_ne!(new_dataplane, dataplane);
    assert!(alive(new_dataplane));
    let events = p.events("shop");
    assert!(events.contains("re-adopted"), "{events}");
}
