//! The catalogue's PostgreSQL as an application meets it: `catalog = "postgres"` in a manifest,
//! real servers from this machine's package (the primary and its streaming replicas), reached
//! with psql through the write and read addresses the data plane serves.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const PASSWORD: &str = "catalogue-test-password";

fn manifest(replicas: u32) -> String {
    format!(
        r#"app = "pg"

[services.db]
catalog = "postgres"
replicas = {replicas}
storage = "256M"
env = {{ POSTGRES_PASSWORD = "{PASSWORD}", POSTGRES_DB = "shop" }}
"#
    )
}

fn up(p: &Platform, text: &str) {
    let path = p.manifest("pg", text);
    p.ok(&["up", "-f", path.to_str().unwrap()]);
}

fn service_address(p: &Platform, service: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&p.ok(&["describe", "-a", "pg", service, "-o", "json"])).unwrap();
    v["address"].as_str().unwrap().to_owned()
}

/// The addresses of a service's running instances.
fn instance_addresses(p: &Platform, service: &str) -> Vec<String> {
    p.ps("pg")
        .iter()
        .filter(|i| field(i, "service") == service)
        .map(|i| field(i, "address").split('/').next().unwrap().to_owned())
        .collect()
}

/// One SQL command through psql at `address`: its rows, unaligned, `|` between columns.
fn sql(address: &str, command: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-h", address, "-U", "postgres", "-d", "shop", "-tA"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", command])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql runs (scripts/deps.sh installs postgresql)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[track_caller]
fn sql_ok(address: &str, command: &str) -> String {
    sql(address, command).unwrap_or_else(|e| panic!("{command} at {address}: {e}"))
}

/// Asks `command` at `address` until it answers `wanted`, or fails the test after `timeout`.
#[track_caller]
fn wait_answer(address: &str, command: &str, wanted: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = sql(address, command);
    while last.as_deref() != Ok(wanted) {
        assert!(
            Instant::now() < deadline,
            "{command} at {address} answered {last:?}, not {wanted:?}, for {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        last = sql(address, command);
    }
}

/// One psql session that inserts rows one at a time through an address, each in a transaction
/// of its own, and counts those committed (psql printed `INSERT 0 1`) and those that failed.
struct Writer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    committed: u64,
    failed: u64,
}

impl Writer {
    fn open(address: &str) -> Self {
        let mut child = Command::new("psql")
            .args(["-X", "-h", address, "-U", "postgres", "-d", "shop"])
            .args(["-v", "ON_ERROR_STOP=0"])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            committed: 0,
            failed: 0,
        }
    }

    /// Inserts the next row; false once the session is gone.
    fn insert(&mut self) -> bool {
        let n = self.committed + self.failed + 1;
        if writeln!(self.stdin, "INSERT INTO load VALUES ({n});\n\\echo done").is_err() {
            return false;
        }
        let mut committed = false;
        loop {
            let mut line = String::new();
            match self.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => return false,
                Ok(_) if line.trim() == "INSERT 0 1" => committed = true,
                Ok(_) if line.trim() == "done" => break,
                Ok(_) => {}
            }
        }
        if committed {
            self.committed += 1;
        } else {
            self.failed += 1;
        }
        true
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rows_written_through_the_write_address_are_read_back_through_the_read_address_from_a_replica() {
    let p = Platform::new();
    let catalog = p.ok(&["catalog", "ls"]);
    assert!(
        catalog.contains("postgres") && catalog.contains("ready"),
        "{catalog}"
    );

    up(&p, &manifest(1));
    let write = service_address(&p, "db");
    let read = service_address(&p, "db-read");
    sql_ok(&write, "CREATE TABLE items (n int PRIMARY KEY, name text)");
    sql_ok(
        &write,
        "INSERT INTO items SELECT n, 'item ' || n FROM generate_series(1, 1000) n",
    );
    // The read address balances over the replica and the primary: until a connection lands on
    // the replica (in recovery) with every row, ask again.
    wait_answer(
        &read,
        "SELECT pg_is_in_recovery(), count(*), sum(n) FROM items",
        "t|1000|500500",
        Duration::from_secs(30),
    );
    assert_eq!(
        sql_ok(
            &write,
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        ),
        "1",
        "the primary streams to its replica"
    );
    // A replica takes no writes; the write address reaches the primary alone.
    for _ in 0..5 {
        assert_eq!(sql_ok(&write, "SELECT pg_is_in_recovery()"), "f");
    }

    // The primary's data is on its volume: restarted (stopped first, then started on the same
    // data), it has every row, and its replica follows it again.
    let before = p.ps("pg");
    p.ok(&["restart", "-a", "pg", "db"]);
    let after = p.ps("pg");
    let pid = |ps: &[serde_json::Value], service: &str| {
        ps.iter()
            .find(|i| field(i, "service") == service)
            .map(|i| i["pid"].clone())
    };
    assert_ne!(pid(&before, "db"), pid(&after, "db"), "a new primary");
    assert_eq!(
        pid(&before, "db-read"),
        pid(&after, "db-read"),
        "the same replica"
    );
    assert_eq!(sql_ok(&write, "SELECT count(*) FROM items"), "1000");
    sql_ok(
        &write,
        "INSERT INTO items VALUES (1001, 'after the restart')",
    );
    wait_answer(
        &read,
        "SELECT pg_is_in_recovery(), count(*) FROM items",
        "t|1001",
        Duration::from_secs(30),
    );
    let log = p.ok(&["logs", "-a", "pg", "db"]);
    assert!(
        !log.contains("database system was interrupted"),
        "the old primary shut down cleanly before the new one started:\n{log}"
    );
}

#[test]
fn replicas_added_under_a_constant_write_load_lose_and_fail_nothing() {
    let p = Platform::new();
    up(&p, &manifest(0));
    let write = service_address(&p, "db");
    sql_ok(&write, "CREATE TABLE load (n bigint PRIMARY KEY)");
    // The load's own rows, so that the copy a new replica starts from has something in it.
    let stop = AtomicBool::new(false);
    let (committed, failed) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut writer = Writer::open(&write);
            while !stop.load(Ordering::Relaxed) {
                if !writer.insert() {
                    panic!("the write session ended after {} rows", writer.committed);
                }
            }
            (writer.committed, writer.failed)
        });
        std::thread::sleep(Duration::from_secs(1));
        p.ok(&["scale", "-a", "pg", "db-read=1"]);
        p.ok(&["scale", "-a", "pg", "db-read=2"]);
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    eprintln!("{committed} rows committed, {failed} failed while 2 replicas were added");
    assert_eq!(failed, 0, "no insert fails while replicas are added");
    assert!(committed > 100, "the load ran: {committed} rows");
    let everything = format!("{committed}|{}", committed * (committed + 1) / 2);
    assert_eq!(
        sql_ok(&write, "SELECT count(*), sum(n) FROM load"),
        everything
    );
    // Each replica, asked at its own address, has every committed row once it has replayed
    // what the primary wrote.
    let replicas = instance_addresses(&p, "db-read");
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    for replica in &replicas {
        wait_answer(
            replica,
            "SELECT pg_is_in_recovery(), count(*), sum(n) FROM load",
            &format!("t|{everything}"),
            Duration::from_secs(30),
        );
    }
}

#[test]
fn a_dump_the_pg_dump_capsule_takes_restores_into_a_new_service_with_the_same_rows() {
    let p = Platform::new();
    up(&p, &manifest(0));
    // A dump reads every row: the manifest must let the capsule attach, as any capsule.
    let refused = p.fails(&[
        "capsule",
        "run",
        "pg-dump",
        "-l",
        "app=pg,service=db",
        "--",
        "shop",
    ]);
    assert!(refused.contains("pg-dump"), "{refused}");
    up(
        &p,
        &manifest(0).replace("storage", "capsules = { pg-dump = \"read\" }\nstorage"),
    );
    let write = service_address(&p, "db");
    sql_ok(&write, "CREATE TABLE orders (n int PRIMARY KEY, item text)");
    sql_ok(
        &write,
        "INSERT INTO orders SELECT n, 'order ' || n FROM generate_series(1, 500) n",
    );
    let out = p.root().join("dumps");
    let said = p.ok(&[
        "capsule",
        "run",
        "pg-dump",
        "-l",
        "app=pg,service=db",
        "--out",
        out.to_str().unwrap(),
        "--",
        "shop",
    ]);
    let dump = out.join("db.1/shop.dump");
    assert!(dump.is_file(), "{said}");

    // Another application, its own password and user, restores the dump when it makes its
    // cluster; its replica has the rows too.
    let copy = format!(
        "app = \"pg-copy\"\n\n[services.copy]\ncatalog = \"postgres\"\nreplicas = 1\nstorage = \"256M\"\nrestore = {:?}\nenv = {{ POSTGRES_PASSWORD = \"another\", POSTGRES_USER = \"app\", POSTGRES_DB = \"shop\" }}\n",
        dump.display().to_string()
    );
    let path = p.manifest("pg-copy", &copy);
    p.ok(&["up", "-f", path.to_str().unwrap()]);
    let v: serde_json::Value =
        serde_json::from_str(&p.ok(&["describe", "-a", "pg-copy", "copy-read", "-o", "json"]))
            .unwrap();
    let read = v["address"].as_str().unwrap().to_owned();
    let asked = |command: &str| {
        let out = Command::new("psql")
            .args([
                "-X", "-h", &read, "-U", "app", "-d", "shop", "-tA", "-c", command,
            ])
            .env("PGPASSWORD", "another")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = "t|500|125250|order 500";
    let query = "SELECT pg_is_in_recovery(), count(*), sum(n), max(item) FILTER (WHERE n = 500) FROM orders";
    let mut last = asked(query);
    while last != wanted {
        assert!(
            Instant::now() < deadline,
            "the restored replica answered {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        last = asked(query);
    }
}

#[test]
fn a_catalogue_service_refuses_what_would_break_it_and_changes_nothing() {
    let p = Platform::new();
    up(&p, &manifest(1));
    let before = pids(&p.ps("pg"));
    let write = service_address(&p, "db");
    sql_ok(&write, "CREATE TABLE kept (n int)");
    sql_ok(&write, "INSERT INTO kept VALUES (1), (2)");

    let good = manifest(1);
    // A dry run finds the catalogue's image in the store, which the first `up` built.
    let path = p.manifest("pg", &good);
    let out = p.run(&["up", "--dry-run", "-f", path.to_str().unwrap()]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success()
            && said.contains("service db: paracloud-catalog/postgres:15-")
            && said.contains("in the store (sha256:"),
        "{said}"
    );
    let bad = [
        (
            good.replace("catalog = \"postgres\"", "catalog = \"mysql\""),
            "paracloud.toml:4:11: services.db.catalog: no service \"mysql\" in the catalogue",
        ),
        (
            good.replace("replicas = 1", "replicas = 1\ncommand = \"postgres\""),
            "paracloud.toml:6:1: services.db.command: `catalog = \"postgres\"` does not take `command`",
        ),
        (
            good.replace("replicas = 1", "replicas = 9"),
            "paracloud.toml:5:12: services.db.replicas: 9 read replicas is more than the 8 a catalogue service takes",
        ),
        (
            good.replace("storage = \"256M\"", "storage = \"256M\"\nversion = \"9.6\""),
            "paracloud.toml:7:11: services.db.version: the catalogue's postgres runs version 15, not \"9.6\"",
        ),
        (
            good.replace("replicas = 1", "replicas = 1\nrestore = \"missing.dump\""),
            "paracloud.toml:6:11: services.db.restore: no dump to restore at",
        ),
        (
            good.replace(&format!("POSTGRES_PASSWORD = \"{PASSWORD}\", "), ""),
            "services.db.env.POSTGRES_PASSWORD: a catalogue postgres service needs `env.POSTGRES_PASSWORD`",
        ),
    ];
    for (text, error) in bad {
        let path = p.manifest("pg", &text);
        let stderr = p.fails(&["up", "-f", path.to_str().unwrap()]);
        assert!(stderr.contains(error), "{error}\nnot in:\n{stderr}");
    }
    for (args, error) in [
        (
            &["scale", "-a", "pg", "db=2"][..],
            "db is the primary of a catalogue service: it runs one instance",
        ),
        (
            &["scale", "-a", "pg", "db-read=9"][..],
            "db-read holds the read replicas of db: at most 8, asked for 9",
        ),
        (
            &["migrate", "-a", "pg", "db.1", "--via", "restart"][..],
            "db is the primary of a catalogue service, which moves by switchover alone",
        ),
        (
            &["migrate", "-a", "pg", "db-read.1", "--via", "switchover"][..],
            "--via switchover moves the primary of a catalogue database (PostgreSQL, MariaDB or Redis), and db-read is not one",
        ),
    ] {
        let stderr = p.fails(args);
        assert!(stderr.contains(error), "{error}\nnot in:\n{stderr}");
    }
    assert_eq!(pids(&p.ps("pg")), before, "nothing was replaced");
    assert_eq!(sql_ok(&write, "SELECT count(*) FROM kept"), "2");
}

/// Commands sent to the Redis server at `address` on one connection (redis-cli reads them from
/// its standard input), with the answers as redis-cli prints them raw, one value per line.
fn redis(address: &str, commands: &str) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-h", address, "-p", "6379"])
        .env("REDISCLI_AUTH", PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli runs (scripts/deps.sh installs redis-server)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn redis_writes_through_the_write_address_are_read_from_a_replica_and_outlive_a_killed_primary() {
    let p = Platform::new();
    up(
        &p,
        &format!(
            "app = \"pg\"\n\n[services.cache]\ncatalog = \"redis\"\nreplicas = 1\npersistence = \"aof\"\nenv = {{ REDIS_PASSWORD = \"{PASSWORD}\" }}\n"
        ),
    );
    let write = service_address(&p, "cache");
    let read = service_address(&p, "cache-read");
    assert_eq!(redis(&write, "SET greeting hello\n"), "OK");
    assert_eq!(
        redis(&write, &"INCR hits\n".repeat(100)).lines().last(),
        Some("100")
    );
    // Through the read address until a connection lands on the replica (ROLE says `slave`).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = redis(&read, "ROLE\nGET greeting\nGET hits\n");
        let lines: Vec<&str> = answer.lines().collect();
        if lines.first() == Some(&"slave") && lines.ends_with(&["hello", "100"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the read address answered {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each server says how many commands it processed, the model's requests.
    p.wait_figures("pg", "cache", "cache.1", &["queries_per_second"]);
    p.wait_figures("pg", "cache-read", "cache-read.1", &["queries_per_second"]);
    // Without the password, nothing.
    let out = Command::new("redis-cli")
        .args(["-h", &write, "-p", "6379", "GET", "greeting"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOAUTH"),
        "{out:?}"
    );

    // The primary killed after its append-only file was flushed (each second): restarted on its
    // volume, it has every write, and its replica follows it again.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = p
        .ps("pg")
        .iter()
        .find(|i| field(i, "service") == "cache")
        .and_then(|i| i["pid"].as_i64())
        .unwrap();
    kill9(pid as i32);
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis(&write, "GET hits\n") != "100" {
        assert!(
            Instant::now() < deadline,
            "the primary did not come back with its data:\n{}",
            p.ok(&["logs", "-a", "pg", "cache"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(redis(&write, "SET after restart\n"), "OK");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = redis(&read, "ROLE\nGET after\n");
        let lines: Vec<&str> = answer.lines().collect();
        if lines.first() == Some(&"slave") && lines.last() == Some(&"restart") {
            break;
        }
        assert!(Instant::now() < deadline, "the replica answered {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_replica_that_falls_behind_leaves_the_read_address_until_it_catches_up() {
    let p = Platform::new();
    up(
        &p,
        &manifest(1).replace("storage = \"256M\"", "storage = \"256M\"\nmax_lag = \"1s\""),
    );
    let write = service_address(&p, "db");
    let read = service_address(&p, "db-read");
    sql_ok(&write, "CREATE TABLE ticks (n serial PRIMARY KEY)");
    sql_ok(&write, "INSERT INTO ticks DEFAULT VALUES");
    wait_answer(
        &read,
        "SELECT pg_is_in_recovery(), count(*) FROM ticks",
        "t|1",
        Duration::from_secs(30),
    );
    let replica = instance_addresses(&p, "db-read").remove(0);
    let pid_of_replica = || {
        p.ps("pg")
            .iter()
            .find(|i| field(i, "service") == "db-read")
            .map(|i| i["pid"].clone())
    };
    let before = pid_of_replica();

    // The replica stops replaying what it receives; the primary goes on writing.
    sql_ok(&replica, "SELECT pg_wal_replay_pause()");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sql_ok(&write, "INSERT INTO ticks DEFAULT VALUES");
        let out = p.ok(&["describe", "-a", "pg", "db-read"]);
        if out.contains("behind the primary, more than the 1000 ms of max_lag") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never fell behind:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Out of the read address (once unhealthy, with the reason in its event): every
    // connection there lands on the primary.
    let events = p.wait_event(
        "pg",
        "unhealthy: exec check exited with code 1: ",
        Duration::from_secs(30),
    );
    let event = events.lines().find(|l| l.contains("unhealthy")).unwrap();
    assert!(
        event.contains("db-read.1") && event.contains("behind the primary"),
        "{event}"
    );
    for _ in 0..10 {
        assert_eq!(sql_ok(&read, "SELECT pg_is_in_recovery()"), "f");
    }
    assert_eq!(
        pid_of_replica(),
        before,
        "a replica behind is not restarted"
    );

    // Replaying again, it catches up and serves reads again, with every row.
    sql_ok(&replica, "SELECT pg_wal_replay_resume()");
    let count = sql_ok(&write, "SELECT count(*) FROM ticks");
    wait_answer(
        &read,
        "SELECT pg_is_in_recovery(), count(*) FROM ticks",
        &format!("t|{count}"),
        Duration::from_secs(30),
    );
    assert_eq!(pid_of_replica(), before);
}

#[test]
fn a_synchronous_commit_is_on_a_replica_before_the_client_hears_of_it() {
    let p = Platform::new();
    up(
        &p,
        &manifest(1).replace(
            "storage = \"256M\"",
            "storage = \"256M\"\nsynchronous = true",
        ),
    );
    let write = service_address(&p, "db");
    let replica = instance_addresses(&p, "db-read").remove(0);
    sql_ok(&write, "CREATE TABLE orders (n int PRIMARY KEY)");
    // Asked at once after each commit, with no wait: the replica has applied it already.
    for n in 1..=20 {
        sql_ok(&write, &format!("INSERT INTO orders VALUES ({n})"));
        assert_eq!(
            sql_ok(&replica, "SELECT pg_is_in_recovery(), count(*) FROM orders"),
            format!("t|{n}")
        );
    }
    assert_eq!(
        sql_ok(
            &write,
            "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'"
        ),
        "quorum"
    );
    // The one replica cannot go: commits would wait for ever.
    let refused = p.fails(&["scale", "-a", "pg", "db-read=0"]);
    assert!(
        refused
            .contains("db commits synchronously: each commit waits until a replica has applied it"),
        "{refused}"
    );
    assert_eq!(instance_addresses(&p, "db-read"), [replica]);
}

/// A primary that cannot come back on its data fails over: its control file destroyed, then its
/// server killed with SIGKILL under synchronous one-row commits, it fails its restarts; the
/// platform starts it from a copy of its most advanced replica at the same write address. No
/// committed row is lost, the old data is set aside, and the replicas are renewed from the new
/// primary. The test prints the rows committed and lost and the longest time without a commit.
#[test]
fn a_primary_that_cannot_come_back_fails_over_to_its_most_advanced_replica() {
    let p = Platform::new();
    up(
        &p,
        &manifest(2).replace(
            "storage = \"256M\"",
            "storage = \"256M\"\nsynchronous = true",
        ),
    );
    let write = service_address(&p, "db");
    sql_ok(&write, "CREATE TABLE load (n int PRIMARY KEY)");
    let insert = |n: u64| sql(&write, &format!("INSERT INTO load VALUES ({n})")).is_ok();
    let volume = p.root().join("volumes/pg/db-data");
    let present = || {
        sql_ok(&write, "SELECT n FROM load")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    // Its data can no longer start: the control file is gone. Then its server is killed.
    let destroy = |volume: &std::path::Path| {
        std::fs::write(volume.join("data/global/pg_control"), b"").unwrap()
    };
    let (commits, replicas_before) =
        p.fail_over_under_commits(("pg", "db"), destroy, insert, present);
    assert_eq!(sql_ok(&write, "SELECT pg_is_in_recovery()"), "f");
    // Once the new primary is ready, its replicas are renewed.
    let events = p.wait_event("pg", "renewed replica by replica", Duration::from_secs(60));
    assert!(events.contains("is the most advanced replica"), "{events}");
    assert!(
        volume.join("data.failed/PG_VERSION").exists(),
        "the old data is set aside"
    );
    assert!(!volume.join("promote-from").exists());
    // The replicas are fresh copies of the new primary, and follow it.
    let last = commits.committed.last().unwrap();
    p.wait_renewed("pg", "db-read", &replicas_before, 2);
    for replica in instance_addresses(&p, "db-read") {
        wait_answer(
            &replica,
            &format!("SELECT pg_is_in_recovery(), count(*) FROM load WHERE n = {last}"),
            "t|1",
            Duration::from_secs(30),
        );
    }
}

/// A Redis primary that cannot come back on its data (its append-only file destroyed, then
/// killed) fails over to a snapshot of its most advanced replica, written as the base of a new
/// append-only file: every write a replica acknowledged (WAIT) is there, at the same write
/// address, and the replicas are renewed from the new primary.
#[test]
fn a_redis_primary_that_cannot_come_back_fails_over_to_its_most_advanced_replica() {
    let p = Platform::new();
    up(
        &p,
        &format!(
            "app = \"pg\"\n\n[services.cache]\ncatalog = \"redis\"\nreplicas = 2\npersistence = \"aof\"\nenv = {{ REDIS_PASSWORD = \"{PASSWORD}\" }}\n"
        ),
    );
    let write = service_address(&p, "cache");
    // Each write waits until a replica has it (WAIT 1): acknowledged means on two servers.
    let writes: String = (1..=100)
        .map(|n| format!("SET key:{n} {n}\nWAIT 1 5000\n"))
        .collect();
    let answers = redis(&write, &writes);
    assert_eq!(
        answers.lines().filter(|l| *l == "1" || *l == "2").count(),
        100,
        "every write reached a replica: {answers}"
    );
    let replicas_before = p.pids("pg", "cache-read");
    // Its append-only file no longer loads; then it is killed.
    let volume = p.root().join("volumes/pg/cache-data");
    std::fs::write(
        volume.join("appendonlydir/appendonly.aof.1.incr.aof"),
        b"*3\r\n$3\r\nSET\r\nbroken",
    )
    .unwrap();
    p.kill_first("pg", "cache");
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(120);
    while redis(&write, "GET key:100\n") != "100" {
        assert!(
            Instant::now() < deadline,
            "the primary did not come back with the replica's data:\n{}\n{}",
            p.ok(&["events", "-a", "pg"]),
            p.ok(&["logs", "-a", "pg", "cache"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "redis failover: the write address answered with every write again after {} ms",
        killed.elapsed().as_millis()
    );
    let keys = redis(&write, "DBSIZE\nROLE\n");
    assert_eq!(keys.lines().take(2).collect::<Vec<_>>(), ["100", "master"]);
    // Once the new primary is ready, its replicas are renewed.
    let events = p.wait_event("pg", "renewed replica by replica", Duration::from_secs(60));
    assert!(events.contains("is the most advanced replica"), "{events}");
    assert!(volume.join("data.failed/appendonlydir").is_dir());
    // The new primary keeps its writes in a new append-only file: restarted, it has them.
    assert_eq!(redis(&write, "SET after failover\n"), "OK");
    p.wait_renewed("pg", "cache-read", &replicas_before, 2);
    for replica in instance_addresses(&p, "cache-read") {
        let deadline = Instant::now() + Duration::from_secs(30);
        let follows = || {
            redis(&replica, "ROLE\nGET after\nDBSIZE\n")
                .lines()
                .collect::<Vec<_>>()
                .ends_with(&["failover", "101"])
        };
        while !follows() {
            assert!(Instant::now() < deadline, "{replica} does not follow");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A database's clients send many queries down one connection, so its load is the queries its
/// servers count, not the connections the data plane sees: one psql session through the read
/// address shows as the queries per second of the server it reached, with a capacity measured
/// in queries, and the replica says how far behind the primary it is.
#[test]
fn a_databases_load_is_the_queries_its_servers_ran_not_its_connections() {
    let p = Platform::new();
    up(&p, &manifest(1));
    let read = service_address(&p, "db-read");
    let mut session = Command::new("psql")
        .args(["-X", "-q", "-h", &read, "-U", "postgres", "-d", "shop"])
        .env("PGPASSWORD", PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = session.stdin.take().unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sending = stop.clone();
    // About 500 queries a second: 25 every 50 ms.
    let sender = std::thread::spawn(move || {
        let mut sent = 0u64;
        while !sending.load(Ordering::Relaxed) {
            if stdin
                .write_all("SELECT 1;\n".repeat(25).as_bytes())
                .is_err()
            {
                break;
            }
            sent += 25;
            std::thread::sleep(Duration::from_millis(50));
        }
        sent
    });

    // The server the session reached: the one that ran queries, by its own count.
    let deadline = Instant::now() + Duration::from_secs(60);
    let busiest = loop {
        let instances: Vec<serde_json::Value> = ["db", "db-read"]
            .iter()
            .flat_map(|s| p.described_instances("pg", s))
            .collect();
        let busiest = instances
            .iter()
            .filter(|i| i["queries_per_second"].as_f64().is_some_and(|q| q >= 100.0))
            .find(|i| i["capacity_rps"].as_f64().is_some());
        if let Some(busiest) = busiest {
            break busiest.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no server counts the session's queries with a capacity: {instances:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let name = busiest["instance"].as_str().unwrap().to_owned();
    let rate = busiest["queries_per_second"].as_f64().unwrap();
    assert!(
        (100.0..2_000.0).contains(&rate),
        "{name}: {rate} queries/s, where the session sends about 500"
    );
    let described = p.ok(&["describe", "-a", "pg", name.split('.').next().unwrap()]);
    assert!(
        described.contains(&format!("server: {name}: ")) && described.contains("queries/s"),
        "{described}"
    );

    // The data plane saw one connection for all of them.
    let stats: serde_json::Value =
        serde_json::from_str(&p.ok(&["top", "--once", "-o", "json"])).unwrap();
    let accepted: u64 = stats["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["name"].as_str().unwrap().starts_with("pg/db-read:"))
        .map(|l| l["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, 1, "{stats:#}");

    // The replica says how far behind it is, in `describe` and in the metrics.
    let replica = p.described_instances("pg", "db-read");
    assert!(replica[0]["lag_ms"].as_u64().is_some(), "{replica:#?}");
    let (status, metrics) = unix_http(
        &p.root().join(paracloud_api::SOCKET_NAME),
        "GET",
        "/metrics",
        "",
    );
    assert_eq!(status, 200, "{metrics}");
    let series = format!(
        "paracloud_database_queries_total{{app=\"pg\",service=\"{}\",instance=\"{name}\"}} ",
        name.split('.').next().unwrap()
    );
    let counted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    assert!(
        metrics.contains("paracloud_database_replication_lag_seconds{app=\"pg\",service=\"db-read\",instance=\"db-read.1\"}"),
        "{metrics}"
    );

    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let _ = session.wait();
    assert!(
        counted >= 100.0 && counted <= sent as f64 + 1_000.0,
        "{name} counted {counted} queries of the {sent} sent (and its health checks')"
    );
}

/// `paracloud migrate` of a PostgreSQL primary under one-row commits: a switchover. Its
/// successor copies it and follows it, takes over once it stopped, and takes the writes at the
/// same write address: no committed row is lost. The new primary's data is the volume's from
/// then on (a restart comes back on it), the replicas are renewed from it, and a second
/// switchover moves it again.
#[test]
fn a_primary_migrates_by_switchover_and_loses_no_commit() {
    let p = Platform::new();
    up(&p, &manifest(1));
    let write = service_address(&p, "db");
    sql_ok(&write, "CREATE TABLE load (n int PRIMARY KEY)");
    let insert = |n: u64| sql(&write, &format!("INSERT INTO load VALUES ({n})")).is_ok();
    let present = || {
        sql_ok(&write, "SELECT n FROM load")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let replica_has = |replica: &str, last: u64| {
        sql(
            replica,
            &format!("SELECT pg_is_in_recovery(), count(*) FROM load WHERE n = {last}"),
        )
        .is_ok_and(|answer| answer == "t|1")
    };
    p.switch_over_twice(
        ("pg", "db"),
        ["data.1", "data.2"],
        insert,
        present,
        replica_has,
    );
    assert_eq!(sql_ok(&write, "SELECT pg_is_in_recovery()"), "f");
}

/// `paracloud migrate` of a Redis primary under writes: its successor replicates from it, the
/// old primary's writes are paused and it stops, and the successor takes over once it has the
/// whole stream: no acknowledged write is lost, even without WAIT.
#[test]
fn a_redis_primary_migrates_by_switchover_and_loses_no_write() {
    let p = Platform::new();
    up(
        &p,
        &format!(
            "app = \"pg\"\n\n[services.cache]\ncatalog = \"redis\"\nreplicas = 1\npersistence = \"aof\"\nenv = {{ REDIS_PASSWORD = \"{PASSWORD}\" }}\n"
        ),
    );
    let write = service_address(&p, "cache");
    let insert = |n: u64| redis(&write, &format!("SET key:{n} {n}\n")) == "OK";
    let present = || {
        redis(&write, "KEYS key:*\n")
            .lines()
            .filter_map(|k| k.strip_prefix("key:")?.parse().ok())
            .collect()
    };
    let replica_has =
        |replica: &str, last: u64| redis(replica, &format!("GET key:{last}\n")) == last.to_string();
    p.switch_over_twice(
        ("pg", "cache"),
        ["data.1", "data.2"],
        insert,
        present,
        replica_has,
    );
    assert_eq!(redis(&write, "ROLE\n").lines().next(), Some("master"));
    assert!(
        p.volume_entries("pg", "cache-data", "append").is_empty(),
        "the first primary's files are gone"
    );
}

/// A switchover whose successor cannot copy the primary (its volume has no room for a second
/// copy) is abandoned before the pause: the successor is removed, the primary never stopped and
/// takes writes on, and the volume keeps nothing of the attempt.
#[test]
fn a_switchover_without_room_for_the_copy_leaves_the_primary_serving() {
    let p = Platform::new();
    up(&p, &manifest(0));
    let write = service_address(&p, "db");
    sql_ok(&write, "CREATE TABLE kept (n int)");
    sql_ok(&write, "INSERT INTO kept VALUES (1)");
    let before = pids(&p.ps("pg"));
    // Fill the volume but for 4 MB: a fresh cluster's copy needs more.
    let volume = p.root().join("volumes/pg/db-data");
    let fs = nix::sys::statvfs::statvfs(&volume).unwrap();
    let free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
    let filler = volume.join("filler");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..(free >> 20).saturating_sub(4) {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
    }
    let refused = p.fails(&["migrate", "-a", "pg", "db.1"]);
    assert!(
        refused.contains("db.2 did not become ready") && refused.contains("db.1 keeps serving"),
        "{refused}\n{}",
        p.events("pg")
    );
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(pids(&p.ps("pg")), before, "the primary never stopped");
    // The full volume may have sent its server through crash recovery (its own processes, under
    // the same postmaster); once there is room again, it takes writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = sql(&write, "INSERT INTO kept VALUES (2)") {
        assert!(
            Instant::now() < deadline,
            "the primary takes no writes: {e}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sql_ok(&write, "SELECT count(*) FROM kept"), "2");
    assert!(!volume.join("switchover-from").exists());
    assert!(!volume.join("data.1").exists(), "the failed copy is gone");
    assert!(!volume.join("current").exists());
}
