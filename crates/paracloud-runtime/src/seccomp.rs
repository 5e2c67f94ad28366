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
use seccompiler::{sock_filter, BpfProgram};

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
    seccompiler::apply_filter(&default_program(kept))
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))
}

/// What the filter answers for one syscall number below the highest listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    Deny,
    /// Allowed for some first arguments only.
    Check(ArgumentCheck),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgumentCheck {
    /// clone without any of [`CLONE_NAMESPACE_FLAGS`].
    CloneWithoutNamespaces,
    /// personality with one of [`PERSONAS`].
    Persona,
    /// socket of any family but AF_ALG and AF_VSOCK.
    SocketFamily,
}

/// The verdict on every listed syscall for an instance keeping `kept`; unlisted ones are denied.
fn verdicts(kept: &CapsHashSet) -> BTreeMap<i64, Verdict> {
    let mut verdicts: BTreeMap<i64, Verdict> = ALLOWED
        .iter()
        .chain(ARCH_ALLOWED)
        .map(|nr| (*nr, Verdict::Allow))
        .collect();
    for (cap, syscalls) in CAP_GATED {
        if kept.contains(cap) {
            verdicts.extend(syscalls.iter().map(|nr| (*nr, Verdict::Allow)));
        }
    }
    for nr in NEVER {
        verdicts.remove(nr);
    }
    verdicts.insert(
        libc::SYS_clone,
        Verdict::Check(ArgumentCheck::CloneWithoutNamespaces),
    );
    verdicts.insert(
        libc::SYS_personality,
        Verdict::Check(ArgumentCheck::Persona),
    );
    verdicts.insert(
        libc::SYS_socket,
        Verdict::Check(ArgumentCheck::SocketFamily),
    );
    verdicts
}

// linux/bpf_common.h and linux/filter.h: the classic BPF instructions the filter uses.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`: the number, the architecture, the first argument's low
/// 32 bits (little-endian).
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARG0_LOW_OFFSET: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The default profile as a classic BPF program: the architecture check, the ENOSYS prelude,
/// then a binary search over the ranges of syscall numbers that share a verdict.
///
/// A linear list (one comparison per allowed syscall, about 1,600 instructions) costs the kernel
/// about 0.5 ms to install: it runs the filter for every syscall number to find the ones it
/// always allows, and JIT-compiles it. The search has about 160 instructions and any number
/// meets at most ten comparisons, which makes the install about ten times cheaper and every
/// filtered syscall of the instance cheaper too.
fn default_program(kept: &CapsHashSet) -> BpfProgram {
    let verdicts = verdicts(kept);
    let highest = *verdicts.keys().max().expect("a non-empty list");
    let mut program = vec![
        op(BPF_LD_W_ABS, 0, 0, ARCH_OFFSET),
        op(BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH),
        op(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    program.extend(enosys_prelude(highest));
    program.extend(search(&ranges(&verdicts, highest)));
    program
}

/// Consecutive numbers with the same verdict as one range (first number, verdict), from 0 to
/// `highest`; numbers missing from `verdicts` are denied.
fn ranges(verdicts: &BTreeMap<i64, Verdict>, highest: i64) -> Vec<(u32, Verdict)> {
    let mut ranges: Vec<(u32, Verdict)> = Vec::new();
    for nr in 0..=highest {
        let verdict = verdicts.get(&nr).copied().unwrap_or(Verdict::Deny);
        // A checked syscall is a range of its own: its check is for it alone.
        let same = ranges.last().map(|(_, last)| *last) == Some(verdict);
        if !same || matches!(verdict, Verdict::Check(_)) {
            ranges.push((nr as u32, verdict));
        }
    }
    ranges
}

/// The binary search over `ranges` (the syscall number in the accumulator): each comparison
/// splits the ranges in two halves; a single range is its verdict.
fn search(ranges: &[(u32, Verdict)]) -> Vec<sock_filter> {
    if let [(_, verdict)] = ranges {
        return leaf(*verdict);
    }
    let middle = ranges.len() / 2;
    let below = search(&ranges[..middle]);
    let above = search(&ranges[middle..]);
    let mut code = Vec::with_capacity(below.len() + above.len() + 2);
    match u8::try_from(below.len()) {
        Ok(skip) => code.push(op(BPF_JMP_JGE_K, skip, 0, ranges[middle].0)),
        // Too far for a conditional jump: an unconditional one over `below`.
        Err(_) => {
            code.push(op(BPF_JMP_JGE_K, 0, 1, ranges[middle].0));
            code.push(op(BPF_JMP_JA, 0, 0, below.len() as u32));
        }
    }
    code.extend(below);
    code.extend(above);
    code
}

fn leaf(verdict: Verdict) -> Vec<sock_filter> {
    let allow = op(BPF_RET_K, 0, 0, RET_ALLOW);
    let deny = op(BPF_RET_K, 0, 0, RET_EPERM);
    let load_arg0 = op(BPF_LD_W_ABS, 0, 0, ARG0_LOW_OFFSET);
    match verdict {
        Verdict::Allow => vec![allow],
        Verdict::Deny => vec![deny],
        // The mask has no bit in the high half of the flags.
        Verdict::Check(ArgumentCheck::CloneWithoutNamespaces) => vec![
            load_arg0,
            op(BPF_ALU_AND_K, 0, 0, CLONE_NAMESPACE_FLAGS as u32),
            op(BPF_JMP_JEQ_K, 0, 1, 0),
            allow,
            deny,
        ],
        Verdict::Check(ArgumentCheck::Persona) => {
            let mut code = vec![load_arg0];
            for (i, persona) in PERSONAS.iter().enumerate() {
                let to_allow = (PERSONAS.len() - i) as u8;
                code.push(op(BPF_JMP_JEQ_K, to_allow, 0, *persona as u32));
            }
            code.extend([deny, allow]);
            code
        }
        // Every family but AF_ALG (38) and AF_VSOCK (40), the one between them (39) included.
        Verdict::Check(ArgumentCheck::SocketFamily) => vec![
            load_arg0,
            op(BPF_JMP_JGT_K, 3, 0, libc::AF_VSOCK as u32),
            op(BPF_JMP_JEQ_K, 2, 0, libc::AF_ALG as u32 + 1),
            op(BPF_JMP_JGE_K, 0, 1, libc::AF_ALG as u32),
            deny,
            allow,
        ],
    }
}

/// clone3 and numbers above `highest` (newer syscalls; x32 calls, which carry bit 30) fail with
/// ENOSYS.
fn enosys_prelude(highest: i64) -> Vec<sock_filter> {
    vec![
        op(BPF_LD_W_ABS, 0, 0, NR_OFFSET),
        op(BPF_JMP_JGT_K, 1, 0, highest as u32),
        op(BPF_JMP_JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        op(BPF_RET_K, 0, 0, RET_ENOSYS),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    const ALLOW: u32 = RET_ALLOW;
    const EPERM: u32 = RET_EPERM;
    const ENOSYS: u32 = RET_ENOSYS;

    /// The same profile compiled by seccompiler (a linear list), as the reference the search
    /// must agree with on every call.
    fn reference_program(kept: &CapsHashSet) -> BpfProgram {
        let dword = |op, value| {
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                op,
                value,
            )
            .unwrap()])
            .unwrap()
        };
        let rules: BTreeMap<i64, Vec<SeccompRule>> = verdicts(kept)
            .into_iter()
            .map(|(nr, verdict)| {
                let rules = match verdict {
                    Verdict::Allow => Vec::new(),
                    Verdict::Deny => unreachable!("denied calls are not listed"),
                    Verdict::Check(ArgumentCheck::CloneWithoutNamespaces) => {
                        vec![SeccompRule::new(vec![SeccompCondition::new(
                            0,
                            SeccompCmpArgLen::Qword,
                            SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
                            0,
                        )
                        .unwrap()])
                        .unwrap()]
                    }
                    Verdict::Check(ArgumentCheck::Persona) => PERSONAS
                        .iter()
                        .map(|persona| dword(SeccompCmpOp::Eq, *persona))
                        .collect(),
                    Verdict::Check(ArgumentCheck::SocketFamily) => vec![
                        dword(SeccompCmpOp::Lt, libc::AF_ALG as u64),
                        dword(SeccompCmpOp::Eq, libc::AF_ALG as u64 + 1),
                        dword(SeccompCmpOp::Gt, libc::AF_VSOCK as u64),
                    ],
                };
                (nr, rules)
            })
            .collect();
        let highest = *rules.keys().max().unwrap();
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            arch,
        )
        .unwrap();
        let mut program: BpfProgram = filter.try_into().unwrap();
        program.splice(3..3, enosys_prelude(highest));
        program
    }

    /// First arguments worth trying: every flag bit alone and with SIGCHLD, small numbers
    /// (families, personas), the listed personas, values with a high half.
    fn first_arguments() -> Vec<u64> {
        let mut args: Vec<u64> = (0..64).map(|bit| 1u64 << bit).collect();
        args.extend((0..64).map(|bit| (1u64 << bit) | libc::SIGCHLD as u64));
        args.extend(0..64);
        args.extend(PERSONAS);
        args.extend(PERSONAS.iter().map(|p| p | 1 << 40));
        args.extend([0x6, 0x4_0000, u64::MAX, 0x7e02_0000, 0x1_0000_0000]);
        args
    }

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
    fn the_search_answers_every_call_as_the_linear_list_does() {
        use rand::Rng;
        let mut rng = rand::rng();
        for kept in [
            CapsHashSet::new(),
            kept(&[Capability::CAP_SYS_PTRACE, Capability::CAP_SYS_TIME]),
            caps::all(),
        ] {
            let ours = default_program(&kept);
            let reference = reference_program(&kept);
            assert!(ours.len() < 400, "{} instructions", ours.len());
            let mut args = first_arguments();
            args.extend((0..64).map(|_| rng.random::<u64>()));
            for nr in (0..600).chain([0x4000_0000, 0x4000_0001, u32::MAX as i64]) {
                let tried: &[u64] = match nr {
                    libc::SYS_clone | libc::SYS_personality | libc::SYS_socket => &args,
                    _ => &[0, u64::MAX],
                };
                for &arg in tried {
                    assert_eq!(
                        call(&ours, nr, arg),
                        call(&reference, nr, arg),
                        "syscall {nr}, first argument {arg:#x}"
                    );
                }
            }
            assert_eq!(
                verdict(&ours, 0x4000_0003, libc::SYS_read, [0; 6]),
                verdict(&reference, 0x4000_0003, libc::SYS_read, [0; 6]),
            );
        }
    }

    #[test]
    fn far_jumps_go_through_an_unconditional_one() {
        // More ranges than one conditional jump can skip: alternate verdicts.
        let ranges: Vec<(u32, Verdict)> = (0..600)
            .map(|nr| {
                let verdict = if nr % 2 == 0 {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
                (nr, verdict)
            })
            .collect();
        let mut program = vec![op(BPF_LD_W_ABS, 0, 0, NR_OFFSET)];
        program.extend(search(&ranges));
        assert!(program.iter().any(|i| i.code == BPF_JMP_JA));
        for nr in 0..600 {
            let expected = if nr % 2 == 0 { ALLOW } else { EPERM };
            assert_eq!(call(&program, nr, 0), expected, "{nr}");
        }
    }

    #[test]
    fn the_profile_compiles_with_and_without_ptrace() {
        let none = default_program(&CapsHashSet::new());
        let ptrace = default_program(&kept(&[Capability::CAP_SYS_PTRACE]));
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
        let program = default_program(&CapsHashSet::new());
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
        let time = default_program(&kept(&[Capability::CAP_SYS_TIME]));
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
        let all = default_program(&caps::all());
        for nr in NEVER {
            assert_eq!(call(&all, *nr, 0), EPERM, "syscall {nr}");
        }
        // Docker's own mask for clone without CAP_SYS_ADMIN.
        assert_eq!(CLONE_NAMESPACE_FLAGS, 0x7e02_0000);
        for program in [default_program(&CapsHashSet::new()), all] {
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
        let program = default_program(&caps::all());
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
