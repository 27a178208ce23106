"""A pure seccomp-BPF builder for the `landlock` backend.

Landlock confines paths, TCP ports and (ABI >= 6) signals and abstract unix sockets; it
leaves the syscalls that change the system or escape a sandbox (`mount` is already denied
by Landlock, but `chroot`, `unshare`, `ptrace`, `bpf`, `io_uring`, kernel modules...) and
sockets of other families (UDP, raw, netlink) uncovered. This filter closes those gaps.

Shape: default allow; listed syscalls answer EPERM; `socket()` only for allowed families;
`clone()` without namespace flags; `clone3()` answers ENOSYS so libc falls back to
`clone()` (its flags sit in memory a filter cannot read); `ioctl(TIOCSTI/TIOCLINUX)` and
`chmod` to setuid/setgid answer EPERM. Any other architecture (i386 compat, x32) is killed:
syscall numbers differ there and the filter would not mean what it says.

Pure: returns bytes (an array of `struct sock_filter`), installed by `landlock_hook`.
"""

from __future__ import annotations

import errno
import functools
import struct

import attrs

# BPF opcodes (linux/filter.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_AND_K = 0x54
_RET_K = 0x06

_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

# struct seccomp_data offsets
_NR = 0
_ARCH = 4


def _arg(index: int) -> int:
    """Offset of the low 32 bits of argument `index` (little-endian hosts only)."""
    return 16 + 8 * index


AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT = 0x40000000

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_TYPE_MASK = 0xF
IPPROTO_TCP = 6

# Namespace flags of clone(2): CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID
# | NEWNET.
CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
CLONE_NAMESPACES |= 0x20000000 | 0x40000000
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
SETID_BITS = 0o6000

# Syscalls denied with EPERM, and why (the reason is rendered by `plan`).
DENIED: tuple[tuple[str, str], ...] = (
    ("ptrace", "inspect or steer other processes"),
    ("process_vm_readv", "read another process's memory"),
    ("process_vm_writev", "write another process's memory"),
    ("pidfd_getfd", "steal another process's file descriptors"),
    ("kcmp", "probe another process's kernel objects"),
    ("mount", "change mounts (Landlock denies it too)"),
    ("umount2", "change mounts"),
    ("pivot_root", "change the root"),
    ("chroot", "change the root (not covered by Landlock)"),
    ("open_tree", "new mount API"),
    ("move_mount", "new mount API"),
    ("fsopen", "new mount API"),
    ("fsconfig", "new mount API"),
    ("fsmount", "new mount API"),
    ("fspick", "new mount API"),
    ("mount_setattr", "new mount API"),
    ("unshare", "new namespaces"),
    ("setns", "join other namespaces"),
    ("mknod", "device nodes and fifos"),
    ("mknodat", "device nodes and fifos"),
    ("open_by_handle_at", "open files by handle, bypassing path checks"),
    ("name_to_handle_at", "file handles"),
    ("io_uring_setup", "io_uring runs operations outside this filter"),
    ("io_uring_enter", "io_uring"),
    ("io_uring_register", "io_uring"),
    ("bpf", "kernel programs"),
    ("perf_event_open", "kernel profiling"),
    ("userfaultfd", "kernel exploitation aid"),
    ("keyctl", "kernel keyrings shared with the host"),
    ("add_key", "kernel keyrings"),
    ("request_key", "kernel keyrings"),
    ("kexec_load", "replace the kernel"),
    ("kexec_file_load", "replace the kernel"),
    ("init_module", "kernel modules"),
    ("finit_module", "kernel modules"),
    ("delete_module", "kernel modules"),
    ("swapon", "host swap"),
    ("swapoff", "host swap"),
    ("reboot", "reboot the host"),
    ("sethostname", "host name"),
    ("setdomainname", "host domain name"),
    ("settimeofday", "host clock"),
    ("clock_settime", "host clock"),
    ("clock_adjtime", "host clock"),
    ("adjtimex", "host clock"),
    ("acct", "process accounting"),
    ("quotactl", "disk quotas"),
    ("quotactl_fd", "disk quotas"),
    ("syslog", "kernel log"),
    ("fanotify_init", "watch the host's filesystem"),
    ("lookup_dcookie", "kernel profiling"),
    ("vhangup", "hang up the terminal"),
    ("iopl", "raw port I/O"),
    ("ioperm", "raw port I/O"),
    ("uselib", "obsolete loader"),
)

# x86_64 (asm/unistd_64.h) and aarch64 (asm-generic/unistd.h) numbers; absent = no such
# syscall on that architecture.
_NUMBERS: dict[str, tuple[int | None, int | None]] = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "kcmp": (312, 272),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 97),
    "setns": (308, 268),
    "mknod": (133, None),
    "mknodat": (259, 33),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "syslog": (103, 116),
    "fanotify_init": (300, 262),
    "lookup_dcookie": (212, 18),
    "vhangup": (153, 58),
    "iopl": (172, None),
    "ioperm": (173, None),
    "uselib": (134, None),
    # Filtered by argument, not denied outright.
    "socket": (41, 198),
    "ioctl": (16, 29),
    "clone": (56, 220),
    "clone3": (435, 435),
    "chmod": (90, None),
    "fchmod": (91, 52),
    "fchmodat": (268, 53),
    "fchmodat2": (452, 452),
}


def syscall_number(name: str, machine: str) -> int | None:
    x86_64, aarch64 = _NUMBERS[name]
    return x86_64 if machine == "x86_64" else aarch64


@attrs.frozen(kw_only=True)
class SeccompProgram:
    """The filter and what it means, for the hook (bytes) and for `plan` (summary)."""

    machine: str
    instructions: bytes
    socket_families: tuple[int, ...]
    denied: tuple[str, ...]
    stream_only: bool = False

    @property
    def length(self) -> int:
        return len(self.instructions) // 8

    def summary(self) -> str:
        families = ", ".join(_FAMILY_NAMES.get(f, str(f)) for f in self.socket_families)
        return "\n".join(
            (
                f"arch {self.machine} only (any other arch: kill process); default allow",
                f"socket(): only {families or 'no family'}"
                + (" and only TCP (SOCK_STREAM, protocol 0 or 6)" if self.stream_only else "")
                + " (others: EPERM); socketpair allowed",
                "clone(): namespace flags -> EPERM; clone3() -> ENOSYS (libc falls back)",
                "ioctl(TIOCSTI, TIOCLINUX) -> EPERM; chmod setuid/setgid bits -> EPERM",
                "EPERM: " + " ".join(self.denied),
                f"{self.length} BPF instructions",
            )
        )


_FAMILY_NAMES = {AF_UNIX: "AF_UNIX", AF_INET: "AF_INET", AF_INET6: "AF_INET6"}


def _stmt(code: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def _errno(value: int) -> int:
    return _RET_ERRNO | (value & 0xFFFF)


def _argument_block(nr: int, offset: int, test: list[bytes]) -> list[bytes]:
    """`if nr matches: load the argument, then `test` (which must return on every path)`."""
    return [_jump(_JEQ_K, nr, 0, len(test) + 1), _stmt(_LD_W_ABS, offset), *test]


@functools.cache
def build_filter(
    machine: str, socket_families: tuple[int, ...], *, stream_only: bool = False
) -> SeccompProgram:
    """The filter for `machine` ("x86_64" or "aarch64") allowing `socket_families`.

    `stream_only`: those families only as TCP (`SOCK_STREAM` with protocol 0 or
    IPPROTO_TCP), the one transport Landlock's port rules cover: no UDP (so no DNS), no
    SCTP or MPTCP streams, no raw sockets.
    """
    if machine not in AUDIT_ARCH:
        raise ValueError(f"no seccomp syscall table for architecture {machine!r}")
    eperm = _errno(errno.EPERM)
    program = [
        _stmt(_LD_W_ABS, _ARCH),
        _jump(_JEQ_K, AUDIT_ARCH[machine], 1, 0),
        _stmt(_RET_K, _RET_KILL_PROCESS),
        _stmt(_LD_W_ABS, _NR),
    ]
    if machine == "x86_64":
        # x32 syscalls share the x86_64 audit arch with a high bit set: refuse them all.
        program += [_jump(_JGE_K, _X32_SYSCALL_BIT, 0, 1), _stmt(_RET_K, eperm)]
    denied: list[str] = []
    for name, _why in DENIED:
        nr = syscall_number(name, machine)
        if nr is None:
            continue
        denied.append(name)
        program += [_jump(_JEQ_K, nr, 0, 1), _stmt(_RET_K, eperm)]
    clone3 = syscall_number("clone3", machine)
    assert clone3 is not None
    program += [_jump(_JEQ_K, clone3, 0, 1), _stmt(_RET_K, _errno(errno.ENOSYS))]

    allow = _stmt(_RET_K, _RET_ALLOW)
    deny = _stmt(_RET_K, eperm)
    # socket(family, ...): each allowed family jumps to the final allow.
    family_checks = [
        _jump(_JEQ_K, family, len(socket_families) - index, 0)
        for index, family in enumerate(socket_families)
    ]
    socket_nr = syscall_number("socket", machine)
    assert socket_nr is not None
    if stream_only:
        # matched family -> type & SOCK_TYPE_MASK == SOCK_STREAM -> protocol in (0, TCP)
        stream_checks = [
            _stmt(_LD_W_ABS, _arg(1)),
            _stmt(_AND_K, SOCK_TYPE_MASK),
            _jump(_JEQ_K, SOCK_STREAM, 0, 3),
            _stmt(_LD_W_ABS, _arg(2)),
            _jump(_JEQ_K, 0, 2, 0),
            _jump(_JEQ_K, IPPROTO_TCP, 1, 0),
            deny,
        ]
        socket_test = [*family_checks, deny, *stream_checks, allow]
    else:
        socket_test = [*family_checks, deny, allow]
    program += _argument_block(socket_nr, _arg(0), socket_test)
    clone_nr = syscall_number("clone", machine)
    assert clone_nr is not None
    program += _argument_block(
        clone_nr, _arg(0), [_jump(_JSET_K, CLONE_NAMESPACES, 0, 1), deny, allow]
    )
    ioctl_nr = syscall_number("ioctl", machine)
    assert ioctl_nr is not None
    program += _argument_block(
        ioctl_nr,
        _arg(1),
        [_jump(_JEQ_K, TIOCSTI, 1, 0), _jump(_JEQ_K, TIOCLINUX, 0, 1), deny, allow],
    )
    for name, mode_arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2)):
        nr = syscall_number(name, machine)
        if nr is not None:
            program += _argument_block(
                nr, _arg(mode_arg), [_jump(_JSET_K, SETID_BITS, 0, 1), deny, allow]
            )
    program.append(allow)
    return SeccompProgram(
        machine=machine,
        instructions=b"".join(program),
        socket_families=socket_families,
        denied=tuple(denied),
        stream_only=stream_only,
    )
