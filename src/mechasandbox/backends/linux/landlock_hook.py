"""The child-side half of the `landlock` backend: runs in the spawn helper's forked child
just before exec (see `runner.child`), so it imports only the standard library and ctypes.

Two hooks, in this order. `isolate` depends on the policy alone (a warm child of the helper
applies it before the run is asked for, see `runner.warm`):
1. drop every capability (bounding set, ambient, effective/permitted/inheritable): when the
   host runs as root the command would otherwise keep CAP_SYS_RESOURCE (raise its rlimits),
   CAP_SYS_ADMIN, CAP_NET_ADMIN...; with an empty bounding set even exec of a root-owned
   setuid binary gains nothing;
2. PR_SET_NO_NEW_PRIVS, required by Landlock and seccomp for unprivileged callers;
3. install the seccomp filter. It refuses none of the calls that follow (landlock_*, open
   with O_PATH, getdents, close, dup2, chdir, setrlimit to lower a limit, execve).
`restrict_self` reads the file system, so it runs once the run has come:
4. build the Landlock ruleset (open each rule's path with O_PATH, expand "carved" rules by
   listing their directory) and `landlock_restrict_self`.
Where the exec shim is built, the helper's warm children are the shim instead, and steps
1-4 are carried out by it from the records `landlock_rules` encodes (same system calls, same
order; see `runner.native`).
`rehearse` goes through step 4 without a system call that changes anything, in a warm
child while it waits (see `runner.spec.ChildHook.rehearsal`).

Any failure raises OSError; the helper reports it as a spawn failure at stage "hook" and the
command never runs unconfined.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import os
import stat

from mechasandbox.backends.linux.landlock_rules import (
    FILE_RIGHTS,
    rule_pairs,
    ruleset_attr_size,
    scope_argument,
)
from mechasandbox.backends.linux.seccomp_install import install as install_seccomp
from mechasandbox.backends.linux.seccomp_install import load_libc as _load_seccomp_libc

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the spawn helper does not import `typing`
if TYPE_CHECKING:
    from typing import Any

SYS_LANDLOCK_CREATE_RULESET = 444  # same number on x86_64 and aarch64
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _load_libc() -> ctypes.CDLL | None:
    """Loaded at import, in the spawn helper, so each forked child does not pay for it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.prctl.argtypes = (
            ctypes.c_int,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
        )
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()
_load_seccomp_libc()  # here, in the spawn helper: its children inherit it


def _lib() -> ctypes.CDLL:
    if _libc is None:
        raise OSError(errno.ENOSYS, "libc with syscall() and prctl() is required")
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno() or errno.EIO
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _prctl(option: int, arg2: int, arg3: int = 0, what: str = "prctl") -> int:
    result: int = _lib().prctl(option, arg2, arg3, 0, 0)
    return _check(result, what)


def abi_version() -> int:
    """The Landlock ABI of the running kernel; OSError (ENOSYS, EOPNOTSUPP) when absent."""
    result: int = _lib().syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )
    return _check(result, "landlock_create_ruleset")


_CAP_SETPCAP = 8


def _capability_sets() -> tuple[int, int]:
    """(bounding, effective) of this process, from /proc/self/status; both full when it
    cannot be read, so that every drop is still attempted."""
    bounding = effective = (1 << 64) - 1
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("CapBnd:"):
                    bounding = int(line.split()[1], 16)
                elif line.startswith("CapEff:"):
                    effective = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return bounding, effective


def drop_capabilities() -> None:
    """Leave the process with no capability now and after exec, whatever its uid."""
    bounding, effective = _capability_sets()
    # Without CAP_SETPCAP the bounding set cannot be changed (each drop is EPERM), and
    # no_new_privs already keeps exec from granting what it holds: one prctl per
    # capability (about 40) is only worth it when it can succeed.
    if effective >> _CAP_SETPCAP & 1:
        for cap in range(bounding.bit_length()):
            if not bounding >> cap & 1:
                continue
            try:
                _prctl(_PR_CAPBSET_DROP, cap, what="PR_CAPBSET_DROP")
            except OSError as error:
                if error.errno not in (errno.EINVAL, errno.EPERM):
                    raise
    try:
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT")
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
    header = _CapHeader(version=_CAPABILITY_VERSION_3, pid=0)
    data = (_CapData * 2)()
    _check(_lib().capset(ctypes.byref(header), data), "capset")


# A rule's path that cannot be reached as this process sees it (missing, a component not
# a directory, or not searchable) grants nothing: its rule is skipped. The host does not
# look for each path before the run (see `expand_rules`); the shim skips the same errors.
_NOT_THERE = (FileNotFoundError, NotADirectoryError, PermissionError)


def _open_path(path: str) -> tuple[int, bool]:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    return fd, stat.S_ISDIR(os.fstat(fd).st_mode)


def rehearse(argument: dict[str, Any]) -> None:
    """`restrict_self` without a call that changes anything: the expansion of the rules,
    one path opened and closed, the structures built (see the module's docstring)."""
    _RulesetAttr(
        handled_access_fs=int(argument["handled_fs"]),
        handled_access_net=int(argument["handled_net"]),
        scoped=int(argument["scoped"]),
    )
    for path, access in rule_pairs(argument)[:1]:
        try:
            fd, is_dir = _open_path(path)
        except _NOT_THERE:
            break
        try:
            beneath = _PathBeneathAttr(
                allowed_access=access if is_dir else access & FILE_RIGHTS, parent_fd=fd
            )
            ctypes.byref(beneath)
        finally:
            os.close(fd)
    for port, access in argument["net_rules"][:1]:
        _NetPortAttr(allowed_access=int(access), port=int(port))


def restrict_self(argument: dict[str, Any]) -> None:
    """The second ChildHook target, step 4 above: create the ruleset of `argument` (see
    `LandlockRuleset.to_hook_argument`) and enforce it."""
    attr = _RulesetAttr(
        handled_access_fs=int(argument["handled_fs"]),
        handled_access_net=int(argument["handled_net"]),
        scoped=int(argument["scoped"]),
    )
    size = ruleset_attr_size(int(argument["abi"]))
    lib = _lib()
    ruleset = _check(
        lib.syscall(
            ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
            ctypes.byref(attr),
            ctypes.c_size_t(size),
            ctypes.c_uint32(0),
        ),
        "landlock_create_ruleset",
    )
    try:
        for path, access in rule_pairs(argument):
            try:
                fd, is_dir = _open_path(path)
            except _NOT_THERE:
                continue  # nothing to grant (see `_NOT_THERE`)
            try:
                beneath = _PathBeneathAttr(
                    allowed_access=access if is_dir else access & FILE_RIGHTS, parent_fd=fd
                )
                if beneath.allowed_access:
                    _check(
                        lib.syscall(
                            ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
                            ctypes.c_int(ruleset),
                            ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                            ctypes.byref(beneath),
                            ctypes.c_uint32(0),
                        ),
                        f"landlock_add_rule({path})",
                    )
            finally:
                os.close(fd)
        for port, access in argument["net_rules"]:
            net = _NetPortAttr(allowed_access=int(access), port=int(port))
            _check(
                lib.syscall(
                    ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
                    ctypes.c_int(ruleset),
                    ctypes.c_int(LANDLOCK_RULE_NET_PORT),
                    ctypes.byref(net),
                    ctypes.c_uint32(0),
                ),
                f"landlock_add_rule(port {port})",
            )
        _check(
            lib.syscall(
                ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF),
                ctypes.c_int(ruleset),
                ctypes.c_uint32(int(argument.get("restrict_flags", 0))),
            ),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset)


def scope(argument: dict[str, Any]) -> None:
    """A ChildHook target for other launchers (bubblewrap with the host's network): only
    Landlock's scopes of `argument` (`abi`, `scoped`), no file or network right handled, so
    the launcher still mounts and builds its namespaces, and the command it starts cannot
    reach the host's abstract unix sockets. no_new_privs first, as Landlock requires."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    restrict_self(scope_argument(argument))


def isolate(argument: dict[str, Any]) -> None:
    """The first ChildHook target: steps 1-3 above."""
    if argument.get("drop_capabilities", True):
        drop_capabilities()
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    seccomp = argument.get("seccomp")
    if seccomp:
        install_seccomp(base64.b64decode(seccomp))  # the shared loader, see seccomp_install
