//! The `paracloud` binary: the command line, and the hidden entry points of the processes it
//! re-executes (the daemon, the data plane, sandbox-init and nsexec).

mod access;
mod arguments;
mod capsule;
mod cli;
mod client;
mod commands;
mod contexts;
mod docker_config;
mod install;
mod kubernetes;
mod manifests;
mod output;

use clap::Parser;

fn main() {
    // Sandbox-init and nsexec run in fresh single-threaded processes: before anything else.
    paracloud_runtime::run_hidden_command_if_requested();
    let cli = cli::Cli::parse();
    // `paracloud events | head`: the other commands end quietly when their reader goes; the
    // daemon and the data plane write to sockets and must not.
    if !matches!(
        cli.command,
        cli::Command::Daemon { install: false, .. }
            | cli::Command::Dataplane { .. }
            | cli::Command::NodeAgent { .. }
    ) {
        paracloud_runtime::end_quietly_on_broken_pipe();
    }
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
