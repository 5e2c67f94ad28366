//! The default seccomp profile of instances: the dangerous syscalls Docker's default profile
//! blocks fail with EPERM, everything else is allowed.
//!
//! Installed last before the exec (after no_new_privs), by sandbox-init and by nsexec alike.
//! Syscall numbers are those of the build target (64-bit Linux: x86_64, aarch64).

use std::collections::BTreeMap;

use caps::{Capability, CapsHashSet};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Denied unconditionally: kernel modules and kexec, reboot, swap, accounting, bpf, perf,
/// userfaultfd, handle-based opens, the keyring, mounts (old and new API), namespace changes.
const DENIED: &[i64] = &[
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
];

/// Denied unless CAP_SYS_PTRACE is kept.
const TRACING: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
];

/// x32 system calls on x86_64 carry this bit; the deny list names x86_64 numbers only.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

pub(crate) fn apply_default(kept: &CapsHashSet) -> Result<(), String> {
    let program = default_program(kept)?;
    seccompiler::apply_filter(&program)
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))
}

fn default_program(kept: &CapsHashSet) -> Result<BpfProgram, String> {
    let failed = |e: &dyn std::fmt::Display| format!("cannot build the seccomp filter: {e}");
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    if !kept.contains(&Capability::CAP_SYS_PTRACE) {
        rules.extend(TRACING.iter().map(|nr| (*nr, Vec::new())));
    }
    // clone(CLONE_NEWUSER) would give the instance a user namespace with full capabilities in it.
    let newuser = libc::CLONE_NEWUSER as u64;
    let condition = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(newuser),
        newuser,
    )
    .map_err(|e| failed(&e))?;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![condition]).map_err(|e| failed(&e))?],
    );
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| failed(&e))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| failed(&e))?;
    let mut program: BpfProgram = filter.try_into().map_err(|e| failed(&e))?;
    // After seccompiler's 3-instruction architecture check: clone3 (whose flags hide behind a
    // pointer) and x32 calls fail with ENOSYS; libc then falls back to clone, which is checked.
    program.splice(3..3, enosys_prelude());
    Ok(program)
}

fn enosys_prelude() -> Vec<sock_filter> {
    // linux/bpf_common.h: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K,
    // BPF_RET|BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    let op = |code: u16, jt: u8, jf: u8, k: u32| sock_filter { code, jt, jf, k };
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut prelude = vec![op(BPF_LD_W_ABS, 0, 0, 0)]; // seccomp_data.nr
    if cfg!(target_arch = "x86_64") {
        prelude.push(op(BPF_JMP_JGE_K, 1, 0, X32_SYSCALL_BIT)); // to the ENOSYS return
    }
    prelude.push(op(BPF_JMP_JEQ_K, 0, 1, libc::SYS_clone3 as u32));
    prelude.push(op(BPF_RET_K, 0, 0, enosys));
    prelude
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_compiles_with_and_without_ptrace() {
        let none = default_program(&CapsHashSet::new()).unwrap();
        let ptrace: CapsHashSet = [Capability::CAP_SYS_PTRACE].into_iter().collect();
        let with_ptrace = default_program(&ptrace).unwrap();
        assert!(with_ptrace.len() < none.len(), "ptrace rules dropped");
        // The prelude sits right after the architecture check and ends in ENOSYS.
        let ret = none
            .iter()
            .skip(3)
            .find(|i| i.code == 0x06)
            .expect("a return");
        assert_eq!(ret.k, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    }
}
