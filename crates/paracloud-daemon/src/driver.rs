//! The seam between the reconcile loop and where instances run.
//!
//! The loop speaks to a [`Driver`]; the local driver is the embedded runtime (namespaces, cgroups,
//! overlayfs on this machine). A Kubernetes driver will implement the same trait.

use std::future::Future;
use std::time::Duration;

use nix::sys::signal::Signal;
use std::os::fd::OwnedFd;
use std::path::Path;

use paracloud_runtime::{
    CapsuleConfig, Checkpoint, ExecOutput, Exit, InstanceConfig, NetworkConfig, Process, Result,
    Runtime, Usage,
};

pub trait Driver: Send + Sync + 'static {
    fn ensure_network(&self, network: &NetworkConfig) -> impl Future<Output = Result<()>> + Send;
    fn remove_network(&self, bridge: &str) -> impl Future<Output = Result<()>> + Send;
    /// Starts an instance; returns once its command runs.
    fn start(&self, config: &InstanceConfig) -> impl Future<Output = Result<Process>> + Send;
    /// Checkpoints a running instance with CRIU into `images`, leaving it stopped (SIGCONT
    /// resumes it, SIGKILL ends it).
    fn checkpoint<'a>(
        &'a self,
        criu: &'a Path,
        process: &'a Process,
        config: &'a InstanceConfig,
        images: &'a Path,
    ) -> impl Future<Output = Result<Checkpoint>> + Send + 'a;
    /// Starts an instance from a checkpoint instead of its command.
    fn restore<'a>(
        &'a self,
        criu: &'a Path,
        config: &'a InstanceConfig,
        checkpoint: &'a Checkpoint,
    ) -> impl Future<Output = Result<Process>> + Send + 'a;
    /// Finds a process started by an earlier daemon; None when it is gone.
    fn adopt(&self, pid: i32, start_time: u64) -> Result<Option<Process>>;
    fn wait<'a>(
        &'a self,
        id: &'a str,
        process: &'a Process,
    ) -> impl Future<Output = Result<Exit>> + Send + 'a;
    fn signal(&self, process: &Process, signal: Signal) -> Result<()>;
    /// Removes whatever is left of an instance (processes, cgroup, interfaces).
    fn cleanup(&self, id: &str) -> Result<()>;
    /// Changes the CPU limit of a running instance, in cores (`None`: unlimited), at once.
    fn set_cpu(&self, id: &str, cpu: Option<f64>) -> Result<()>;
    /// What an instance has used so far (its cgroup's counters).
    fn usage(&self, id: &str) -> Result<Usage>;
    /// Whether the process `pid` (of the daemon's pid namespace) is one of the instance's.
    fn holds(&self, id: &str, pid: i32) -> bool;
    /// Runs a command inside an instance (a health check): its exit code and the end of its output.
    /// Runs `argv` in a running instance, with `env` (what the instance was configured with)
    /// over the environment its first process shows.
    fn exec<'a>(
        &'a self,
        process: &'a Process,
        argv: &'a [String],
        env: &'a [(String, String)],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send + 'a;
    /// Attaches a capsule to a running instance; `terminal` becomes its stdin, stdout and stderr
    /// (otherwise stdout and stderr are piped). Call [`Driver::detach`] once it has exited.
    fn attach(
        &self,
        target: &Process,
        capsule: &CapsuleConfig,
        terminal: Option<OwnedFd>,
    ) -> Result<tokio::process::Child>;
    /// Removes what is left of a capsule; blocks while the kernel finishes kills.
    fn detach(&self, capsule: &CapsuleConfig) -> Result<()>;
    /// Readies ahead what the next capsule attaches need, off their critical path.
    fn ready_capsules(&self) -> Result<()>;
}

/// The local driver: the embedded runtime.
impl Driver for Runtime {
    fn ensure_network(&self, network: &NetworkConfig) -> impl Future<Output = Result<()>> + Send {
        Runtime::ensure_network(self, network)
    }
    fn remove_network(&self, bridge: &str) -> impl Future<Output = Result<()>> + Send {
        Runtime::remove_network(self, bridge)
    }
    fn start(&self, config: &InstanceConfig) -> impl Future<Output = Result<Process>> + Send {
        Runtime::spawn(self, config)
    }
    fn checkpoint<'a>(
        &'a self,
        criu: &'a Path,
        process: &'a Process,
        config: &'a InstanceConfig,
        images: &'a Path,
    ) -> impl Future<Output = Result<Checkpoint>> + Send + 'a {
        Runtime::checkpoint(self, criu, process, config, images)
    }
    fn restore<'a>(
        &'a self,
        criu: &'a Path,
        config: &'a InstanceConfig,
        checkpoint: &'a Checkpoint,
    ) -> impl Future<Output = Result<Process>> + Send + 'a {
        Runtime::restore(self, criu, config, checkpoint)
    }
    fn adopt(&self, pid: i32, start_time: u64) -> Result<Option<Process>> {
        Runtime::adopt(self, pid, start_time)
    }
    fn wait<'a>(
        &'a self,
        id: &'a str,
        process: &'a Process,
    ) -> impl Future<Output = Result<Exit>> + Send + 'a {
        Runtime::wait(self, id, process)
    }
    fn signal(&self, process: &Process, signal: Signal) -> Result<()> {
        Runtime::signal(self, process, signal)
    }
    fn cleanup(&self, id: &str) -> Result<()> {
        Runtime::cleanup(self, id)
    }
    fn set_cpu(&self, id: &str, cpu: Option<f64>) -> Result<()> {
        Runtime::set_cpu(self, id, cpu)
    }
    fn usage(&self, id: &str) -> Result<Usage> {
        Runtime::usage(self, id)
    }
    fn holds(&self, id: &str, pid: i32) -> bool {
        Runtime::holds(self, id, pid)
    }
    fn exec<'a>(
        &'a self,
        process: &'a Process,
        argv: &'a [String],
        env: &'a [(String, String)],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send + 'a {
        Runtime::exec_output(self, process, argv, env, timeout)
    }
    fn attach(
        &self,
        target: &Process,
        capsule: &CapsuleConfig,
        terminal: Option<OwnedFd>,
    ) -> Result<tokio::process::Child> {
        Runtime::attach(self, target, capsule, terminal)
    }
    fn detach(&self, capsule: &CapsuleConfig) -> Result<()> {
        Runtime::detach(self, capsule)
    }
    fn ready_capsules(&self) -> Result<()> {
        self.keep_capsule_runners_warm()
    }
}
