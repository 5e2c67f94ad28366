//! The catalogue's MariaDB as an application meets it: `catalog = "mariadb"` in a manifest, real
//! servers from this machine's package (the primary and its GTID replicas), reached with the
//! mariadb client through the write and read addresses the data plane serves.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Root's password, with what SQL and the shell would take for their own.
const ROOT_PASSWORD: &str = r#"r00t'p$w\d"#;

fn manifest(replicas: u32, extra: &str) -> String {
    format!(
        r#"app = "md"

[services.db]
catalog = "mariadb"
replicas = {replicas}
storage = "256M"
env = {{ MARIADB_ROOT_PASSWORD = {root}, MARIADB_DATABASE = "shop", MARIADB_USER = "app", MARIADB_PASSWORD = "app-password" }}
{extra}
"#,
        root = toml_string(ROOT_PASSWORD)
    )
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.into()).to_string()
}

fn up(p: &Platform, app: &str, text: &str) {
    let path = p.manifest(app, text);
    p.ok(&["up", "-f", path.to_str().unwrap()]);
}

fn service_address(p: &Platform, app: &str, service: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&p.ok(&["describe", "-a", app, service, "-o", "json"])).unwrap();
    v["address"].as_str().unwrap().to_owned()
}

/// SQL through the mariadb client at `address` as `user`: its rows, tab-separated.
fn sql_as(address: &str, (user, password): (&str, &str), command: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "--connect-timeout=5",
            "-h",
            address,
            "-u",
            user,
        ])
        .args(["-D", "shop", "-N", "-B", "-e", command])
        .env("MYSQL_PWD", password)
        .output()
        .expect("the mariadb client runs (scripts/deps.sh installs mariadb-server)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn sql(address: &str, command: &str) -> Result<String, String> {
    sql_as(address, ("app", "app-password"), command)
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

#[test]
fn rows_written_through_the_write_address_are_read_back_through_the_read_address_from_a_replica() {
    let p = Platform::new();
    let catalog = p.ok(&["catalog", "ls"]);
    assert!(catalog.contains("mariadb"), "{catalog}");
    up(&p, "md", &manifest(1, ""));
    let write = service_address(&p, "md", "db");
    let read = service_address(&p, "md", "db-read");
    sql_ok(&write, "CREATE TABLE items (n int PRIMARY KEY, name text)");
    sql_ok(
        &write,
        "INSERT INTO items SELECT seq, concat('item ', seq) FROM seq_1_to_1000",
    );
    // The read address balances over the replica and the primary: until a connection lands on
    // the replica with every row, ask again. A replica's server id is not the primary's 1
    // (`@@read_only` beside an aggregate reads 0 on MariaDB 10.11, whatever it is).
    wait_answer(
        &read,
        "SELECT @@server_id <> 1, count(*), sum(n) FROM items",
        "1\t1000\t500500",
        Duration::from_secs(30),
    );
    // A replica takes no writes, not even root's; the write address reaches the primary alone.
    let mut refused = 0;
    for _ in 0..6 {
        if let Err(e) = sql_as(
            &read,
            ("root", ROOT_PASSWORD),
            "INSERT INTO items VALUES (0, 'x')",
        ) {
            assert!(e.contains("read-only"), "{e}");
            refused += 1;
        } else {
            sql_ok(&write, "DELETE FROM items WHERE n = 0");
        }
    }
    assert!(refused > 0, "no connection of six reached the replica");
    for _ in 0..4 {
        assert_eq!(sql_ok(&write, "SELECT @@read_only"), "0");
    }
    // Root gives its password from elsewhere (its quote, dollar and backslash included).
    assert_eq!(
        sql_as(&write, ("root", ROOT_PASSWORD), "SELECT current_user()").unwrap(),
        "root@%"
    );
    assert!(sql_as(&write, ("root", "wrong"), "SELECT 1").is_err());
    // Each server says how many statements it ran, the model's requests; the replica how far
    // behind it is.
    p.wait_figures("md", "db", "db.1", &["queries_per_second"]);
    p.wait_figures(
        "md",
        "db-read",
        "db-read.1",
        &["queries_per_second", "lag_ms"],
    );

    // The primary's data is on its volume: restarted on the same data, it has every row, and
    // its replica follows it again.
    p.ok(&["restart", "-a", "md", "db"]);
    assert_eq!(sql_ok(&write, "SELECT count(*) FROM items"), "1000");
    sql_ok(
        &write,
        "INSERT INTO items VALUES (1001, 'after the restart')",
    );
    wait_answer(
        &read,
        "SELECT @@server_id <> 1, count(*) FROM items",
        "1\t1001",
        Duration::from_secs(30),
    );
}

#[test]
fn replicas_added_under_a_constant_write_load_lose_and_fail_nothing() {
    let p = Platform::new();
    up(&p, "md", &manifest(0, ""));
    let write = service_address(&p, "md", "db");
    sql_ok(&write, "CREATE TABLE writes (n bigint PRIMARY KEY)");
    let stop = AtomicBool::new(false);
    let (committed, failed) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let (mut committed, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let n = committed + 1;
                match sql(&write, &format!("INSERT INTO writes VALUES ({n})")) {
                    Ok(_) => committed += 1,
                    Err(e) => {
                        eprintln!("insert {n}: {e}");
                        failed += 1;
                    }
                }
            }
            (committed, failed)
        });
        std::thread::sleep(Duration::from_secs(1));
        p.ok(&["scale", "-a", "md", "db-read=1"]);
        p.ok(&["scale", "-a", "md", "db-read=2"]);
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    eprintln!("{committed} rows committed, {failed} failed while 2 replicas were added");
    assert_eq!(failed, 0, "no insert fails while replicas are added");
    assert!(committed > 50, "the load ran: {committed} rows");
    let everything = format!("{committed}\t{}", committed * (committed + 1) / 2);
    assert_eq!(
        sql_ok(&write, "SELECT count(*), sum(n) FROM writes"),
        everything
    );
    let replicas: Vec<String> = p
        .ps("md")
        .iter()
        .filter(|i| field(i, "service") == "db-read")
        .map(|i| field(i, "address").split('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    for replica in &replicas {
        wait_answer(
            replica,
            "SELECT @@server_id <> 1, count(*), sum(n) FROM writes",
            &format!("1\t{everything}"),
            Duration::from_secs(30),
        );
    }
}

#[test]
fn a_synchronous_commit_is_acknowledged_by_a_replica_and_keeps_one() {
    let p = Platform::new();
    up(&p, "md", &manifest(1, "synchronous = true"));
    let write = service_address(&p, "md", "db");
    sql_ok(&write, "CREATE TABLE t (n int PRIMARY KEY)");
    for n in 1..=20 {
        sql_ok(&write, &format!("INSERT INTO t VALUES ({n})"));
    }
    let status = sql_as(
        &write,
        ("root", ROOT_PASSWORD),
        "SELECT variable_value FROM information_schema.global_status WHERE variable_name IN ('RPL_SEMI_SYNC_MASTER_STATUS', 'RPL_SEMI_SYNC_MASTER_YES_TX', 'RPL_SEMI_SYNC_MASTER_NO_TX') ORDER BY variable_name",
    )
    .unwrap();
    let values: Vec<&str> = status.lines().collect();
    // NO_TX, STATUS, YES_TX: every commit acknowledged by the replica, none alone.
    assert_eq!(values.len(), 3, "{status}");
    assert_eq!((values[0], values[1]), ("0", "ON"), "{status}");
    assert!(values[2].parse::<u64>().unwrap() >= 21, "{status}");
    let refused = p.fails(&["scale", "-a", "md", "db-read=0"]);
    assert!(refused.contains("synchronous"), "{refused}");
}

#[test]
fn a_dump_the_mariadb_dump_capsule_takes_restores_into_a_new_service_with_the_same_rows() {
    let p = Platform::new();
    up(
        &p,
        "md",
        &manifest(0, "capsules = { mariadb-dump = \"read\" }"),
    );
    let write = service_address(&p, "md", "db");
    sql_ok(&write, "CREATE TABLE orders (n int PRIMARY KEY, item text)");
    sql_ok(
        &write,
        "INSERT INTO orders SELECT seq, concat('order ', seq, ' ☕') FROM seq_1_to_500",
    );
    let out = p.root().join("dumps");
    let said = p.ok(&[
        "capsule",
        "run",
        "mariadb-dump",
        "-l",
        "app=md,service=db",
        "--out",
        out.to_str().unwrap(),
    ]);
    let dump = out.join("db.1/shop.sql");
    assert!(dump.is_file(), "{said}");

    // A restore from a file that is not there is refused at its line, and deploys nothing.
    let copy = |dump: &str| {
        format!(
            "app = \"md-copy\"\n\n[services.copy]\ncatalog = \"mariadb\"\nreplicas = 1\nstorage = \"256M\"\nrestore = {}\nenv = {{ MARIADB_ROOT_PASSWORD = \"another\", MARIADB_DATABASE = \"shop\" }}\n",
            toml_string(dump)
        )
    };
    let missing = p.manifest("md-copy", &copy("/nowhere/shop.sql"));
    let refused = p.fails(&["up", "-f", missing.to_str().unwrap()]);
    assert!(
        refused.contains("services.copy.restore: no dump to restore at /nowhere/shop.sql"),
        "{refused}"
    );
    let nothing = p.fails(&["ps", "-a", "md-copy"]);
    assert!(
        nothing.contains("no application named md-copy"),
        "{nothing}"
    );

    // Another application, its own root password, restores the dump when it makes its
    // database; its replica has the rows too.
    up(&p, "md-copy", &copy(dump.to_str().unwrap()));
    let read = service_address(&p, "md-copy", "copy-read");
    let deadline = Instant::now() + Duration::from_secs(30);
    let query = "SELECT @@server_id <> 1, count(*), sum(n), (SELECT item FROM orders WHERE n = 500) FROM orders";
    let wanted = "1\t500\t125250\torder 500 ☕";
    loop {
        let last = sql_as(&read, ("root", "another"), query);
        if last.as_deref() == Ok(wanted) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored replica answered {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_primary_killed_under_synchronous_writes_loses_no_committed_row() {
    let p = Platform::new();
    up(&p, "md", &manifest(1, "synchronous = true"));
    let write = service_address(&p, "md", "db");
    sql_ok(&write, "CREATE TABLE orders (n bigint PRIMARY KEY)");
    let stop = AtomicBool::new(false);
    // Each insert is its own connection and transaction: a row counts as committed once the
    // client heard so.
    let (committed, failed, longest_gap) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut committed = Vec::new();
            let mut failed = 0u64;
            let mut last_ok = Instant::now();
            let mut longest_gap = Duration::ZERO;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if sql(&write, &format!("INSERT INTO orders VALUES ({n})")).is_ok() {
                    longest_gap = longest_gap.max(last_ok.elapsed());
                    last_ok = Instant::now();
                    committed.push(n);
                } else {
                    failed += 1;
                }
            }
            (committed, failed, longest_gap)
        });
        std::thread::sleep(Duration::from_secs(2));
        let pid = p
            .ps("md")
            .iter()
            .find(|i| field(i, "service") == "db")
            .and_then(|i| i["pid"].as_i64())
            .unwrap();
        kill9(pid as i32);
        // Writes go on once the primary is back (restarted on its volume), then a while more.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !p.ps("md").iter().any(|i| {
            field(i, "service") == "db"
                && i["pid"].as_i64() != Some(pid)
                && field(i, "state") == "running"
        }) {
            assert!(Instant::now() < deadline, "the primary did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    let present: std::collections::BTreeSet<u64> = sql_ok(&write, "SELECT n FROM orders")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost = committed.iter().filter(|n| !present.contains(n)).count();
    eprintln!(
        "{} rows committed, {failed} inserts failed, {lost} committed rows lost; the write address was unavailable for at most {longest_gap:?}",
        committed.len()
    );
    assert!(
        committed.len() > 20,
        "the load ran: {} rows",
        committed.len()
    );
    assert_eq!(lost, 0, "a committed row was lost");
    // The replica follows the restarted primary and has every row.
    let replica: Vec<String> = p
        .ps("md")
        .iter()
        .filter(|i| field(i, "service") == "db-read")
        .map(|i| field(i, "address").split('/').next().unwrap().to_owned())
        .collect();
    let every = sql_ok(&write, "SELECT count(*), sum(n) FROM orders");
    wait_answer(
        &replica[0],
        "SELECT @@server_id <> 1, count(*), sum(n) FROM orders",
        &format!("1\t{every}"),
        Duration::from_secs(30),
    );
}

/// A primary that cannot come back on its data fails over: its InnoDB system tablespace
/// destroyed, then its server killed with SIGKILL under synchronous one-row commits, it fails
/// its restarts; the platform starts it from a copy of its most advanced replica (once that
/// replica has applied all it received), under a new server id, at the same write address. No
/// committed row is lost, and the replicas are renewed from the new primary.
#[test]
fn a_primary_that_cannot_come_back_fails_over_to_its_most_advanced_replica() {
    let p = Platform::new();
    up(&p, "md", &manifest(2, "synchronous = true"));
    let write = service_address(&p, "md", "db");
    sql_ok(&write, "CREATE TABLE orders (n bigint PRIMARY KEY)");
    let insert = |n: u64| sql(&write, &format!("INSERT INTO orders VALUES ({n})")).is_ok();
    let volume = p.root().join("volumes/md/db-data");
    let present = || {
        sql_ok(&write, "SELECT n FROM orders")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    // Its data can no longer start: InnoDB's system tablespace is gone. Then it is killed.
    let destroy =
        |volume: &std::path::Path| std::fs::write(volume.join("data/ibdata1"), b"").unwrap();
    let (commits, replicas_before) =
        p.fail_over_under_commits(("md", "db"), destroy, insert, present);
    // Once the new primary is ready, its replicas are renewed.
    let events = p.wait_event("md", "renewed replica by replica", Duration::from_secs(60));
    assert!(events.contains("is the most advanced replica"), "{events}");
    assert!(
        volume.join("data.failed").is_dir(),
        "the old data is set aside"
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("server-id"))
            .unwrap()
            .trim(),
        "2"
    );
    assert_eq!(sql_ok(&write, "SELECT @@server_id, @@read_only"), "2\t0");
    // The replicas are fresh copies of the new primary, and follow it.
    let last = commits.committed.last().unwrap();
    p.wait_renewed("md", "db-read", &replicas_before, 2);
    for replica in p
        .ps("md")
        .iter()
        .filter(|i| field(i, "service") == "db-read")
        .map(|i| field(i, "address").split('/').next().unwrap().to_owned())
    {
        wait_answer(
            &replica,
            &format!("SELECT @@server_id > 2, count(*) FROM orders WHERE n = {last}"),
            "1\t1",
            Duration::from_secs(30),
        );
    }
}

/// `paracloud migrate` of a MariaDB primary with synchronous commits, under one-row inserts: its
/// successor loads a copy of it and replicates from it, the old primary turns read-only, ends its
/// clients' connections and stops once its replicas were sent all it logged, and the successor
/// takes over once it applied all of it: no committed row is lost, twice in a row, and the
/// replicas are renewed from the new primary, whose server id is the next one.
#[test]
fn a_primary_migrates_by_switchover_and_loses_no_commit() {
    let p = Platform::new();
    up(&p, "md", &manifest(1, "synchronous = true"));
    let write = service_address(&p, "md", "db");
    sql_ok(&write, "CREATE TABLE writes (n int PRIMARY KEY)");
    let insert = |n: u64| sql(&write, &format!("INSERT INTO writes VALUES ({n})")).is_ok();
    let present = || {
        sql_ok(&write, "SELECT n FROM writes")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let replica_has = |replica: &str, last: u64| {
        sql(
            replica,
            &format!("SELECT count(*) FROM writes WHERE n = {last}"),
        )
        .is_ok_and(|answer| answer == "1")
    };
    p.switch_over_twice(
        ("md", "db"),
        ["data.1", "data.2"],
        insert,
        present,
        replica_has,
    );
    // Restarted (by the helper), the primary is back on the data it took over, writable, under
    // its server id.
    assert_eq!(sql_ok(&write, "SELECT @@read_only, @@server_id"), "0\t3");
}
