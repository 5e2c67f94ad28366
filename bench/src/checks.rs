//! What the catalogue's health checks cost a database server, against the exec probe its peers
//! run: CPU per check, counted in the instance's cgroup, in one run on one machine.
//!
//! Every second the daemon runs the catalogue's `ready` in each database instance: it says
//! whether the server answers and prints the server's own query count (the load model's input).
//! The peer is the probe a Kubernetes chart or a Compose file runs for the same server and that
//! says only whether it answers: `pg_isready`, `mariadb-admin ping`, `redis-cli ping`.
//!
//! Method: one application with a PostgreSQL, a MariaDB and a Redis of the catalogue (no
//! replica, no client). For each server, rounds alternate the two commands, each run `runs`
//! times back to back in the instance: its namespaces (nsenter), its environment, and its
//! cgroup, so that what the check's programs and the server's work for them cost is counted in
//! the instance's CPU usage. The server's own idle CPU over as long (which includes the daemon's
//! own check, once a second) is measured between rounds and taken off.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use paracloud_runtime::cgroups::CgroupManager;

use crate::platform::Platform;
use crate::stats::Summary;

const APP: &str = "checks";
const ENTRY: &str = "/usr/local/lib/paracloud/catalog";

#[derive(Debug, Clone)]
pub struct ChecksOptions {
    /// Checks run back to back in one measurement.
    pub runs: usize,
    /// Measurements of each command, alternated.
    pub rounds: usize,
    pub subnet: Ipv4Net,
}

#[derive(Debug, Serialize)]
pub struct CheckCost {
    pub server: String,
    /// The peer's probe, as run.
    pub probe: String,
    /// CPU per check of the catalogue's `ready`, in microseconds, one figure per round.
    pub ready_us: Vec<f64>,
    /// CPU per check of the peer's probe, in microseconds, one figure per round.
    pub probe_us: Vec<f64>,
    /// The server's CPU per second when nothing but the daemon's own check runs, in microseconds.
    pub idle_us_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ChecksReport {
    pub runs: usize,
    pub rounds: usize,
    pub costs: Vec<CheckCost>,
}

/// The password each server gets in its manifest.
const PASSWORD: &str = "bench-password";

/// Each server of the application: its service, catalogue name, the variable of its password
/// (which the server may have written its title over in its process's environment), and the
/// peer's probe (argv inside the instance).
const SERVERS: &[(&str, &str, &str, &[&str])] = &[
    (
        "pg",
        "postgres",
        "POSTGRES_PASSWORD",
        &[
            "/usr/lib/postgresql/15/bin/pg_isready",
            "-q",
            "-h",
            "/tmp",
            "-p",
            "5432",
            "-U",
            "postgres",
        ],
    ),
    (
        "my",
        "mariadb",
        "MARIADB_ROOT_PASSWORD",
        &[
            "/usr/bin/mariadb-admin",
            "--no-defaults",
            "--user=root",
            "--socket=/tmp/mysqld.sock",
            "ping",
        ],
    ),
    (
        "rd",
        "redis",
        "REDIS_PASSWORD",
        &[
            "/usr/bin/redis-cli",
            "-h",
            "127.0.0.1",
            "-p",
            "6379",
            "--no-auth-warning",
            "-a",
            PASSWORD,
            "ping",
        ],
    ),
];

fn manifest() -> String {
    let mut text = format!("app = \"{APP}\"\n");
    for (service, catalog, password, _) in SERVERS {
        text.push_str(&format!(
            "\n[services.{service}]\ncatalog = \"{catalog}\"\nreplicas = 0\nenv = {{ {password} = \"{PASSWORD}\" }}\n"
        ));
    }
    text
}

/// A running instance as the measurement reaches it: its pid, environment and cgroup.
struct Instance {
    pid: i32,
    env: Vec<(String, String)>,
    /// The instance's id: its cgroup's name under the platform's cgroup parent.
    id: String,
    cgroups: Box<dyn CgroupManager>,
}

impl Instance {
    fn of(pid: i32, password: &str, cgroup_parent: &str) -> Result<Self> {
        let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
        let mut env: Vec<(String, String)> = environ
            .split(|b| *b == 0)
            .filter_map(|pair| {
                let text = String::from_utf8_lossy(pair);
                let (key, value) = text.split_once('=')?;
                Some((key.to_owned(), value.to_owned()))
            })
            .collect();
        env.retain(|(key, _)| key != password);
        env.push((password.to_owned(), PASSWORD.to_owned()));
        let prefix = format!("/{cgroup_parent}/");
        let id = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?
            .lines()
            .find_map(|line| Some(line.split_once(&prefix)?.1.to_owned()))
            .with_context(|| format!("pid {pid} is in no cgroup under {cgroup_parent}"))?;
        let cgroups =
            paracloud_runtime::cgroups::detect(Path::new("/sys/fs/cgroup"), cgroup_parent)?;
        Ok(Self {
            pid,
            env,
            id,
            cgroups,
        })
    }

    /// The instance's CPU time so far, in microseconds.
    fn cpu_us(&self) -> Result<f64> {
        Ok(self.cgroups.usage(&self.id)?.cpu_usage_ns as f64 / 1000.0)
    }

    /// Runs `argv` in the instance, in its cgroup, and checks that it succeeded. The shell
    /// joins the cgroups as an instance's first process does (its v1 `tasks` files, and the
    /// cgroup2 directory), then becomes nsenter.
    fn run(&self, argv: &[&str]) -> Result<()> {
        let mut join = String::new();
        for file in self.cgroups.join_files(&self.id) {
            join.push_str(&format!("echo 0 > '{}' && ", file.display()));
        }
        if let Some(dir) = self.cgroups.clone_into_dir(&self.id) {
            join.push_str(&format!(
                "echo $$ > '{}' && ",
                dir.join("cgroup.procs").display()
            ));
        }
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                r#"{join}exec nsenter -t "$0" -m -u -i -n -p -r -w -- "$@""#
            ))
            .arg(self.pid.to_string())
            .args(argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "{argv:?} in the instance: {status}");
        Ok(())
    }

    /// CPU per run of `argv`, `runs` times back to back, less the idle CPU over as long.
    fn per_run_us(&self, argv: &[&str], runs: usize, idle_us_per_s: f64) -> Result<f64> {
        let (cpu, started) = (self.cpu_us()?, Instant::now());
        for _ in 0..runs {
            self.run(argv)?;
        }
        let used = self.cpu_us()? - cpu - idle_us_per_s * started.elapsed().as_secs_f64();
        Ok(used / runs as f64)
    }

    /// The instance's CPU per second over `span` with nothing run in it.
    fn idle_us_per_s(&self, span: Duration) -> Result<f64> {
        let (cpu, started) = (self.cpu_us()?, Instant::now());
        std::thread::sleep(span);
        Ok((self.cpu_us()? - cpu) / started.elapsed().as_secs_f64())
    }
}

pub fn run(opts: &ChecksOptions, scratch: &Path) -> Result<ChecksReport> {
    let paracloud = std::env::current_exe()?.with_file_name("paracloud");
    let mut platform = Platform::start(
        &paracloud,
        &scratch.join("root"),
        opts.subnet,
        "checks",
        APP,
    )?;
    let dir = scratch.join("app");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("paracloud.toml");
    std::fs::write(&path, manifest())?;
    platform.cli(&["up", "--timeout", "600s", "-f"], Some(&path))?;
    platform.up = true;
    let ps = platform.ps()?;
    let mut costs = Vec::new();
    for (service, catalog, password, probe) in SERVERS {
        let pid = ps
            .iter()
            .find(|i| i.instance == format!("{service}.1"))
            .and_then(|i| i.pid)
            .with_context(|| format!("no running {service}.1"))?;
        let instance = Instance::of(pid, password, &platform.cgroup_parent)?;
        let ready = [ENTRY, "ready"];
        // Once each first: the programs' pages in memory, as the daemon's checks keep them.
        instance.run(&ready)?;
        instance.run(probe)?;
        let mut cost = CheckCost {
            server: (*catalog).to_owned(),
            probe: probe.join(" "),
            ready_us: Vec::new(),
            probe_us: Vec::new(),
            idle_us_per_s: 0.0,
        };
        let mut idle = Vec::new();
        for round in 0..opts.rounds {
            let idle_now = instance.idle_us_per_s(Duration::from_secs(3))?;
            idle.push(idle_now);
            // Each round starts with the other command.
            let order: [(&[&str], bool); 2] = if round % 2 == 0 {
                [(&ready, true), (probe, false)]
            } else {
                [(probe, false), (&ready, true)]
            };
            for (argv, is_ready) in order {
                let us = instance.per_run_us(argv, opts.runs, idle_now)?;
                if is_ready {
                    cost.ready_us.push(us);
                } else {
                    cost.probe_us.push(us);
                }
            }
            eprintln!(
                "checks: {catalog} round {}: ready {:.0} µs, probe {:.0} µs, idle {:.0} µs/s",
                round + 1,
                cost.ready_us.last().unwrap_or(&0.0),
                cost.probe_us.last().unwrap_or(&0.0),
                idle_now
            );
        }
        cost.idle_us_per_s = median(&idle);
        costs.push(cost);
    }
    Ok(ChecksReport {
        runs: opts.runs,
        rounds: opts.rounds,
        costs,
    })
}

fn median(values: &[f64]) -> f64 {
    Summary::of(values).map_or(0.0, |s| s.median_ms)
}

pub fn markdown(report: &ChecksReport) -> String {
    let mut out = format!(
        "## Health checks of the catalogue's databases\n\nCPU per check in the instance's cgroup \
         (its programs and the server's work for them), median of {} rounds of {} checks back to \
         back, the server's idle CPU taken off. At the daemon's interval of 1 s, 10,000 µs per \
         check is 1% of a core.\n\n| server | catalogue `ready` (µs) | peer probe (µs) | ready ÷ probe \
         | idle server (µs/s) | peer probe |\n|---|---|---|---|---|---|\n",
        report.rounds, report.runs
    );
    for cost in &report.costs {
        let (ready, probe) = (median(&cost.ready_us), median(&cost.probe_us));
        out.push_str(&format!(
            "| {} | {ready:.0} | {probe:.0} | {:.2} | {:.0} | `{}` |\n",
            cost.server,
            ready / probe.max(1.0),
            cost.idle_us_per_s,
            cost.probe
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_application_holds_one_server_of_each_database_with_its_password() {
        let origin = paracloud_manifest::Origin {
            file: "paracloud.toml".into(),
            base_dir: "/tmp".into(),
        };
        let parsed =
            paracloud_manifest::parse(&manifest(), &origin, &crate::autoscale_live::AnyPathExists)
                .unwrap();
        for (service, _, password, _) in SERVERS {
            let primary = &parsed.services[*service];
            assert_eq!(primary.replicas, 1, "{service}");
            assert_eq!(primary.env[*password], PASSWORD, "{service}");
            let replicas = &parsed.services[&format!("{service}-read")];
            assert_eq!(replicas.replicas, 0, "{service}");
        }
    }

    #[test]
    fn the_report_gives_each_servers_medians_and_their_ratio() {
        let report = ChecksReport {
            runs: 50,
            rounds: 3,
            costs: vec![CheckCost {
                server: "postgres".into(),
                probe: "pg_isready".into(),
                ready_us: vec![20_000.0, 22_000.0, 30_000.0],
                probe_us: vec![10_000.0, 11_000.0, 9_000.0],
                idle_us_per_s: 26_000.0,
            }],
        };
        let text = markdown(&report);
        assert!(
            text.contains("| postgres | 22000 | 10000 | 2.20 | 26000 | `pg_isready` |"),
            "{text}"
        );
    }
}
