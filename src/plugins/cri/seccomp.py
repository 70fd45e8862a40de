"""containerd's default seccomp profile (``contrib/seccomp``) and the CRI's choice of profile
(``internal/cri/sputil/seccomp_linux.go``): what ``RuntimeDefault``, ``Unconfined`` and
``Localhost`` put in a container's spec.

The profile allows a fixed list of system calls, the calls each bounding capability needs, and
``clone`` without new namespaces unless CAP_SYS_ADMIN is there; every other call fails with EPERM
(``clone3`` with ENOSYS, so a C library falls back to ``clone``). Names the host's libseccomp does
not know are skipped by the runtime, as with containerd.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.plugins.runtimes import spec as specs

__all__ = [
    "SecurityProfile",
    "apparmor_spec_opt",
    "default_seccomp_profile",
    "host_supports_seccomp",
    "profile_from_path",
    "seccomp_spec_opt",
]

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
ENOSYS = 38
AF_ALG = 38
AF_VSOCK = 40
CLONE_NEW_NAMESPACES = 0x20000 | 0x4000000 | 0x8000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x02000000
RUNTIME_DEFAULT, UNCONFINED, LOCALHOST = "RuntimeDefault", "Unconfined", "Localhost"
PROFILE_NAME_PREFIX = "localhost/"

ALLOWED_SYSCALLS = (
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
)

_ARCHES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
    "s390x": ("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
    "loongarch64": ("SCMP_ARCH_LOONGARCH64",),
}
_ARCH_SYSCALLS = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": (
        "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls",
    ),
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache", "riscv_hwprobe"),
}  # fmt: skip
_CAPABILITY_SYSCALLS: Mapping[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
        "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
        "umount2", "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": (
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace",
    ),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}  # fmt: skip


def _kernel(release: str | None) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _allow(*names: str, args: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": list(names), "action": ALLOW}
    if args:
        rule["args"] = [dict(a) for a in args]
    return rule


def _arg(index: int, value: int, op: str) -> dict[str, Any]:
    return {"index": index, "value": value, "op": op}


def default_seccomp_profile(
    bounding: Sequence[str], machine: str | None = None, kernel_release: str | None = None
) -> dict[str, Any]:
    """containerd's ``seccomp.DefaultProfile`` for a process whose bounding capabilities are
    ``bounding``, on the host's architecture (``machine`` as ``uname -m`` names it)."""
    arch = machine or platform.machine()
    syscalls = [
        _allow(*ALLOWED_SYSCALLS),
        # socket(2) for every family but AF_ALG and AF_VSOCK: three single-condition ranges.
        _allow("socket", args=[_arg(0, AF_ALG, "SCMP_CMP_LT")]),
        _allow("socket", args=[_arg(0, AF_ALG + 1, "SCMP_CMP_EQ")]),
        _allow("socket", args=[_arg(0, AF_VSOCK, "SCMP_CMP_GT")]),
        *(
            _allow("personality", args=[_arg(0, persona, "SCMP_CMP_EQ")])
            for persona in (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
        ),
    ]
    if _kernel(kernel_release) >= (4, 8):
        syscalls.append(_allow("process_vm_readv", "process_vm_writev", "ptrace"))
    if arch in _ARCH_SYSCALLS:
        syscalls.append(_allow(*_ARCH_SYSCALLS[arch]))
    admin = False
    for cap in bounding:
        if cap == "CAP_SYS_ADMIN":
            admin = True
        if cap in _CAPABILITY_SYSCALLS:
            syscalls.append(_allow(*_CAPABILITY_SYSCALLS[cap]))
    if not admin:
        index = 1 if arch == "s390x" else 0
        # valueTwo is 0, which the spec's JSON leaves out (omitempty)
        syscalls.append(_allow("clone", args=[_arg(index, CLONE_NEW_NAMESPACES, "SCMP_CMP_MASKED_EQ")]))
        syscalls.append({"names": ["clone3"], "action": ERRNO, "errnoRet": ENOSYS})
    profile: dict[str, Any] = {"defaultAction": ERRNO}
    if _ARCHES.get(arch):
        profile["architectures"] = list(_ARCHES[arch])
    profile["syscalls"] = syscalls
    return profile


@dataclass(frozen=True)
class SecurityProfile:
    """A CRI SecurityProfile: ``profile_type`` RuntimeDefault, Unconfined or Localhost."""

    profile_type: str = RUNTIME_DEFAULT
    localhost_ref: str = ""


def profile_from_path(path: str) -> SecurityProfile:
    """containerd's ``generateSecurityProfile``: the deprecated ``*_profile_path`` strings."""
    if path in ("runtime/default", "docker/default", ""):
        return SecurityProfile(RUNTIME_DEFAULT)
    if path == "unconfined":
        return SecurityProfile(UNCONFINED)
    if not path.startswith(PROFILE_NAME_PREFIX):
        raise ValueError(f'invalid profile "{path}"')
    return SecurityProfile(LOCALHOST, path.removeprefix(PROFILE_NAME_PREFIX))


def host_supports_seccomp() -> bool:
    """Whether the kernel filters with seccomp (containerd's ``seccomp.IsEnabled``)."""
    try:
        return any(line.startswith("Seccomp:") for line in Path("/proc/self/status").read_text().splitlines())
    except OSError:
        return False


def _with_localhost_profile(path: str) -> specs.SpecOpt:
    def opt(spec: specs.Spec) -> None:
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f'cannot load seccomp profile "{path}": {_go_open_error(path, exc)}') from None
        try:
            profile = json.loads(text)
            if not isinstance(profile, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise ValueError(f'decoding seccomp profile failed "{path}": {exc}') from None
        spec.setdefault("linux", {})["seccomp"] = profile

    return opt


def _go_open_error(path: str, exc: OSError) -> str:
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return f"open {path}: {reason}"


def _with_default_profile(spec: specs.Spec) -> None:
    bounding = spec.get("process", {}).get("capabilities", {}).get("bounding") or []
    spec.setdefault("linux", {})["seccomp"] = default_seccomp_profile(bounding)


def seccomp_spec_opt(
    profile: SecurityProfile | None, privileged: bool, enabled: bool | None = None
) -> specs.SpecOpt | None:
    """containerd's ``GenerateSeccompSpecOpts``: None leaves the spec without a filter. Must
    follow the capabilities: the default profile allows what the bounding set needs."""
    if privileged:
        return None
    if not (host_supports_seccomp() if enabled is None else enabled):
        if profile is not None and profile.profile_type != UNCONFINED:
            raise ValueError("seccomp is not supported")
        return None
    if profile is None:
        return None
    if profile.profile_type != LOCALHOST and profile.localhost_ref:
        raise ValueError("seccomp config invalid LocalhostRef must only be set if ProfileType is Localhost")
    if profile.profile_type == UNCONFINED:
        return None
    if profile.profile_type == RUNTIME_DEFAULT:
        return _with_default_profile
    if profile.profile_type == LOCALHOST:
        return _with_localhost_profile(profile.localhost_ref.removeprefix(PROFILE_NAME_PREFIX))
    raise ValueError("seccomp unknown ProfileType")


def apparmor_spec_opt(profile: SecurityProfile | None) -> None:
    """containerd's ``GenerateApparmorSpecOpts`` where the host has no AppArmor: corral loads no
    AppArmor profiles, so it answers as containerd does there, refusing any profile but Unconfined
    and leaving the spec without one."""
    if profile is not None and profile.profile_type != UNCONFINED:
        raise ValueError("apparmor is not supported")
