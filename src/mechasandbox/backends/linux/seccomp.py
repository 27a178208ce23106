"""A seccomp deny-list as a classic-BPF program, shared by the Linux backends.

Pure part: `build_filter` turns syscall names and socket families into the raw program
bytes (an array of `struct sock_filter`, the format `bwrap --seccomp FD` reads and the
kernel's `SECCOMP_SET_MODE_FILTER` takes). Loading is elsewhere: bwrap reads the program
from a file descriptor the spawn helper fills (`runner.fd_data`), the landlock backend
loads it in the child itself (`seccomp_install`).

Why a deny-list and not an allow-list: the namespaces, mounts and capability drop do the
confining; the filter removes the kernel interfaces that could undo them (mount, unshare,
setns, ptrace, keyrings, bpf, io_uring...) or reach past them (vsock and other socket
families that network namespaces do not cover, TIOCSTI into the parent's terminal,
setuid files and fifos left in the workspace for the host to trip over).

The program checks the architecture first: x86_64 and aarch64 get their own syscall
numbers, anything else (i386 or arm32 compat calls, which have other numbers) is killed,
and x86_64's x32 calls (numbers with bit 30 set) are refused. Only the low 32 bits of
arguments are compared, which is what the kernel itself uses for `int`/`unsigned int`
arguments (socket family, ioctl request), so a caller cannot hide a value in the upper half.

Standard library only: the spawn helper imports this module in every child it hooks.
"""

from __future__ import annotations

import errno
import socket
import struct

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the spawn helper does not import `typing`
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# --- classic BPF encoding (linux/filter.h, linux/seccomp.h) ---------------------------------
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_JMP_JEQ_K = 0x05 | 0x10
_BPF_JMP_JGE_K = 0x05 | 0x30
_BPF_JMP_JSET_K = 0x05 | 0x40
_BPF_JMP_JA = 0x05 | 0x00
_BPF_ALU_AND_K = 0x04 | 0x50
_BPF_RET_K = 0x06
_BPF_MAXINSNS = 4096

RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_OFFSET_NR = 0
_OFFSET_ARCH = 4


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument `index` in `struct seccomp_data` (little endian)."""
    return 16 + 8 * index


AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
_X32_SYSCALL_BIT = 0x40000000

# name -> (x86_64 number, aarch64 number); None where the architecture has no such call.
# Checked against asm/unistd_64.h and asm-generic/unistd.h.
SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    "ptrace": (101, 117),
    "kcmp": (312, 272),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
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
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "syslog": (103, 116),
    "acct": (163, 89),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "uselib": (134, None),
    "iopl": (172, None),
    "ioperm": (173, None),
    "lookup_dcookie": (212, 18),
    "vhangup": (153, 58),
    "fanotify_init": (300, 262),
    "nfsservctl": (180, 42),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "mknod": (133, None),
    "mknodat": (259, 33),
    # handled specially (argument checks), listed for their numbers
    "clone": (56, 220),
    "clone3": (435, 435),
    "socket": (41, 198),
    "socketpair": (53, 199),
    "ioctl": (16, 29),
    "chmod": (90, None),
    "fchmod": (91, 52),
    "fchmodat": (268, 53),
    "fchmodat2": (452, 452),
    "open": (2, None),
    "openat": (257, 56),
    "creat": (85, None),
    "openat2": (437, 437),
    "prlimit64": (302, 261),
}
# Calls that take a file mode, and the index of that argument (also compiled into the
# container profile, `backends.oci.seccomp_profile`).
MODE_ARGUMENT = {
    "chmod": 1,
    "fchmod": 1,
    "fchmodat": 2,
    "fchmodat2": 2,
    "open": 2,
    "openat": 3,
    "creat": 1,
}
SETID_BITS = 0o6000  # S_ISUID | S_ISGID
_SPECIAL = frozenset(
    {"clone", "clone3", "socket", "socketpair", "ioctl", "openat2", "prlimit64", *MODE_ARGUMENT}
)

DEFAULT_DENIED: tuple[str, ...] = tuple(name for name in SYSCALLS if name not in _SPECIAL)

# AF_NETLINK stays: glibc's getaddrinfo and `ip` use NETLINK_ROUTE, which only sees the
# sandbox's own network namespace. AF_VSOCK, AF_PACKET, AF_ALG, AF_BLUETOOTH... go: vsock
# in particular is not network-namespaced and reaches the hypervisor.
DEFAULT_SOCKET_FAMILIES: tuple[int, ...] = (
    socket.AF_UNIX,
    socket.AF_INET,
    socket.AF_INET6,
    socket.AF_NETLINK,
)

# clone() flags that create namespaces: with them a process could build a new mount or
# user namespace and rearrange what it sees.
CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
MACHINES = ("x86_64", "aarch64")  # the architectures the program has syscall numbers for
SOCK_TYPE_MASK = 0xF  # socket()'s type argument also carries SOCK_NONBLOCK / SOCK_CLOEXEC
TIOCSTI = 0x5412  # push a byte into the terminal's input queue
TIOCLINUX = 0x541C  # its virtual-console cousin (selection paste)


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    if not (0 <= jt <= 255 and 0 <= jf <= 255):
        raise ValueError("BPF conditional jump out of range")
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _ret(value: int) -> bytes:
    return _insn(_BPF_RET_K, 0, 0, value)


def _errno(value: int) -> int:
    return _RET_ERRNO | (value & 0xFFFF)


def _load(offset: int) -> bytes:
    return _insn(_BPF_LD_W_ABS, 0, 0, offset)


def _arch_body(
    *,
    numbers: dict[str, int],
    denied: Sequence[str],
    families: tuple[int, ...] | None,
    stream_only: bool,
    connected_pairs_only: bool,
    deny_namespace_clone: bool,
    deny_terminal_injection: bool,
    deny_setid_modes: bool,
    deny_foreign_rlimits: bool,
    x86: bool,
) -> list[bytes]:
    """The checks for one architecture. Every block ends in a return or falls through with
    the syscall number still in the accumulator; the body ends by allowing the call."""
    eperm = _ret(_errno(errno.EPERM))
    body = [_load(_OFFSET_NR)]
    if x86:
        body += [_insn(_BPF_JMP_JGE_K, 0, 1, _X32_SYSCALL_BIT), eperm]
    for nr in sorted({numbers[name] for name in denied if name in numbers}):
        body += [_insn(_BPF_JMP_JEQ_K, 0, 1, nr), eperm]
    if deny_namespace_clone:
        body += [
            _insn(_BPF_JMP_JEQ_K, 0, 4, numbers["clone"]),
            _load(_arg_low(0)),
            _insn(_BPF_JMP_JSET_K, 0, 1, CLONE_NAMESPACE_FLAGS),
            eperm,
            _ret(RET_ALLOW),
            # clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes libc
            # fall back to clone(), whose flags are checked above.
            _insn(_BPF_JMP_JEQ_K, 0, 1, numbers["clone3"]),
            _ret(_errno(errno.ENOSYS)),
        ]
    if families is not None:
        count = len(families)
        # An allowed family lands on `accept`: plain allow, or (stream_only) TCP only.
        accept = [_ret(RET_ALLOW)]
        if stream_only:
            accept = [
                _load(_arg_low(1)),
                _insn(_BPF_ALU_AND_K, 0, 0, SOCK_TYPE_MASK),
                _insn(_BPF_JMP_JEQ_K, 0, 3, socket.SOCK_STREAM),
                _load(_arg_low(2)),
                _insn(_BPF_JMP_JEQ_K, 2, 0, 0),
                _insn(_BPF_JMP_JEQ_K, 1, 0, socket.IPPROTO_TCP),
                eperm,
                _ret(RET_ALLOW),
            ]
        skip = count + 2 + len(accept)
        body += [_insn(_BPF_JMP_JEQ_K, 0, skip, numbers["socket"]), _load(_arg_low(0))]
        body += [_insn(_BPF_JMP_JEQ_K, count - i, 0, family) for i, family in enumerate(families)]
        body += [_ret(_errno(errno.EAFNOSUPPORT)), *accept]
    if connected_pairs_only:
        # A datagram pair can still sendto() any path socket (and connect() to one): with
        # AF_UNIX refused, only pairs that stay connected to each other (stream, seqpacket).
        body += [
            _insn(_BPF_JMP_JEQ_K, 0, 6, numbers["socketpair"]),
            _load(_arg_low(1)),
            _insn(_BPF_ALU_AND_K, 0, 0, SOCK_TYPE_MASK),
            _insn(_BPF_JMP_JEQ_K, 2, 0, socket.SOCK_STREAM),
            _insn(_BPF_JMP_JEQ_K, 1, 0, socket.SOCK_SEQPACKET),
            eperm,
            _ret(RET_ALLOW),
        ]
    if deny_setid_modes:
        for name, index in MODE_ARGUMENT.items():
            if name not in numbers:
                continue
            body += [
                _insn(_BPF_JMP_JEQ_K, 0, 4, numbers[name]),
                _load(_arg_low(index)),
                _insn(_BPF_JMP_JSET_K, 0, 1, SETID_BITS),
                eperm,
                _ret(RET_ALLOW),
            ]
        # openat2 passes its mode in memory: ENOSYS makes callers fall back to openat.
        body += [_insn(_BPF_JMP_JEQ_K, 0, 1, numbers["openat2"]), _ret(_errno(errno.ENOSYS))]
    if deny_foreign_rlimits:
        # prlimit64 on another process needs only the same user ids: no ptrace check, no
        # Landlock scope, not dumpable or not. A command could lower the limits of every
        # process of its user it can name (a landlock run: the host's; a session: its agent,
        # which then can neither list what a command left nor take its stdio) or raise their
        # soft limits. Its own (pid 0) stays, and so does reading another's (no new limit;
        # the pointer's both halves are checked: one whose low half is 0 is not NULL).
        body += [
            _insn(_BPF_JMP_JEQ_K, 0, 8, numbers["prlimit64"]),
            _load(_arg_low(0)),
            _insn(_BPF_JMP_JEQ_K, 5, 0, 0),
            _load(_arg_low(2)),
            _insn(_BPF_JMP_JEQ_K, 0, 2, 0),
            _load(_arg_low(2) + 4),
            _insn(_BPF_JMP_JEQ_K, 1, 0, 0),
            eperm,
            _ret(RET_ALLOW),
        ]
    if deny_terminal_injection:
        body += [
            _insn(_BPF_JMP_JEQ_K, 0, 5, numbers["ioctl"]),
            _load(_arg_low(1)),
            _insn(_BPF_JMP_JEQ_K, 2, 0, TIOCSTI),
            _insn(_BPF_JMP_JEQ_K, 1, 0, TIOCLINUX),
            _ret(RET_ALLOW),
            eperm,
        ]
    body.append(_ret(RET_ALLOW))
    return body


def build_filter(
    denied: Iterable[str] = DEFAULT_DENIED,
    *,
    deny_socket_families_except: Iterable[int] | None = DEFAULT_SOCKET_FAMILIES,
    stream_only: bool = False,
    deny_namespace_clone: bool = True,
    deny_terminal_injection: bool = True,
    deny_setid_modes: bool = True,
    deny_foreign_rlimits: bool = True,
) -> bytes:
    """The raw BPF program: listed syscalls fail with EPERM, socket families outside
    `deny_socket_families_except` (None: no family check) with EAFNOSUPPORT, namespace
    flags of clone() with EPERM, TIOCSTI/TIOCLINUX with EPERM, setuid/setgid bits in a
    file mode (chmod, open with O_CREAT...) with EPERM, prlimit64 setting another process's
    limits with EPERM; everything else is allowed.
    `stream_only`: the allowed families only as TCP (SOCK_STREAM with protocol 0 or
    IPPROTO_TCP; anything else EPERM): no UDP (so no DNS), raw, SCTP or MPTCP sockets.
    Without AF_UNIX among the allowed families, socketpair() is allowed for stream and
    seqpacket pairs only (EPERM otherwise): a datagram pair could send to any path socket.
    Unknown architectures are killed. Raises ValueError for an unknown syscall name."""
    names = tuple(dict.fromkeys(denied))
    unknown = [name for name in names if name not in SYSCALLS or name in _SPECIAL]
    if unknown:
        raise ValueError(f"unknown or argument-checked syscalls: {', '.join(unknown)}")
    families = None if deny_socket_families_except is None else tuple(deny_socket_families_except)
    connected_pairs_only = families is not None and socket.AF_UNIX not in families
    bodies = []
    for index, x86 in ((0, True), (1, False)):
        numbers = {name: nr for name, pair in SYSCALLS.items() if (nr := pair[index]) is not None}
        bodies.append(
            _arch_body(
                numbers=numbers,
                denied=names,
                families=families,
                stream_only=stream_only,
                connected_pairs_only=connected_pairs_only,
                deny_namespace_clone=deny_namespace_clone,
                deny_terminal_injection=deny_terminal_injection,
                deny_setid_modes=deny_setid_modes,
                deny_foreign_rlimits=deny_foreign_rlimits,
                x86=x86,
            )
        )
    x86_body, arm_body = bodies
    # Dispatch: the long jumps use `ja`, whose 32-bit offset has no 255 limit.
    program = [
        _load(_OFFSET_ARCH),
        _insn(_BPF_JMP_JEQ_K, 0, 1, AUDIT_ARCH_X86_64),
        _insn(_BPF_JMP_JA, 0, 0, 3),  # to x86_body (skips 3 instructions)
        _insn(_BPF_JMP_JEQ_K, 0, 1, AUDIT_ARCH_AARCH64),
        _insn(_BPF_JMP_JA, 0, 0, 1 + len(x86_body)),  # to arm_body
        _ret(RET_KILL_PROCESS),
        *x86_body,
        *arm_body,
    ]
    if len(program) > _BPF_MAXINSNS:
        raise ValueError(f"seccomp program too long: {len(program)} instructions")
    return b"".join(program)


def summary(
    denied: Iterable[str] = DEFAULT_DENIED,
    *,
    deny_socket_families_except: Iterable[int] | None = DEFAULT_SOCKET_FAMILIES,
    stream_only: bool = False,
) -> str:
    """What `build_filter` with the same arguments enforces, for `mechasandbox policy`."""
    lines = [
        "architectures: x86_64, aarch64 (any other: kill; x32 calls: EPERM)",
        "EPERM: " + " ".join(dict.fromkeys(denied)),
        "EPERM: clone() with namespace flags; ioctl TIOCSTI, TIOCLINUX; setuid/setgid mode "
        "bits in chmod, fchmod, fchmodat, fchmodat2, open, openat, creat; prlimit64 setting "
        "another process's limits",
        "ENOSYS: clone3, openat2 (arguments out of a filter's reach; libc falls back)",
    ]
    if deny_socket_families_except is not None:
        names = []
        for family in deny_socket_families_except:
            try:
                names.append(socket.AddressFamily(family).name)
            except ValueError:
                names.append(str(family))
        allowed = " ".join(names) or "none"
        lines.append(f"socket families allowed: {allowed} (others: EAFNOSUPPORT)")
        if socket.AF_UNIX not in tuple(deny_socket_families_except):
            lines.append("socketpair: stream and seqpacket only (datagram pairs: EPERM)")
        if stream_only:
            lines.append(
                "socket types allowed: TCP only (SOCK_STREAM, protocol 0 or 6; else EPERM)"
            )
    return "\n".join(lines)
