//! A driver without a kernel, for unit tests of the engine: instances are entries in a table
//! whose processes end when a test (or a stop signal) says so. Each service's behaviour is
//! scripted by its command (`argv[0]`), so the manifest of a test says what its instances do:
//!
//! - `serve`: runs until SIGTERM or SIGKILL;
//! - `stubborn`: ignores SIGTERM, ends on SIGKILL;
//! - `crash`: exits with code 1 at once;
//! - `fail-start`: its start fails (as a missing program would).
//!
//! Exec checks (health) answer what [`FakeDriver::set_exec`] last set for the instance (0
//! unless told). Everything the engine asked for is kept, in order, for the test to read.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use paracloud_runtime::{
    CapsuleConfig, Checkpoint, Error, ExecOutput, Exit, InstanceConfig, NetworkConfig, Process,
    Result, Usage,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::driver::Driver;
use crate::sync::lock;

/// What the engine asked the driver for.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Start { id: String, cpu: Option<f64> },
    Signal { id: String, signal: Signal },
    SetCpu { id: String, cpu: Option<f64> },
    EnsureNetwork { bridge: String },
    RemoveNetwork { bridge: String },
}

struct Instance {
    id: String,
    argv0: String,
    exit: watch::Sender<Option<Exit>>,
}

#[derive(Default)]
struct Table {
    /// By pid.
    instances: HashMap<i32, Instance>,
    next_pid: i32,
    calls: Vec<(Instant, Call)>,
    exec: BTreeMap<String, i32>,
    /// Ids started while an instance of the same id still ran.
    duplicates: Vec<String>,
    /// Why setting up a network fails, when it does.
    network_failure: Option<String>,
}

#[derive(Clone, Default)]
pub struct FakeDriver {
    table: Arc<Mutex<Table>>,
}

fn unsupported(what: &str) -> Error {
    Error::Io(std::io::Error::other(format!(
        "the fake driver does not {what}"
    )))
}

impl FakeDriver {
    /// Every call so far, with when it came (tokio's clock).
    pub fn calls(&self) -> Vec<(Instant, Call)> {
        lock(&self.table).calls.clone()
    }

    /// When each start of the instance `id` came.
    pub fn starts_of(&self, id: &str) -> Vec<Instant> {
        self.calls()
            .into_iter()
            .filter_map(|(at, call)| {
                matches!(&call, Call::Start { id: i, .. } if i == id).then_some(at)
            })
            .collect()
    }

    /// The signals the instance `id` was sent, in order.
    pub fn signals_of(&self, id: &str) -> Vec<Signal> {
        self.calls()
            .into_iter()
            .filter_map(|(_, call)| match call {
                Call::Signal { id: i, signal } if i == id => Some(signal),
                _ => None,
            })
            .collect()
    }

    /// The CPU limits written for the instance `id`, at its start and after.
    pub fn cpu_of(&self, id: &str) -> Vec<Option<f64>> {
        self.calls()
            .into_iter()
            .filter_map(|(_, call)| match call {
                Call::Start { id: i, cpu } | Call::SetCpu { id: i, cpu } if i == id => Some(cpu),
                _ => None,
            })
            .collect()
    }

    /// The ids of the instances running now.
    pub fn running(&self) -> Vec<String> {
        let table = lock(&self.table);
        let mut ids: Vec<String> = table
            .instances
            .values()
            .filter(|i| i.exit.borrow().is_none())
            .map(|i| i.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The ids that were started while an instance of the same id still ran: the engine must
    /// never do that (two processes in one cgroup, one of them untracked).
    pub fn duplicates(&self) -> Vec<String> {
        lock(&self.table).duplicates.clone()
    }

    /// Networks fail to set up with `message` from now on (`None`: they work).
    pub fn fail_networks(&self, message: Option<&str>) {
        lock(&self.table).network_failure = message.map(str::to_owned);
    }

    /// What exec checks in the instance `id` exit with from now on.
    pub fn set_exec(&self, id: &str, code: i32) {
        lock(&self.table).exec.insert(id.to_owned(), code);
    }

    fn record(&self, call: Call) {
        lock(&self.table).calls.push((Instant::now(), call));
    }

    fn end(instance: &Instance, exit: Exit) {
        instance.exit.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(exit);
            }
            first
        });
    }
}

impl Driver for FakeDriver {
    fn ensure_network(&self, network: &NetworkConfig) -> impl Future<Output = Result<()>> + Send {
        self.record(Call::EnsureNetwork {
            bridge: network.bridge.clone(),
        });
        let failure = lock(&self.table).network_failure.clone();
        async move {
            match failure {
                Some(message) => Err(Error::Network(message)),
                None => Ok(()),
            }
        }
    }

    fn remove_network(&self, bridge: &str) -> impl Future<Output = Result<()>> + Send {
        self.record(Call::RemoveNetwork {
            bridge: bridge.to_owned(),
        });
        async { Ok(()) }
    }

    fn start(&self, config: &InstanceConfig) -> impl Future<Output = Result<Process>> + Send {
        self.record(Call::Start {
            id: config.id.clone(),
            cpu: config.limits.cpu,
        });
        let argv0 = config.argv.first().cloned().unwrap_or_default();
        let started = (|| {
            if argv0 == "fail-start" {
                return Err(Error::Sandbox {
                    id: config.id.clone(),
                    message: "fail-start: no such program".into(),
                });
            }
            // Any descriptor stands for the pidfd: the fake never waits on it.
            let pidfd = OwnedFd::from(std::fs::File::open("/dev/null")?);
            let mut table = lock(&self.table);
            let twice = table
                .instances
                .values()
                .any(|i| i.id == config.id && i.exit.borrow().is_none());
            if twice {
                table.duplicates.push(config.id.clone());
            }
            table.next_pid += 1;
            let pid = 100_000 + table.next_pid;
            let (exit, _) = watch::channel(None);
            let instance = Instance {
                id: config.id.clone(),
                argv0: argv0.clone(),
                exit,
            };
            if argv0 == "crash" {
                Self::end(
                    &instance,
                    Exit {
                        code: Some(1),
                        signal: None,
                        oom_killed: false,
                    },
                );
            }
            table.instances.insert(pid, instance);
            Ok(Process {
                pid,
                start_time: pid as u64,
                pidfd,
                is_child: true,
            })
        })();
        async move { started }
    }

    async fn checkpoint<'a>(
        &'a self,
        _criu: &'a Path,
        _process: &'a Process,
        _config: &'a InstanceConfig,
        _images: &'a Path,
    ) -> Result<Checkpoint> {
        Err(unsupported("checkpoint"))
    }

    async fn restore<'a>(
        &'a self,
        _criu: &'a Path,
        _config: &'a InstanceConfig,
        _checkpoint: &'a Checkpoint,
    ) -> Result<Process> {
        Err(unsupported("restore"))
    }

    fn adopt(&self, _pid: i32, _start_time: u64) -> Result<Option<Process>> {
        Ok(None)
    }

    fn wait<'a>(
        &'a self,
        _id: &'a str,
        process: &'a Process,
    ) -> impl Future<Output = Result<Exit>> + Send + 'a {
        let exit = lock(&self.table)
            .instances
            .get(&process.pid)
            .map(|i| i.exit.subscribe());
        async move {
            let Some(mut exit) = exit else {
                return Err(unsupported("know this process"));
            };
            let ended = exit
                .wait_for(Option::is_some)
                .await
                .map_err(|_| unsupported("keep this process"))?;
            ended
                .clone()
                .ok_or_else(|| unsupported("know how this process ended"))
        }
    }

    fn signal(&self, process: &Process, signal: Signal) -> Result<()> {
        let table = lock(&self.table);
        let Some(instance) = table.instances.get(&process.pid) else {
            return Ok(());
        };
        let id = instance.id.clone();
        let ends = match signal {
            Signal::SIGKILL => true,
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => instance.argv0 != "stubborn",
            _ => false,
        };
        if ends {
            Self::end(
                instance,
                Exit {
                    code: None,
                    signal: Some(signal as i32),
                    oom_killed: false,
                },
            );
        }
        drop(table);
        self.record(Call::Signal { id, signal });
        Ok(())
    }

    fn cleanup(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    fn set_cpu(&self, id: &str, cpu: Option<f64>) -> Result<()> {
        self.record(Call::SetCpu {
            id: id.to_owned(),
            cpu,
        });
        Ok(())
    }

    fn usage(&self, _id: &str) -> Result<Usage> {
        Ok(Usage::default())
    }

    fn holds(&self, _id: &str, _pid: i32) -> bool {
        // A fake instance has no processes.
        false
    }

    fn exec<'a>(
        &'a self,
        process: &'a Process,
        _argv: &'a [String],
        _env: &'a [(String, String)],
        _timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send + 'a {
        let table = lock(&self.table);
        let code = table
            .instances
            .get(&process.pid)
            .and_then(|i| table.exec.get(&i.id).copied())
            .unwrap_or(0);
        drop(table);
        let output = ExecOutput {
            code,
            stdout: Vec::new(),
            stderr: if code == 0 {
                Vec::new()
            } else {
                format!("check failed with {code}\n").into_bytes()
            },
        };
        async move { Ok(output) }
    }

    fn attach(
        &self,
        _target: &Process,
        _capsule: &CapsuleConfig,
        _terminal: Option<OwnedFd>,
    ) -> Result<tokio::process::Child> {
        Err(unsupported("attach capsules"))
    }

    fn detach(&self, _capsule: &CapsuleConfig) -> Result<()> {
        Ok(())
    }

    fn ready_capsules(&self) -> Result<()> {
        Ok(())
    }
}
