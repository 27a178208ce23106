"""The seccomp profile docker and podman load into our containers (`--security-opt seccomp=`).

Compiled from the facts the bubblewrap/landlock filter is built from
(`backends.linux.seccomp`): its deny list, the socket families it keeps, the setuid/setgid
mode rule (no chmod 4755, no open(O_CREAT, 04755): a container started by root would
otherwise leave a setuid-root file in the workspace for any host user to run), the
namespace flags of clone(), clone3 and openat2 refused with ENOSYS (their arguments are
out of a filter's reach; libc falls back to clone and openat, which are checked).

Why an allow-list, when the BPF filter is a deny-list:

- A profile we pass *replaces* the engine's default, which is an allow-list; ours must not
  be weaker anywhere. It is that allow-list (moby's profiles/seccomp/default.json: what a
  container without capabilities may call) minus our deny list, with the argument-checked
  calls allowed only with harmless arguments. Whatever docker's default refuses, this
  refuses too (tested).
- The engine's libseccomp resolves names: one that does not know a newer call (fchmodat2,
  Linux 6.6) skips a rule naming it. Under a default of "allow" that call would then pass
  with any mode; here it is refused (runc and crun answer ENOSYS for calls newer than the
  profile's, and libc falls back to fchmodat, which is checked).
- Arguments are compared as 64-bit values: an allowed socket family matches only with the
  upper half clear, so a family hidden behind garbage upper bits is refused, not let through.

Foreign system call conventions (i386 `int 0x80`, x32) are not in the profile: libseccomp
kills the process that uses them, as the BPF filter does.

Not carried over: the TIOCSTI/TIOCLINUX refusal. libseccomp lets an unconditional allow of
ioctl win over a conditional refusal, and a container has no terminal of the host to push
input into (no `-t`; its own devpts).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
import threading
import weakref
from typing import Any

from mechasandbox.backends.linux.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    DEFAULT_DENIED,
    DEFAULT_SOCKET_FAMILIES,
    MODE_ARGUMENT,
    SETID_BITS,
)
from mechasandbox.leftovers import temp_prefix

# The calls docker's default profile allows a container without capabilities on every
# architecture (moby profiles/seccomp/default.json, its first and unconditional entry).
ENGINE_DEFAULT_ALLOWED: tuple[str, ...] = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset",
    "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
    "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv",
    "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
    "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid",
    "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup",
    "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod",
    "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr",
    "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd",
    "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep",
    "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2",
    "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget",
    "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn",
    "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx",
    "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill",
    "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat",
    "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4",
    "waitid", "waitpid", "write", "writev",
)  # fmt: skip
# ... and per architecture (its "includes": {"arches": ...} entries).
ENGINE_ARCH_ALLOWED: dict[str, tuple[str, ...]] = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": (
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
    ),
}
# The personality() values docker's default allows: the default domain, PER_LINUX32,
# UNAME26 and their union, and the query (0xffffffff).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
_ENOSYS = 38
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def machine_name(machine: str | None = None) -> str:
    """The kernel's name for the architecture (`platform.machine()` says arm64 on macOS)."""
    name = (machine or platform.machine()).lower()
    return _MACHINE_ALIASES.get(name, name)


def _allow(names: list[str] | tuple[str, ...], *args: dict[str, int | str]) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": list(names), "action": "SCMP_ACT_ALLOW"}
    if args:
        rule["args"] = list(args)
    return rule


def _argument(index: int, op: str, value: int, value_two: int = 0) -> dict[str, int | str]:
    # SCMP_CMP_MASKED_EQ: (argument & value) == valueTwo.
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def container_profile(machine: str | None = None) -> dict[str, Any] | None:
    """The profile as a JSON document for the engine; None where the architecture is not
    one the deny list has syscall numbers for (then the engine keeps its default)."""
    arch = machine_name(machine)
    if arch not in ENGINE_ARCH_ALLOWED:
        return None
    checked = {"clone", "clone3", "socket", "openat2", "personality", "prlimit64", *MODE_ARGUMENT}
    denied = set(DEFAULT_DENIED)
    plain = sorted(
        name
        for name in (*ENGINE_DEFAULT_ALLOWED, *ENGINE_ARCH_ALLOWED[arch])
        if name not in denied and name not in checked
    )
    rules: list[dict[str, Any]] = [_allow(plain)]
    by_index: dict[int, list[str]] = {}
    for name, index in MODE_ARGUMENT.items():
        by_index.setdefault(index, []).append(name)
    for index, names in sorted(by_index.items()):
        no_setid = _argument(index, "SCMP_CMP_MASKED_EQ", SETID_BITS, 0)
        rules.append(_allow(sorted(names), no_setid))
    rules += [
        _allow(["socket"], _argument(0, "SCMP_CMP_EQ", family))
        for family in sorted(DEFAULT_SOCKET_FAMILIES)
    ]
    rules.append(_allow(["clone"], _argument(0, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACE_FLAGS, 0)))
    rules += [
        _allow(["personality"], _argument(0, "SCMP_CMP_EQ", value)) for value in PERSONALITIES
    ]
    # prlimit64 on its own limits (pid 0), or reading another's (no new limit): setting
    # another process's needs only the same user ids (in a session: the agent's), as in
    # the host backends' program (`seccomp.py`, `deny_foreign_rlimits`).
    rules += [
        _allow(["prlimit64"], _argument(0, "SCMP_CMP_EQ", 0)),
        _allow(["prlimit64"], _argument(2, "SCMP_CMP_EQ", 0)),
    ]
    rules.append({"names": ["clone3", "openat2"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS})
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": rules}


def allowed_names(profile: dict[str, Any]) -> set[str]:
    """Every call some rule of `profile` allows (with or without argument conditions)."""
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW"
        for name in rule["names"]
    }


def summary() -> str:
    """What the profile enforces, for plans and `doctor`."""
    return (
        "seccomp: the engine's default allow-list minus the bubblewrap filter's deny list; "
        "no setuid/setgid mode bits (chmod, fchmod, fchmodat, fchmodat2, open, openat, "
        "creat), no namespaces from clone, socket families unix/inet/inet6/netlink only, "
        "clone3/openat2 ENOSYS, i386/x32 calls killed"
    )


class SeccompProfiles:
    """The profile files written so far, one per architecture, each to a private directory
    of its own (mkdtemp: 0700, a fresh name): the engine CLI reads it at each `run`, and
    nobody else can swap it. `close` removes them, as the interpreter's exit does at the
    latest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written: dict[str, str] = {}
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def path(self, machine: str | None = None) -> str | None:
        """The profile's file for `--security-opt seccomp=`, written on first use (None: no
        profile for this architecture)."""
        profile = container_profile(machine)
        if profile is None:
            return None
        key = machine_name(machine)
        with self._lock:
            path = self._written.get(key)
            if path is not None and os.path.isfile(path):
                return path
            if self._finalizer is None or not self._finalizer.alive:
                self._finalizer = weakref.finalize(self, _remove, self._written, self._lock)
            directory = tempfile.mkdtemp(prefix=temp_prefix("seccomp"))
            path = os.path.join(directory, f"{key}.json")
            self._written[key] = path
            with open(path, "x", encoding="utf-8") as handle:
                json.dump(profile, handle, indent=1, sort_keys=True)
            os.chmod(path, 0o600)  # the engine CLI runs as the caller and reads it
            return path

    def close(self) -> None:
        with self._lock:
            finalizer = self._finalizer
        if finalizer is not None:
            finalizer()


def _remove(written: dict[str, str], lock: threading.Lock) -> None:
    with lock:
        paths = list(written.values())
        written.clear()
    for path in paths:
        with contextlib.suppress(OSError):
            shutil.rmtree(os.path.dirname(path))
