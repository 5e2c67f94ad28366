//! The `paracloud` binary: the command line, and the hidden entry points of the processes it
//! re-executes (the daemon, the data plane, sandbox-init and nsexec).

mod access;
mod agent_exec;
mod arguments;
mod capsule;
mod catalog;
mod cli;
mod client;
mod cluster_migrate;
mod commands;
mod contexts;
mod docker_config;
mod install;
mod kubernetes;
mod manifests;
mod output;
mod tasks;

use clap::Parser;

fn main() {
    // Sandbox-init and nsexec run in fresh single-threaded processes: before anything else.
    paracloud_runtime::run_hidden_command_if_requested();
    let cli = cli::Cli::parse();
    // `paracloud events | head`: the other commands end quietly when their reader goes; the
    // daemon and the data plane keep their standard output on a log and report every failure.
    if !matches!(
        cli.command,
        cli::Command::Daemon { install: false, .. }
            | cli::Command::Dataplane { .. }
            | cli::Command::NodeAgent { .. }
    ) {
        paracloud_runtime::end_quietly_on_broken_pipe();
    }
    if let Err(e) = commands::run(cli) {
        let broken_pipe = e.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            paracloud_runtime::end_if_stdout_reader_gone();
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
