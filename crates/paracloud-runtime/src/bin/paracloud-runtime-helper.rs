//! A minimal binary for the runtime's hidden commands (sandbox-init, nsexec), used by the tests
//! as `RuntimeConfig::helper_exe`; the paracloud binary plays this role in production.

fn main() {
    paracloud_runtime::run_hidden_command_if_requested();
    eprintln!(
        "paracloud-runtime-helper: only the runtime's hidden commands (__sandbox-init, __nsexec) \
         are supported"
    );
    std::process::exit(2);
}
