//! The default seccomp profile of instances: an allow-list modelled on Docker's default profile.
//!
//! - [`ALLOWED`] (with [`ARCH_ALLOWED`]) is the list Docker's default profile allows to every
//!   container; [`CAP_GATED`] adds Docker's conditional entries for the capabilities the instance
//!   keeps (ptrace and the process_vm calls with CAP_SYS_PTRACE, clock_settime with
//!   CAP_SYS_TIME, ...).
//! - Stricter than Docker: [`NEVER`] (mounts old and new API, namespace changes, bpf, perf,
//!   userfaultfd, the keyring, handle-based opens, kexec, modules, reboot, swap, accounting) is
//!   refused whatever capabilities are kept, ptrace needs CAP_SYS_PTRACE on every kernel, and
//!   clone with a CLONE_NEW* flag is refused even with CAP_SYS_ADMIN.
//! - Arguments as Docker checks them: personality only with the values Docker allows (Linux
//!   and Linux32 personas, UNAME26, the query); socket for every family but AF_ALG and AF_VSOCK.
//! - Any other syscall fails with EPERM: the `defaultErrnoRet` of Docker's profile, which a
//!   program reads as "not allowed here" rather than "this kernel lacks it" (ENOSYS would send
//!   it looking for fallbacks that do not exist). Two exceptions fail with ENOSYS, so that libc
//!   falls back to calls the list checks: clone3, as in Docker's profile (its flags hide behind
//!   a pointer the filter cannot read), and numbers beyond the highest one listed (syscalls newer
//!   than the list, as Docker's runtime answers them; x32 calls on x86_64).
//!
//! Installed last before the exec (after no_new_privs), by sandbox-init, nsexec and capsules.
//! Syscall numbers are those of the build target (64-bit Linux: x86_64, aarch64).

use std::collections::BTreeMap;

use caps::{Capability, CapsHashSet};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the seccomp profile lists x86_64 and aarch64 syscalls only");

/// Syscalls the libc crate does not name yet. From 424 on, numbers are the same on every
/// architecture (the kernel's common syscall table).
mod nr {
    #[cfg(target_arch = "x86_64")]
    pub const IO_PGETEVENTS: i64 = 333;
    #[cfg(target_arch = "aarch64")]
    pub const IO_PGETEVENTS: i64 = 292;
    /// Entered only from the kernel's uretprobe trampoline (x86_64).
    #[cfg(target_arch = "x86_64")]
    pub const URETPROBE: i64 = 335;
    pub const CACHESTAT: i64 = 451;
    /// libc names it on x86_64 only.
    pub const FCHMODAT2: i64 = 452;
    pub const MAP_SHADOW_STACK: i64 = 453;
    pub const FUTEX_WAKE: i64 = 454;
    pub const FUTEX_WAIT: i64 = 455;
    pub const FUTEX_REQUEUE: i64 = 456;
    pub const STATMOUNT: i64 = 457;
    pub const LISTMOUNT: i64 = 458;
    pub const LSM_GET_SELF_ATTR: i64 = 459;
    pub const LSM_SET_SELF_ATTR: i64 = 460;
    pub const LSM_LIST_MODULES: i64 = 461;
    pub const SETXATTRAT: i64 = 463;
    pub const GETXATTRAT: i64 = 464;
    pub const LISTXATTRAT: i64 = 465;
    pub const REMOVEXATTRAT: i64 = 466;
}

/// Allowed to every instance: Docker's unconditional list, less the names that exist only on
/// 32-bit or other architectures.
const ALLOWED: &[i64] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_adjtimex,
    libc::SYS_bind,
    libc::SYS_brk,
    nr::CACHESTAT,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_chdir,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_getres,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_connect,
    libc::SYS_copy_file_range,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fadvise64,
    libc::SYS_fallocate,
    libc::SYS_fanotify_mark,
    libc::SYS_fchdir,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    nr::FCHMODAT2,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    libc::SYS_fremovexattr,
    libc::SYS_fsetxattr,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    nr::FUTEX_REQUEUE,
    nr::FUTEX_WAIT,
    libc::SYS_futex_waitv,
    nr::FUTEX_WAKE,
    libc::SYS_getcpu,
    libc::SYS_getcwd,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getgroups,
    libc::SYS_getitimer,
    libc::SYS_getpeername,
    libc::SYS_getpgid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getpriority,
    libc::SYS_getrandom,
    libc::SYS_getresgid,
    libc::SYS_getresuid,
    libc::SYS_getrlimit,
    libc::SYS_get_robust_list,
    libc::SYS_getrusage,
    libc::SYS_getsid,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_gettimeofday,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    nr::GETXATTRAT,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch,
    libc::SYS_io_cancel,
    libc::SYS_ioctl,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    nr::IO_PGETEVENTS,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_io_setup,
    libc::SYS_io_submit,
    libc::SYS_kill,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_restrict_self,
    libc::SYS_lgetxattr,
    libc::SYS_linkat,
    libc::SYS_listen,
    nr::LISTMOUNT,
    libc::SYS_listxattr,
    nr::LISTXATTRAT,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_lseek,
    libc::SYS_lsetxattr,
    libc::SYS_madvise,
    nr::MAP_SHADOW_STACK,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_memfd_secret,
    libc::SYS_mincore,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_mlockall,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mq_getsetattr,
    libc::SYS_mq_notify,
    libc::SYS_mq_open,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_unlink,
    libc::SYS_mremap,
    libc::SYS_mseal,
    libc::SYS_msgctl,
    libc::SYS_msgget,
    libc::SYS_msgrcv,
    libc::SYS_msgsnd,
    libc::SYS_msync,
    libc::SYS_munlock,
    libc::SYS_munlockall,
    libc::SYS_munmap,
    libc::SYS_name_to_handle_at,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pipe2,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_prlimit64,
    libc::SYS_process_mrelease,
    libc::SYS_pselect6,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_read,
    libc::SYS_readahead,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_recvmsg,
    libc::SYS_remap_file_pages,
    libc::SYS_removexattr,
    nr::REMOVEXATTRAT,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_getattr,
    libc::SYS_sched_getparam,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setattr,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_yield,
    libc::SYS_seccomp,
    libc::SYS_semctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_sendfile,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_setfsgid,
    libc::SYS_setfsuid,
    libc::SYS_setgid,
    libc::SYS_setgroups,
    libc::SYS_setitimer,
    libc::SYS_setpgid,
    libc::SYS_setpriority,
    libc::SYS_setregid,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
    libc::SYS_setreuid,
    libc::SYS_setrlimit,
    libc::SYS_set_robust_list,
    libc::SYS_setsid,
    libc::SYS_setsockopt,
    libc::SYS_set_tid_address,
    libc::SYS_setuid,
    libc::SYS_setxattr,
    nr::SETXATTRAT,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_shmget,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_signalfd4,
    libc::SYS_socketpair,
    libc::SYS_splice,
    libc::SYS_statfs,
    nr::STATMOUNT,
    libc::SYS_statx,
    libc::SYS_symlinkat,
    libc::SYS_sync,
    libc::SYS_sync_file_range,
    libc::SYS_syncfs,
    libc::SYS_sysinfo,
    libc::SYS_tee,
    libc::SYS_tgkill,
    libc::SYS_timer_create,
    libc::SYS_timer_delete,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_gettime,
    libc::SYS_timer_settime,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime,
    libc::SYS_times,
    libc::SYS_tkill,
    libc::SYS_truncate,
    libc::SYS_umask,
    libc::SYS_uname,
    libc::SYS_unlinkat,
    libc::SYS_utimensat,
    libc::SYS_vmsplice,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_write,
    libc::SYS_writev,
];

/// Docker's unconditional list, the names x86_64 has and aarch64 does not (the legacy
/// path-based calls among them), with arch_prctl and modify_ldt (Docker's amd64 entries).
#[cfg(target_arch = "x86_64")]
const ARCH_ALLOWED: &[i64] = &[
    libc::SYS_access,
    libc::SYS_alarm,
    libc::SYS_arch_prctl,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_creat,
    libc::SYS_dup2,
    libc::SYS_epoll_create,
    libc::SYS_epoll_ctl_old,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_wait_old,
    libc::SYS_eventfd,
    libc::SYS_fork,
    libc::SYS_futimesat,
    libc::SYS_get_thread_area,
    libc::SYS_getdents,
    libc::SYS_getpgrp,
    libc::SYS_inotify_init,
    libc::SYS_lchown,
    libc::SYS_link,
    libc::SYS_lstat,
    libc::SYS_mkdir,
    libc::SYS_mknod,
    libc::SYS_modify_ldt,
    libc::SYS_open,
    libc::SYS_pause,
    libc::SYS_pipe,
    libc::SYS_poll,
    libc::SYS_readlink,
    libc::SYS_rename,
    libc::SYS_rmdir,
    libc::SYS_select,
    libc::SYS_set_thread_area,
    libc::SYS_signalfd,
    libc::SYS_stat,
    libc::SYS_symlink,
    libc::SYS_time,
    libc::SYS_unlink,
    nr::URETPROBE,
    libc::SYS_utime,
    libc::SYS_utimes,
    libc::SYS_vfork,
];

/// aarch64 has none of Docker's architecture-specific entries (those of "arm64" are 32-bit ARM
/// calls).
#[cfg(target_arch = "aarch64")]
const ARCH_ALLOWED: &[i64] = &[];

/// Docker's entries allowed only with a capability. Docker's CAP_SYS_ADMIN entries here are
/// those outside [`NEVER`]; its clone and clone3 relaxations for CAP_SYS_ADMIN are not taken.
const CAP_GATED: &[(Capability, &[i64])] = &[
    (
        Capability::CAP_SYS_PTRACE,
        &[
            libc::SYS_kcmp,
            libc::SYS_pidfd_getfd,
            libc::SYS_process_madvise,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_ptrace,
        ],
    ),
    (
        Capability::CAP_SYS_TIME,
        &[libc::SYS_settimeofday, libc::SYS_clock_settime],
    ),
    (Capability::CAP_SYS_CHROOT, &[libc::SYS_chroot]),
    (
        Capability::CAP_SYS_NICE,
        &[
            libc::SYS_get_mempolicy,
            libc::SYS_mbind,
            libc::SYS_set_mempolicy,
            libc::SYS_set_mempolicy_home_node,
        ],
    ),
    (Capability::CAP_SYS_TTY_CONFIG, &[libc::SYS_vhangup]),
    (Capability::CAP_SYSLOG, &[libc::SYS_syslog]),
    #[cfg(target_arch = "x86_64")]
    (
        Capability::CAP_SYS_RAWIO,
        &[libc::SYS_iopl, libc::SYS_ioperm],
    ),
    (
        Capability::CAP_SYS_ADMIN,
        &[
            libc::SYS_fanotify_init,
            libc::SYS_lookup_dcookie,
            nr::LSM_GET_SELF_ATTR,
            nr::LSM_LIST_MODULES,
            nr::LSM_SET_SELF_ATTR,
            libc::SYS_quotactl,
            libc::SYS_quotactl_fd,
            libc::SYS_setdomainname,
            libc::SYS_sethostname,
            libc::SYS_syslog,
        ],
    ),
];

/// Never allowed, whatever capabilities are kept (Docker allows them with CAP_SYS_ADMIN,
/// CAP_SYS_BOOT, CAP_SYS_MODULE, CAP_SYS_PACCT, CAP_DAC_READ_SEARCH, CAP_BPF or CAP_PERFMON):
/// instances never need them.
const NEVER: &[i64] = &[
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

/// clone is refused with any of these flags (Docker's mask; CLONE_NEWTIME only takes effect
/// through clone3 and unshare).
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// personality(2) arguments Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32
/// and 0xffffffff (the query).
const PERSONAS: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

pub(crate) fn apply_default(kept: &CapsHashSet) -> Result<(), String> {
    let program = default_program(kept)?;
    seccompiler::apply_filter(&program)
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))
}

fn default_program(kept: &CapsHashSet) -> Result<BpfProgram, String> {
    let failed = |e: &dyn std::fmt::Display| format!("cannot build the seccomp filter: {e}");
    let dword = |op, value| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| failed(&e))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(ARCH_ALLOWED)
        .map(|nr| (*nr, Vec::new()))
        .collect();
    for (cap, syscalls) in CAP_GATED {
        if kept.contains(cap) {
            rules.extend(syscalls.iter().map(|nr| (*nr, Vec::new())));
        }
    }
    for nr in NEVER {
        rules.remove(nr);
    }
    // The flags are clone's first argument on x86_64 and aarch64 alike.
    let without_namespaces = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
        0,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(|e| failed(&e))?;
    rules.insert(libc::SYS_clone, vec![without_namespaces]);
    rules.insert(
        libc::SYS_personality,
        PERSONAS
            .iter()
            .map(|persona| dword(SeccompCmpOp::Eq, *persona))
            .collect::<Result<_, _>>()?,
    );
    // Every address family but AF_ALG (38) and AF_VSOCK (40), the one family between them (39)
    // included.
    rules.insert(
        libc::SYS_socket,
        vec![
            dword(SeccompCmpOp::Lt, libc::AF_ALG as u64)?,
            dword(SeccompCmpOp::Eq, libc::AF_ALG as u64 + 1)?,
            dword(SeccompCmpOp::Gt, libc::AF_VSOCK as u64)?,
        ],
    );
    let highest = *rules.keys().max().expect("a non-empty list");
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| failed(&e))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| failed(&e))?;
    let mut program: BpfProgram = filter.try_into().map_err(|e| failed(&e))?;
    // After seccompiler's 3-instruction architecture check.
    program.splice(3..3, enosys_prelude(highest));
    Ok(program)
}

/// clone3 and numbers above `highest` (newer syscalls; x32 calls, which carry bit 30) fail with
/// ENOSYS.
fn enosys_prelude(highest: i64) -> Vec<sock_filter> {
    // linux/bpf_common.h: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JGT|BPF_K, BPF_JMP|BPF_JEQ|BPF_K,
    // BPF_RET|BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGT_K: u16 = 0x25;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    let op = |code: u16, jt: u8, jf: u8, k: u32| sock_filter { code, jt, jf, k };
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    vec![
        op(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(BPF_JMP_JGT_K, 1, 0, highest as u32),
        op(BPF_JMP_JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        op(BPF_RET_K, 0, 0, enosys),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;

    /// Runs `program` as the kernel would on `struct seccomp_data` (little-endian) for a call.
    fn verdict(program: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &program[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                0x20 => {
                    let at = i.k as usize;
                    acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                }
                0x54 => acc &= i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += jump(acc == i.k),
                0x25 => pc += jump(acc > i.k),
                0x35 => pc += jump(acc >= i.k),
                0x06 => return i.k,
                code => panic!("instruction {code:#x} not interpreted"),
            }
        }
    }

    fn call(program: &[sock_filter], nr: i64, arg0: u64) -> u32 {
        verdict(program, AUDIT_ARCH, nr, [arg0, 0, 0, 0, 0, 0])
    }

    fn kept(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn the_profile_compiles_with_and_without_ptrace() {
        let none = default_program(&CapsHashSet::new()).unwrap();
        let ptrace = default_program(&kept(&[Capability::CAP_SYS_PTRACE])).unwrap();
        assert!(ptrace.len() > none.len(), "ptrace rules added");
        for nr in [
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
        ] {
            assert_eq!(call(&none, nr, 0), EPERM);
            assert_eq!(call(&ptrace, nr, 0), ALLOW);
        }
        // strace and gdb also need these, allowed to everyone.
        for nr in [libc::SYS_wait4, libc::SYS_waitid, libc::SYS_kill] {
            assert_eq!(call(&ptrace, nr, 0), ALLOW);
        }
        // The prelude sits right after the architecture check and ends in ENOSYS.
        let ret = none
            .iter()
            .skip(3)
            .find(|i| i.code == 0x06)
            .expect("a return");
        assert_eq!(ret.k, ENOSYS);
    }

    #[test]
    fn it_is_an_allow_list_with_eperm_as_the_default() {
        let program = default_program(&CapsHashSet::new()).unwrap();
        for nr in ALLOWED.iter().chain(ARCH_ALLOWED) {
            assert_eq!(call(&program, *nr, 0), ALLOW, "syscall {nr}");
        }
        // Not on Docker's list (io_uring, NUMA page moves, a removed call) or gated by a
        // capability that is not kept; all of them passed the former deny-list.
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_move_pages,
            libc::SYS_migrate_pages,
            libc::SYS_nfsservctl,
            libc::SYS_syslog,
            libc::SYS_vhangup,
            libc::SYS_chroot,
            libc::SYS_clock_settime,
            libc::SYS_sethostname,
            libc::SYS_kcmp,
        ] {
            assert_eq!(call(&program, nr, 0), EPERM, "syscall {nr}");
        }
        let time = default_program(&kept(&[Capability::CAP_SYS_TIME])).unwrap();
        assert_eq!(call(&time, libc::SYS_clock_settime, 0), ALLOW);
        assert_eq!(call(&time, libc::SYS_syslog, 0), EPERM);
        // Another architecture's calls are killed by seccompiler's check.
        assert_eq!(
            verdict(&program, 0x4000_0003, libc::SYS_read, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn mounts_namespaces_and_the_like_stay_refused_with_every_capability() {
        let all = default_program(&caps::all()).unwrap();
        for nr in NEVER {
            assert_eq!(call(&all, *nr, 0), EPERM, "syscall {nr}");
        }
        // Docker's own mask for clone without CAP_SYS_ADMIN.
        assert_eq!(CLONE_NAMESPACE_FLAGS, 0x7e02_0000);
        for program in [default_program(&CapsHashSet::new()).unwrap(), all] {
            let thread = (libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD) as u64;
            assert_eq!(call(&program, libc::SYS_clone, thread), ALLOW);
            assert_eq!(call(&program, libc::SYS_clone, libc::SIGCHLD as u64), ALLOW);
            for bit in 0..64 {
                let flag = 1u64 << bit;
                if CLONE_NAMESPACE_FLAGS & flag != 0 {
                    let flags = flag | libc::SIGCHLD as u64;
                    assert_eq!(call(&program, libc::SYS_clone, flags), EPERM, "{flag:#x}");
                }
            }
            // clone3 and what lies beyond the list: ENOSYS, so that libc falls back.
            assert_eq!(call(&program, libc::SYS_clone3, 0), ENOSYS);
            assert_eq!(call(&program, 467, 0), ENOSYS);
            assert_eq!(call(&program, 1000, 0), ENOSYS);
            #[cfg(target_arch = "x86_64")]
            assert_eq!(call(&program, 0x4000_0000 | libc::SYS_read, 0), ENOSYS);
        }
    }

    #[test]
    fn personality_and_socket_arguments_are_checked_as_docker_does() {
        let program = default_program(&caps::all()).unwrap();
        for persona in PERSONAS {
            assert_eq!(call(&program, libc::SYS_personality, *persona), ALLOW);
        }
        // PER_BSD; ADDR_NO_RANDOMIZE (gdb's attempt to turn ASLR off, refused as by Docker).
        for persona in [0x6, 0x4_0000] {
            assert_eq!(call(&program, libc::SYS_personality, persona), EPERM);
        }
        for family in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
            39,
            44,
        ] {
            assert_eq!(call(&program, libc::SYS_socket, family as u64), ALLOW);
        }
        for family in [libc::AF_ALG, libc::AF_VSOCK] {
            assert_eq!(call(&program, libc::SYS_socket, family as u64), EPERM);
        }
    }
}
