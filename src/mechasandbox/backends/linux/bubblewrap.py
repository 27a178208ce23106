"""The `bubblewrap` backend: namespaces, bind mounts, a capability drop and a seccomp filter.

A run is `bwrap <argv compiled from the policy> -- <command>` spawned through the process
runner, so rlimits, the cgroup and whole-tree teardown work as for every other backend.

What the compiled argv builds (in this order, since later mounts cover earlier ones):

1. a new user, pid, network, ipc, uts and cgroup namespace; no capabilities, no further
   user namespaces, a new session (no TIOCSTI into the caller's terminal), death with the
   parent, and the seccomp program read from file descriptor 3;
2. an empty root with the system roots read-only (`/usr`, `/etc`, `/opt`, the `/lib*` and
   `/bin` trees or their merged-usr symlinks), fresh `/proc` and `/dev`, private `/tmp`,
   `/var/tmp` and `/dev/shm`;
3. the home directory hidden under an empty tmpfs, then (shallowest first) the policy's
   readable paths read-only, its writable paths and the workspace read-write, each at its
   own path; where one of those covers the sandbox's own /proc, /dev or private tmp dirs
   (`readable = ["/"]`), they are made again right after it;
4. protected "runs later" paths pinned: an existing one re-bound read-only onto itself (a
   mount point can be neither written nor renamed nor unlinked), its existing parent
   directories inside the writable tree re-bound onto themselves (so `mv .git g` fails), and
   a missing one covered by an empty read-only directory, so that it cannot be created;
   those placeholders appear on the host during the run and are removed afterwards. (Not
   `/dev/null` over an empty file, though removing an empty file is much cheaper: git in the
   sandbox would see the devices as untracked files, and `git add -A` would fail on them;
   it ignores empty directories.)
5. the kernel's interfaces that container engines cover, covered the same way wherever the
   sandbox would see them (its /proc; a /sys a policy shows): `/proc/sys`, `/proc/irq`,
   `/proc/sysrq-trigger`... read-only, `/proc/kcore`, `/proc/keys`, `/sys/firmware`...
   masked (a root caller's uid 0 is host uid 0 to every file permission check);
6. `deny_read` paths (and the secrets of `/etc`: shadow, ssh host keys...) masked: an empty
   read-only tmpfs over a directory, `/dev/null` over a file.

The compiler is pure: `compile_bwrap` takes the request, the policy, the host facts and a
`HostLayout` (what exists at the paths the compiler asks about, surveyed just before the
run), and returns the argv. Golden tests feed it a hand-written layout.

bwrap itself starts with a fixed environment of ours (`LAUNCHER_ENVIRONMENT`: empty), never
the command's: the host's loader would act on the command's LD_PRELOAD or GCONV_PATH in bwrap,
outside every confinement. The command's variables reach bwrap as `--clearenv` then one
`--setenv NAME VALUE` each, read from file descriptor 4 (`--args 4`, NUL-separated, filled by
the spawn helper just before exec, see `runner.fd_data`): not on bwrap's argv, which every
user of the host can read in /proc. bwrap applies them to its own environment while it
parses its arguments, after the loader is done, and the command inherits them.
"""

from __future__ import annotations

import enum
import functools
import glob
import hashlib
import os
import posixpath
import re
import shlex
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterable, Mapping
from socket import AF_UNIX
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import (
    LAUNCHER_ENVIRONMENT,
    HostContext,
    LaunchPlan,
    check_workspace,
    resolve_command,
    scrubbed_environment,
    unsafe_variable,
)
from mechasandbox.backends.execute import (
    disarm_after,
    execute_spec,
    prepare_run,
    run_started,
)
from mechasandbox.backends.git_indirections import planned_policy
from mechasandbox.backends.linux import seccomp
from mechasandbox.backends.linux.host_facts import executable_facts, namespace_facts
from mechasandbox.backends.linux.landlock_rules import SCOPE_TARGET
from mechasandbox.backends.linux.roots import SYSTEM_ROOTS
from mechasandbox.backends.probe_cache import ProbeCache
from mechasandbox.backends.resources import (
    UMASK,
    default_cgroups,
    describe_cgroups,
    resource_support,
    run_rlimits,
)
from mechasandbox.backends.unix_sockets import (
    NO_NAMED_SOCKETS,
    NamedSockets,
    find_named_sockets,
)
from mechasandbox.backends.workspace.guards import GuardSet
from mechasandbox.backends.workspace.placeholder_stash import is_empty_directory
from mechasandbox.backends.workspace.placeholders import (
    WorkspacePlaceholders,
    file_placeholder,
    path_depth,
)
from mechasandbox.backends.workspace.workspace_locks import locked_too_long
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    ConfigInvalid,
    SandboxError,
    SpawnFailed,
)
from mechasandbox.domain.policy import Enforcement, NetworkMode, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.limits.rlimits import describe
from mechasandbox.network.bridge import (
    BRIDGE_FAILED,
    BRIDGE_PREFIX,
    PROXY_PORT,
    PROXY_SOCKET,
    PROXY_URL,
    ProxyBridge,
    bridge_argv,
)
from mechasandbox.network.environment import proxy_environment
from mechasandbox.runner import fd_data
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import ChildHook, ProcessOutcome, SpawnSpec

if TYPE_CHECKING:
    from mechasandbox.network.proxy import RunningProxy
    from mechasandbox.network.session import EgressProxy

NAME = "bubblewrap"
SECCOMP_FD = 3
ARGS_FD = 4  # the command's environment, as `--setenv NAME VALUE` arguments
MINIMUM_VERSION = (0, 5, 0)  # --perms
DISABLE_USERNS_VERSION = (0, 8, 0)
_PROBE_TIMEOUT_S = 10.0


# Secrets of the system that a sandboxed uid 0 (root on the host maps to root in the
# sandbox) could otherwise read through the read-only /etc. Globs are expanded at survey.
ETC_SECRETS: tuple[str, ...] = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh/ssh_host_*_key",
    "/etc/ssl/private",
    "/etc/wireguard",
    "/etc/NetworkManager/system-connections",
    "/etc/credstore",
    "/etc/credstore.encrypted",
)

_PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
# Where the host keeps its unix sockets (docker.sock, the session bus, the ssh agent under
# /run/user): a read-only bind does not stop connect(), so a policy's bind that shows them
# (`readable = ["/"]`, `["/run"]`) gets an empty tmpfs over them: a socket is reachable
# only when the policy names it (`allow_unix_sockets`, bound after).
_HOST_SOCKET_TREES = ("/run", "/var/run")
# Kernel interfaces a policy may show read-only (covered, see `_kernel_covers`) but never
# writable: below /sys or /proc a writable bind is host sysfs or a host process's files.
_KERNEL_TREES = ("/proc", "/sys", "/dev")

# Kernel interfaces the sandbox must not write, or read (see `_kernel_covers`). bwrap's
# fresh /proc offers them all, and uid 0 in the user namespace bwrap makes for a root caller
# is host uid 0 for every permission check that does not ask for a capability: with nothing
# over /proc/sys, `kernel.core_pattern` (a `|helper` in it runs as host root at the next
# crash) is the command's to write. bwrap's own covers (`irq`, `bus`, `sysrq-trigger`) are
# made only where it can write, and never for `sys`, whose directory refuses every write.
# Read-only, as container engines make them (moby's and runc's readonlyPaths), and /sys
# where a policy shows it:
KERNEL_READ_ONLY: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/sys",
)
# Masked (/dev/null over a file, an empty read-only directory over a directory): the
# engines' maskedPaths,
KERNEL_MASKED: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
# and, for a root caller, the files only host root may read (mode 0400, and no capability
# asked for): page and slab maps, kernel addresses. For anyone else their mode refuses
# already, and each mount costs bwrap some 30-50 us.
KERNEL_ROOT_ONLY: tuple[str, ...] = (
    "/proc/kpagecgroup",
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/pagetypeinfo",
    "/proc/slabinfo",
    "/proc/vmallocinfo",
)
KERNEL_PATHS = KERNEL_READ_ONLY + KERNEL_MASKED + KERNEL_ROOT_ONLY

# The allowlist bridge (mechasandbox.network.bridge): the run's proxy socket bound in at
# PROXY_SOCKET, socat on the sandbox's own loopback (its network namespace has nothing else).
PROXY_SOCKET_PLACEHOLDER = "<per-run proxy socket>"
_FORWARDER_SEARCH = "/usr/local/bin:/usr/bin:/bin"


# --- host facts -----------------------------------------------------------------------------
class PathKind(enum.Enum):
    DIRECTORY = "dir"
    FILE = "file"  # regular files and anything else that is not a directory (fifo, device)
    SYMLINK = "symlink"
    MISSING = "missing"


@attrs.frozen(kw_only=True)
class PathFact:
    """What is at one path (not following a final symlink), and where a symlink leads."""

    kind: PathKind
    link: str | None = None  # readlink() text, for symlinks
    real: str | None = None  # realpath, for symlinks
    real_kind: PathKind = PathKind.MISSING  # what the symlink resolves to


@attrs.frozen(kw_only=True)
class HostLayout:
    """The filesystem facts the compiler needs, captured once so the compiler stays pure."""

    facts: tuple[tuple[str, PathFact], ...]
    etc_secrets: tuple[str, ...] = ()  # existing paths matching ETC_SECRETS
    # Empty directories on the way to protected paths (see `_protect`).
    hollow_directories: frozenset[str] = frozenset()
    _index: Mapping[str, PathFact] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_index", dict(self.facts))

    def fact(self, path: str) -> PathFact:
        """The fact for `path`; a KeyError means the survey missed a path (a bug)."""
        return self._index[path]

    @staticmethod
    def survey(
        paths: Iterable[str],
        etc_patterns: Iterable[str] = ETC_SECRETS,
        *,
        placeholders: Iterable[str] = (),
        hollowness_of: Iterable[str] = (),
    ) -> HostLayout:
        """`placeholders`: empty directories other runs of ours created as mount points;
        they and anything below them count as missing, so this run covers them too.
        `hollowness_of`: directories the compiler needs to know to be `_hollow`."""
        covered = tuple(placeholders)

        def fact_of(path: str) -> PathFact:
            if any(path == p or path.startswith(p + "/") for p in covered):
                return _PLAIN_FACTS[PathKind.MISSING]
            return _lstat_fact(path)

        facts = {path: fact_of(path) for path in sorted(set(paths))}
        secrets: list[str] = []
        for pattern in etc_patterns:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            for path in matches:
                fact = _lstat_fact(path)
                if fact.kind in (PathKind.DIRECTORY, PathKind.FILE):
                    secrets.append(path)
                    facts[path] = fact
        hollow = frozenset(
            path
            for path in hollowness_of
            if facts.get(path) is _PLAIN_FACTS[PathKind.DIRECTORY] and _hollow(path)
        )
        return HostLayout(
            facts=tuple(sorted(facts.items())),
            etc_secrets=tuple(secrets),
            hollow_directories=hollow,
        )


def _hollow(path: str) -> bool:
    """Holds nothing to keep writable: empty, or a `.git` without `HEAD`, which is no
    repository (what a crashed run's placeholders, or an empty subdirectory, leave)."""
    if is_empty_directory(path):
        return True
    return posixpath.basename(path) == ".git" and not os.path.lexists(path + "/HEAD")


# One fact per kind that has nothing else to say (a survey makes about 50 of them per run;
# PathFact is frozen, so sharing them is safe).
_PLAIN_FACTS = {kind: PathFact(kind=kind) for kind in PathKind}


def _kind(mode: int) -> PathKind:
    if stat.S_ISDIR(mode):
        return PathKind.DIRECTORY
    if stat.S_ISLNK(mode):
        return PathKind.SYMLINK
    return PathKind.FILE


def _lstat_fact(path: str) -> PathFact:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return _PLAIN_FACTS[PathKind.MISSING]
    kind = _kind(mode)
    if kind is not PathKind.SYMLINK:
        return _PLAIN_FACTS[kind]
    try:
        link = os.readlink(path)
        real = os.path.realpath(path)
    except OSError:  # a link we may not follow (`/proc/1/root` of another user): not mounted
        return _PLAIN_FACTS[PathKind.MISSING]
    try:
        real_kind = _kind(os.stat(real).st_mode)
    except OSError:
        real_kind = PathKind.MISSING
    return PathFact(kind=kind, link=link, real=real, real_kind=real_kind)


@attrs.frozen(kw_only=True)
class BwrapFeatures:
    """The bwrap executable and what its version supports."""

    path: str = "bwrap"
    version: tuple[int, ...] = DISABLE_USERNS_VERSION

    @property
    def disable_userns(self) -> bool:
        return self.version >= DISABLE_USERNS_VERSION


# --- the pure compiler ----------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class _Mount:
    """One mount of the sandbox tree. `exposes`: the host content at `dest` is visible;
    `writable`: and writable."""

    dest: str
    args: tuple[str, ...]
    exposes: bool
    writable: bool = False
    # Over an existing host path inside a tree the sandbox sees, to keep it from being
    # written ("write") or read ("read"): it holds on to that path's directory entry, so a
    # host process replacing the path (a rename over it) takes it off (see `guards.py`).
    guards: str | None = None


@attrs.frozen(kw_only=True)
class BwrapCommand:
    """A compiled run: bwrap's argv (command included), and what the run leaves to undo."""

    argv: tuple[str, ...]
    # Missing protected paths covered for the run: empty directories on the host, made by
    # the backend just before bwrap (`make_placeholders`) and removed after the run.
    placeholders: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    mounts: tuple[_Mount, ...] = ()
    # The command's environment, which bwrap reads from ARGS_FD (values stay out of reprs).
    environment: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)

    @property
    def arguments_on_fd(self) -> bytes:
        """What bwrap reads from `--args ARGS_FD`: `--setenv NAME VALUE` per variable, each
        argument NUL-terminated."""
        return b"".join(
            b"--setenv\0" + os.fsencode(name) + b"\0" + os.fsencode(value) + b"\0"
            for name, value in self.environment
        )

    def describe_environment(self) -> str:
        """The arguments on ARGS_FD for `mechasandbox policy`: names, values hidden."""
        return "\n".join(f"--setenv {name} \u2026" for name, _ in self.environment) or "none"

    def visible(self, path: str) -> bool:
        """Whether the host's `path` (a real path) can be seen inside the sandbox."""
        covering = _covering(self.mounts, path)
        return covering is not None and covering.exposes

    @property
    def guards(self) -> tuple[tuple[str, str], ...]:
        """(host path, "write" or "read") of the mounts that guard existing host paths."""
        return tuple((m.dest, m.guards) for m in self.mounts if m.guards is not None)


def _under(path: str, root: str) -> bool:
    return root in (path, "/") or path.startswith(root.rstrip("/") + "/")


def _covering(mounts: Iterable[_Mount], path: str) -> _Mount | None:
    """The mount that decides what `path` is: the last one at or above it (later mounts
    cover earlier ones, and deeper ones are mounted after their parents)."""
    return next((mount for mount in reversed(tuple(mounts)) if _under(path, mount.dest)), None)


def _absolute(path: str, host: HostContext, workspace: str) -> str:
    """`~` against the host's home, relative paths against the workspace; normalised."""
    expanded = host.expand(path)
    if not posixpath.isabs(expanded):
        expanded = posixpath.join(workspace, expanded)
    return posixpath.normpath(expanded)


def _real(layout: HostLayout, path: str) -> tuple[str, PathKind]:
    fact = layout.fact(path)
    if fact.kind is PathKind.SYMLINK:
        return fact.real or path, fact.real_kind
    return path, fact.kind


def _home(host: HostContext) -> str:
    return posixpath.normpath(host.home) if host.home else "/"


@functools.lru_cache(maxsize=64)
def paths_to_survey(workspace: str, policy: Policy, host: HostContext) -> tuple[str, ...]:
    """Every path `compile_bwrap` will ask the layout about."""
    fs = policy.filesystem
    paths: list[str] = [*SYSTEM_ROOTS, *KERNEL_PATHS, *_HOST_SOCKET_TREES, _home(host), workspace]
    paths.extend(
        _absolute(entry, host, workspace) for entry in (*fs.readable, *fs.writable, *fs.deny_read)
    )
    for entry in (*fs.protected, *fs.deny_write):
        target = _absolute(entry, host, workspace)
        # every prefix: the compiler walks down from the writable root above it
        parts = target.strip("/").split("/")
        paths.extend("/" + "/".join(parts[: i + 1]) for i in range(len(parts)))
    return tuple(dict.fromkeys(paths))


@functools.lru_cache(maxsize=64)
def protected_parents(workspace: str, policy: Policy, host: HostContext) -> tuple[str, ...]:
    """The directories inside the workspace on the way to protected paths (`.git` for
    `.git/hooks`): the survey tells which of them are empty."""
    parents: list[str] = []
    for entry in (*policy.filesystem.protected, *policy.filesystem.deny_write):
        target = _absolute(entry, host, workspace)
        while (target := posixpath.dirname(target)) != workspace and _under(target, workspace):
            parents.append(target)
    return tuple(dict.fromkeys(parents))


# A fresh procfs: the kernel's own, not the host's /proc (exposes nothing of the host's
# files, but does show the kernel interfaces `_kernel_covers` covers).
_PROC = _Mount(dest="/proc", args=("--proc", "/proc"), exposes=False)


def _base_mounts(layout: HostLayout) -> list[_Mount]:
    mounts: list[_Mount] = []
    for root in SYSTEM_ROOTS:
        fact = layout.fact(root)
        if fact.kind is PathKind.DIRECTORY:
            mounts.append(_Mount(dest=root, args=("--ro-bind", root, root), exposes=True))
        elif fact.kind is PathKind.SYMLINK and fact.link is not None:
            mounts.append(_Mount(dest=root, args=("--symlink", fact.link, root), exposes=False))
    mounts += [_PROC, _Mount(dest="/dev", args=("--dev", "/dev"), exposes=False)]
    mounts += [
        _Mount(dest=path, args=("--perms", "1777", "--tmpfs", path), exposes=False)
        for path in _PRIVATE_TMP
    ]
    return mounts


def _tree_mounts(
    workspace: str, policy: Policy, host: HostContext, layout: HostLayout
) -> list[_Mount]:
    """Home hidden, readable/writable paths and the workspace: shallowest first, so that a
    workspace inside the home directory shows through the tmpfs that hides the rest of it,
    and a home inside a broader workspace is still hidden."""
    fs = policy.filesystem
    wanted: list[tuple[int, _Mount]] = []
    home, home_kind = _real(layout, _home(host))
    if home_kind is PathKind.DIRECTORY and home != "/":
        tmpfs = ("--perms", "0700", "--tmpfs", home)
        wanted.append((0, _Mount(dest=home, args=tmpfs, exposes=False)))
    for priority, entries, writable in ((1, fs.readable, False), (2, fs.writable, True)):
        for entry in entries:
            absolute = _absolute(entry, host, workspace)
            if _under(absolute, workspace):
                # Inside the workspace: mounted already, and a symlink the command or the
                # repository put there must not choose what else gets mounted.
                continue
            path, kind = _real(layout, absolute)
            if kind is PathKind.MISSING:
                continue
            option = "--bind" if writable else "--ro-bind"
            mount = _Mount(dest=path, args=(option, path, path), exposes=True, writable=writable)
            wanted.append((priority, mount))
    ws_args = ("--bind", workspace, workspace)
    wanted.append((3, _Mount(dest=workspace, args=ws_args, exposes=True, writable=True)))
    # Same destination: the highest priority wins (the workspace over a readable entry).
    best: dict[str, tuple[int, _Mount]] = {}
    for priority, mount in wanted:
        if mount.dest not in best or best[mount.dest][0] <= priority:
            best[mount.dest] = (priority, mount)
    ordered = sorted(best.values(), key=lambda item: (path_depth(item[1].dest), item[0]))
    return [mount for _, mount in ordered]


def _own_trees_kept(base: list[_Mount], tree: list[_Mount], layout: HostLayout) -> list[_Mount]:
    """`tree` with the sandbox's own /proc, /dev and private tmp dirs made again where one of
    its binds covers them (`readable = ["/"]`), each right after that bind: the host's
    /proc lists its processes (a root caller's command reads their environments), its /dev
    has only devices nothing may open (the binds are `nodev`), its /tmp is the host's. A
    bind of a tmp dir itself (`writable = ["/tmp"]`) shares it on purpose, and stays."""
    again: list[_Mount] = []
    for own in base:
        if own.dest not in ("/proc", "/dev", *_PRIVATE_TMP):
            continue
        covering = _covering(tree + again, own.dest)
        if covering is None or covering is own:
            continue
        if own.dest in _PRIVATE_TMP and covering.dest == own.dest:
            continue
        again.append(own)
    for path in _HOST_SOCKET_TREES:
        covering = _covering(tree, path)
        if covering and covering.exposes and layout.fact(path).kind is PathKind.DIRECTORY:
            again.append(
                _Mount(dest=path, args=("--perms", "0755", "--tmpfs", path), exposes=False)
            )
    # A stable sort by depth puts each after the binds above it and before those below it
    # (the workspace under /tmp), and after a bind of its own path.
    return sorted(tree + again, key=lambda mount: path_depth(mount.dest))


@attrs.frozen(kw_only=True)
class _Protection:
    mounts: tuple[_Mount, ...] = ()
    placeholders: tuple[str, ...] = ()
    problem: str | None = None


def _protect(target: str, mounts: list[_Mount], layout: HostLayout) -> _Protection:
    """Make `target` unwritable, unrenameable and uncreatable where the sandbox can write.

    Walk down from the writable mount above it: existing directories on the way are pinned
    (bound onto themselves), the target or the first non-directory is re-bound read-only,
    and the first missing component gets an empty read-only directory."""
    covering = _covering(mounts, target)
    if covering is None or not covering.writable:
        return _Protection()  # read-only or hidden already
    root = covering.dest
    rest = target[len(root) :].strip("/").split("/") if target != root else []
    if not rest:
        return _Protection(problem=f"{target} is a writable root itself")
    added: list[_Mount] = []
    path = root
    for index, part in enumerate(rest):
        path = posixpath.join(path, part)
        fact = layout.fact(path)
        last = index == len(rest) - 1
        if fact.kind is PathKind.SYMLINK:
            return _Protection(
                problem=(
                    f"{path} is a symlink: its target can be made read-only but the link "
                    "itself could be replaced"
                )
            )
        if fact.kind is PathKind.MISSING:
            if last and file_placeholder(path) is not None:
                # A file the host makes with harmless content (see `placeholders`), pinned
                # read-only like an existing one: it cannot be written nor replaced.
                cover = ("--ro-bind", path, path)
                added.append(_Mount(dest=path, args=cover, exposes=True))
                return _Protection(mounts=tuple(added), placeholders=(path,))
            placeholder = ("--perms", "0555", "--tmpfs", path, "--remount-ro", path)
            added.append(_Mount(dest=path, args=placeholder, exposes=False))
            return _Protection(mounts=tuple(added), placeholders=(path,))
        if not last and path in layout.hollow_directories:
            # A hollow directory on the way (`.git` holding no repository) stays one:
            # covered read-only like a missing one, so that the command cannot make it one.
            # Not ours to make or remove: often another process's placeholder, which that
            # process removes once no run is left in the workspace (`workspace_locks`).
            empty = ("--perms", "0555", "--tmpfs", path, "--remount-ro", path)
            added.append(_Mount(dest=path, args=empty, exposes=False))
            return _Protection(mounts=tuple(added))
        if last or fact.kind is not PathKind.DIRECTORY:
            pin = _Mount(dest=path, args=("--ro-bind", path, path), exposes=True, guards="write")
            added.append(pin)
            return _Protection(mounts=tuple(added))
        added.append(
            _Mount(
                dest=path, args=("--bind", path, path), exposes=True, writable=True, guards="write"
            )
        )
    return _Protection(mounts=tuple(added))


def _mask(path: str, kind: PathKind) -> _Mount:
    if kind is PathKind.DIRECTORY:
        return _Mount(
            dest=path,
            args=("--perms", "0000", "--tmpfs", path, "--remount-ro", path),
            exposes=False,
            guards="read",
        )
    return _Mount(dest=path, args=("--ro-bind", "/dev/null", path), exposes=False, guards="read")


def _kernel_covers(layout: HostLayout, mounts: list[_Mount], *, root: bool) -> list[_Mount]:
    """Read-only binds and masks over the kernel interfaces the sandbox would see: in its
    fresh /proc, or in a host /proc or /sys a policy's readable or writable paths show.
    Made after those, so that no bind of the policy uncovers them. Only paths that exist on
    the host: bwrap cannot make a mount point in procfs, and a fresh /proc has what the
    host's has. The read-only binds take the host's /proc entries as their source (bwrap
    binds from the host's tree); a sysctl answers for the namespaces of whoever opens it,
    so the sandbox still reads its own network and uts settings there."""
    covers: list[_Mount] = []
    masked_paths = KERNEL_MASKED + KERNEL_ROOT_ONLY if root else KERNEL_MASKED
    for paths, masked in ((KERNEL_READ_ONLY, False), (masked_paths, True)):
        for path in paths:
            kind = layout.fact(path).kind
            covering = _covering(mounts + covers, path)
            if kind not in (PathKind.DIRECTORY, PathKind.FILE) or covering is None:
                continue
            if covering is not _PROC and not covering.exposes:
                continue  # hidden already (by a mask or a tmpfs), or not mounted at all
            covers.append(_kernel_cover(path, kind, masked=masked))
    return covers


def _kernel_cover(path: str, kind: PathKind, *, masked: bool) -> _Mount:
    """Not a guard (see `_mask`): the entries it covers are the kernel's, never replaced."""
    if not masked:
        return _Mount(dest=path, args=("--ro-bind", path, path), exposes=True)
    if kind is PathKind.DIRECTORY:
        empty = ("--perms", "0555", "--tmpfs", path, "--remount-ro", path)
        return _Mount(dest=path, args=empty, exposes=False)
    return _Mount(dest=path, args=("--ro-bind", "/dev/null", path), exposes=False)


def _check_workspace_placement(
    workspace: str, policy: Policy, host: HostContext
) -> ConfigInvalid | None:
    if workspace == "/":
        return ConfigInvalid(problem="the workspace cannot be /", field="workspace")
    for entry in policy.filesystem.deny_read:
        denied = _absolute(entry, host, workspace)
        if _under(workspace, denied):
            return ConfigInvalid(
                problem=f"the workspace {workspace} is inside the denied path {denied}",
                field="filesystem.deny_read",
            )
    return None


def _check_writable_entries(
    workspace: str, policy: Policy, host: HostContext, layout: HostLayout
) -> ConfigInvalid | None:
    """A writable entry leading into /proc, /sys or /dev is refused: there it would be the
    host's sysfs or a host process's files, writable by a root caller's command."""
    for entry in policy.filesystem.writable:
        path, _kind = _real(layout, _absolute(entry, host, workspace))
        for tree in _KERNEL_TREES:
            if _under(path, tree):
                return ConfigInvalid(
                    problem=f"{entry!r} leads to {path}, a kernel interface: it may be "
                    "readable, never writable",
                    field="filesystem.writable",
                )
    return None


def _protections(
    workspace: str, policy: Policy, host: HostContext, layout: HostLayout, mounts: list[_Mount]
) -> tuple[list[str], list[str]] | ConfigInvalid:
    """Adds the protection mounts to `mounts`; gives the placeholders and warnings. A path
    that cannot be protected refuses a strict run and warns in a best-effort one."""
    fs = policy.filesystem
    placeholders: list[str] = []
    warnings: list[str] = []
    strict = policy.enforcement is Enforcement.STRICT
    for field, entries in (("filesystem.protected", fs.protected), ("deny_write", fs.deny_write)):
        for entry in entries:
            outcome = _protect(_absolute(entry, host, workspace), mounts, layout)
            if outcome.problem is not None:
                if strict:
                    return ConfigInvalid(problem=outcome.problem, field=field)
                warnings.append(f"not protected: {outcome.problem}")
            mounts += outcome.mounts
            placeholders += outcome.placeholders
    return placeholders, warnings


def _masks(
    workspace: str, policy: Policy, host: HostContext, layout: HostLayout, mounts: list[_Mount]
) -> list[_Mount]:
    """Masks for deny_read entries and /etc secrets that would otherwise be visible."""
    masks: dict[str, _Mount] = {}
    for entry in policy.filesystem.deny_read:
        path, kind = _real(layout, _absolute(entry, host, workspace))
        covering = _covering(mounts, path)
        if kind is not PathKind.MISSING and covering is not None and covering.exposes:
            masks[path] = _mask(path, kind)
    for path in layout.etc_secrets:
        covering = _covering(mounts, path)
        if covering is not None and covering.exposes:
            masks[path] = _mask(path, layout.fact(path).kind)
    return sorted(masks.values(), key=lambda mount: (path_depth(mount.dest), mount.dest))


_MountPlan = tuple[tuple[_Mount, ...], tuple[str, ...], tuple[str, ...]]


@functools.lru_cache(maxsize=64)
def _mount_plan(
    workspace: str, policy: Policy, host: HostContext, layout: HostLayout
) -> _MountPlan | ConfigInvalid:
    """The mounts, placeholders and warnings of a run. A pure function of values (the
    layout is surveyed afresh for every run), so an agent's next command in the same
    workspace, under the same policy and with the same paths present, reuses it."""
    checked = _check_workspace_placement(workspace, policy, host)
    if checked is not None:
        return checked
    base = _base_mounts(layout)
    writable = _check_writable_entries(workspace, policy, host, layout)
    if writable is not None:
        return writable
    mounts = base + _own_trees_kept(base, _tree_mounts(workspace, policy, host, layout), layout)
    protected = _protections(workspace, policy, host, layout, mounts)
    if isinstance(protected, ConfigInvalid):
        return protected
    placeholders, warnings = protected
    mounts += _kernel_covers(layout, mounts, root=host.uid == 0)
    mounts += _masks(workspace, policy, host, layout, mounts)
    return tuple(mounts), tuple(placeholders), tuple(warnings)


def compile_bwrap(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    *,
    workspace: str,
    layout: HostLayout,
    features: BwrapFeatures = BwrapFeatures(),
    bridge: ProxyBridge | None = None,
    environment: Mapping[str, str] | None = None,
    sockets: NamedSockets = NO_NAMED_SOCKETS,
) -> Result[BwrapCommand, ConfigInvalid]:
    """The bwrap command line for one run. Pure: everything it knows is in its arguments.

    `workspace` is the real path of the request's workspace (see `check_workspace`).
    `bridge`: in allowlist mode, the proxy socket to bind in and the forwarder to start
    before the command (the network namespace stays empty but for loopback).
    `environment`: the command's, read by bwrap from ARGS_FD (see `arguments_on_fd`).
    `sockets`: the host unix sockets the policy names, bound read-only at their real path
    (connect() needs no write access to the mount).
    """
    variables = tuple(sorted((environment or {}).items()))
    unsafe = unsafe_variable(variables)
    if unsafe is not None:
        return Failure(ConfigInvalid(problem=unsafe, field="environment"))
    planned = _mount_plan(workspace, policy, host, layout)
    if isinstance(planned, ConfigInvalid):
        return Failure(planned)
    mounts, placeholders, warnings = planned

    argv: list[str] = [features.path, "--unshare-user", "--unshare-all"]
    if policy.network.mode is NetworkMode.FULL:
        argv.append("--share-net")
    if features.disable_userns:
        argv.append("--disable-userns")
    argv += [
        "--cap-drop", "ALL",
        "--die-with-parent",
        "--new-session",
        "--seccomp", str(SECCOMP_FD),
        "--clearenv", "--args", str(ARGS_FD),
        "--chdir", workspace,
    ]  # fmt: skip
    for mount in mounts:
        argv += mount.args
    for path in sockets.bind:
        argv += ["--ro-bind", path, path]
    if bridge is not None and policy.network.mode is NetworkMode.ALLOWLIST:
        argv += ["--ro-bind", bridge.socket, PROXY_SOCKET]
        argv += ["--", *bridge_argv(bridge, request.argv)]
    else:
        argv += ["--", *request.argv]
    return Success(
        BwrapCommand(
            argv=tuple(argv),
            placeholders=placeholders,
            warnings=warnings + sockets.warnings,
            mounts=mounts,
            environment=variables,
        )
    )


def compile_bwrap_argv(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    *,
    workspace: str,
    layout: HostLayout,
    features: BwrapFeatures = BwrapFeatures(),
    bridge: ProxyBridge | None = None,
    sockets: NamedSockets = NO_NAMED_SOCKETS,
) -> Result[tuple[str, ...], ConfigInvalid]:
    """Just the argv of `compile_bwrap`."""
    compiled = compile_bwrap(
        request,
        policy,
        host,
        workspace=workspace,
        layout=layout,
        features=features,
        bridge=bridge,
        sockets=sockets,
    )
    return compiled.map(lambda command: command.argv)


# --- probing --------------------------------------------------------------------------------
# With the host's network (--share-net) the command would also share the host's abstract
# unix sockets (the session bus, X11, containerd): there socket(AF_UNIX) is refused, unless
# the policy names unix sockets; then Landlock's scope keeps the abstract ones out.
_NO_UNIX_SOCKETS = tuple(f for f in seccomp.DEFAULT_SOCKET_FAMILIES if f != AF_UNIX)
# Landlock's abstract unix socket scope (ABI 6, include/uapi/linux/landlock.h).
LANDLOCK_SCOPE_ABI = 6
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0


@functools.cache
def seccomp_program(unix_sockets: bool = True) -> bytes:
    """The program for a run; `unix_sockets=False` also refuses socket(AF_UNIX)."""
    if unix_sockets:
        return seccomp.build_filter()
    return seccomp.build_filter(deny_socket_families_except=_NO_UNIX_SOCKETS)


def seccomp_summary(unix_sockets: bool = True) -> str:
    if unix_sockets:
        return seccomp.summary()
    return seccomp.summary(deny_socket_families_except=_NO_UNIX_SOCKETS)


def seccomp_hook(unix_sockets: bool = True) -> ChildHook:
    return ChildHook(
        target=fd_data.TARGET, argument=fd_data.argument(SECCOMP_FD, seccomp_program(unix_sockets))
    )


def environment_hook(command: BwrapCommand) -> ChildHook:
    """The command's environment on ARGS_FD, where bwrap reads it (`--args`)."""
    return ChildHook(
        target=fd_data.TARGET, argument=fd_data.argument(ARGS_FD, command.arguments_on_fd)
    )


def abstract_scope_hook(abi: int) -> ChildHook:
    """Landlock's abstract unix socket scope on bwrap itself, so on all it starts."""
    return ChildHook(
        target=SCOPE_TARGET, argument={"abi": abi, "scoped": _SCOPE_ABSTRACT_UNIX_SOCKET}
    )


def landlock_abi() -> int:
    """The kernel's Landlock ABI, 0 without Landlock."""
    from mechasandbox.backends.linux.landlock import probe_abi

    abi = probe_abi()
    return abi if isinstance(abi, int) else 0


@attrs.frozen(kw_only=True)
class UnixSocketPlan:
    """What a run does about host unix sockets: whether socket(AF_UNIX) is allowed, the
    Landlock ABI to scope abstract sockets with (0: none), the named sockets to bind."""

    allowed: bool
    scope_abi: int
    sockets: NamedSockets

    @property
    def hooks(self) -> tuple[ChildHook, ...]:
        scope = (abstract_scope_hook(self.scope_abi),) if self.scope_abi else ()
        return (seccomp_hook(self.allowed), *scope)


def _named_sockets_detail(abi: int) -> tuple[Protection, str]:
    how = (
        "named sockets bound read-only at their real path, no other host path socket "
        "mounted; with full network socket(AF_UNIX) is refused unless sockets are named"
    )
    if abi >= LANDLOCK_SCOPE_ABI:
        return (
            Protection.NAMED_UNIX_SOCKETS,
            f"{how}, and then the host's abstract sockets are kept out by Landlock's scope "
            "(set on bwrap)",
        )
    return (
        Protection.NAMED_UNIX_SOCKETS,
        f"{how}; naming sockets with full network would open the host's abstract sockets "
        f"(the session bus, X11) too: Landlock ABI {abi} < {LANDLOCK_SCOPE_ABI} cannot "
        "scope them (Linux 6.12 can)",
    )


def _describe_scope(unix: UnixSocketPlan) -> str:
    if unix.scope_abi:
        return "scope on bwrap: abstract unix sockets (the host's are out of reach)"
    return "not used"


def unix_socket_plan(policy: Policy, sockets: NamedSockets, abi: int) -> UnixSocketPlan:
    """Own network namespace (none, allowlist): AF_UNIX stays, tools use it internally and
    the allowlist bridge needs it; only mounted path sockets exist there. Host network
    (full): refused, unless the policy names sockets; then allowed, with the host's
    abstract sockets scoped out where Landlock has scopes (else NAMED_UNIX_SOCKETS is not
    enforced: see `probe`)."""
    if policy.network.mode is not NetworkMode.FULL:
        return UnixSocketPlan(allowed=True, scope_abi=0, sockets=sockets)
    named = bool(policy.network.allow_unix_sockets)
    scope_abi = abi if named and abi >= LANDLOCK_SCOPE_ABI else 0
    return UnixSocketPlan(allowed=named, scope_abi=scope_abi, sockets=sockets)


def _parse_version(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    return tuple(int(part) for part in match.groups(default="0"))


def _trial_flags(features: BwrapFeatures) -> list[str]:
    """The namespace and filter flags every run uses, as the probe's trial sandbox uses them."""
    flags = ["--unshare-user", "--unshare-all"]
    if features.disable_userns:
        flags.append("--disable-userns")
    return [*flags, "--cap-drop", "ALL", "--die-with-parent", "--new-session"]


@functools.cache
def probe_bwrap(path: str) -> BwrapFeatures | str:
    """The features of the bwrap at `path`, or why it cannot sandbox here. Runs `bwrap` twice
    (version, then a real sandbox with our namespace flags and seccomp program); cached."""
    try:
        version_run = subprocess.run(
            [path, "--version"],
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"cannot run {path}: {error}"
    version = _parse_version(version_run.stdout.decode(errors="replace"))
    if version is None:
        return f"cannot read the version of {path}"
    if version < MINIMUM_VERSION:
        needed = ".".join(map(str, MINIMUM_VERSION))
        return f"bwrap {'.'.join(map(str, version))} is older than {needed}"
    features = BwrapFeatures(path=path, version=version)
    trial = [path, *_trial_flags(features)]
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, seccomp_program())
        os.close(write_end)
        write_end = -1
        trial += ["--seccomp", str(read_end), "--ro-bind", "/", "/", "--proc", "/proc"]
        trial += ["--dev", "/dev", "--", "true"]
        ran = subprocess.run(
            trial,
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
            pass_fds=(read_end,),
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"cannot run {path}: {error}"
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if ran.returncode != 0:
        reason = ran.stderr.decode(errors="replace").strip() or f"exit status {ran.returncode}"
        return f"bwrap cannot create its namespaces here: {reason}"
    return features


PROBE_NAME = "bwrap"


def probe_key(path: str) -> dict[str, str] | None:
    """What `probe_bwrap(path)`'s answer depends on: the executable's identity, the host's
    namespace switches and this process's restrictions, the flags and seccomp program of
    the trial. None when `path` cannot be examined."""
    executable = executable_facts(path)
    if executable is None:
        return None
    trial = " ".join(_trial_flags(BwrapFeatures(path=path)))
    program = hashlib.sha256(seccomp_program()).hexdigest()
    return {**executable, **namespace_facts(), "trial": trial, "seccomp": program}


@functools.cache
def remembered_probe(path: str, cache: ProbeCache) -> BwrapFeatures | str:
    """`probe_bwrap(path)`, answered from `cache` while a success recorded there still
    holds (see `probe_cache`); a fresh success is recorded, a failure never is (and it
    removes the record)."""
    key = probe_key(path)
    if key is None:
        return probe_bwrap(path)
    recorded = cache.load(PROBE_NAME, key)
    version = recorded.get("version") if recorded is not None else None
    if isinstance(version, list) and version and all(isinstance(v, int) for v in version):
        return BwrapFeatures(path=path, version=tuple(version))
    probed = probe_bwrap(path)
    if isinstance(probed, BwrapFeatures):
        cache.store(PROBE_NAME, key, {"version": list(probed.version)})
    else:
        cache.forget(PROBE_NAME)
    return probed


def _signal_decoded(outcome: ProcessOutcome) -> ProcessOutcome:
    """bwrap's pid-1 reports a command killed by signal N as exit status 128+N (as a shell
    does); turn it back into the signal so that limit classification sees SIGXCPU, SIGKILL."""
    code = outcome.exit_code
    if outcome.signal is None and code is not None and 128 < code <= 128 + signal.NSIG - 1:
        return attrs.evolve(outcome, exit_code=None, signal=code - 128)
    return outcome


_BWRAP_PREFIX = b"bwrap: "


def _describe_launcher_environment(env: Iterable[tuple[str, str]]) -> str:
    return " ".join(f"{name}={value}" for name, value in env) or "none"


def _setup_failure(result: RunResult, command: str) -> SandboxError | None:
    """bwrap's own failures (a mount it could not make, an exec that failed inside) end with
    status 1 and a `bwrap: ` message before the command ever ran; the bridge's, with 125
    and its own prefix."""
    if result.exit_code == BRIDGE_FAILED and result.stderr.startswith(BRIDGE_PREFIX):
        message = result.stderr.decode(errors="replace").strip()
        return BackendFailed(backend=NAME, reason=message)
    if result.exit_code != 1 or not result.stderr.startswith(_BWRAP_PREFIX):
        return None
    message = result.stderr.decode(errors="replace").strip()
    if message.startswith("bwrap: execvp"):
        status = 127 if "No such file" in message else 126
        return SpawnFailed(command=command, reason=message, exit_status=status)
    return BackendFailed(backend=NAME, reason=message)


_PLACEHOLDERS = WorkspacePlaceholders()


_FOUND: dict[tuple[str, str], str] = {}


def _which(name: str, path: str) -> str | None:
    """`shutil.which`, remembering what it found (each run probes): a program removed later
    makes its run fail, it is never replaced by anything else. Misses are not remembered, so
    a program installed later is found."""
    found = _FOUND.get((name, path)) or shutil.which(name, path=path)
    if found is not None:
        _FOUND[(name, path)] = found
    return found


# --- the backend ----------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class BubblewrapBackend:
    """Runs each command in a fresh bubblewrap sandbox. `bwrap`: the executable (default:
    found on the host's PATH)."""

    runner: ProcessRunner
    cgroups: CgroupManager | str = attrs.field(factory=default_cgroups)
    host: HostContext = attrs.field(factory=HostContext.current)
    bwrap: str | None = None
    # The allowlist proxy's settings (None: the defaults, made when a run first needs them).
    egress: EgressProxy | None = None
    socat: str | None = None  # the allowlist forwarder (default: found in the system roots)
    # Where a successful probe is remembered across processes (the CLI's per-user cache);
    # None: probe once per process.
    probe_cache: ProbeCache | None = None

    @property
    def name(self) -> str:
        return NAME

    def _socat(self) -> str | None:
        """socat's real path, if it is inside the read-only system trees the sandbox sees."""
        found = self.socat or _which("socat", _FORWARDER_SEARCH)
        if found is None:
            return None
        real = os.path.realpath(found)
        return real if any(_under(real, root) for root in SYSTEM_ROOTS) else None

    def _executable(self) -> str | None:
        if self.bwrap is not None:
            return self.bwrap
        path = dict(self.host.env).get("PATH") or "/usr/local/bin:/usr/bin:/bin"
        return _which("bwrap", path)

    def _features(self) -> BwrapFeatures | str:
        if not self.host.platform.startswith("linux"):
            return "bubblewrap needs Linux namespaces"
        executable = self._executable()
        if executable is None:
            return "bwrap not found on PATH (install the bubblewrap package)"
        if self.probe_cache is not None:
            return remembered_probe(executable, self.probe_cache)
        return probe_bwrap(executable)

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        features = self._features()
        if isinstance(features, str):
            return Failure(BackendUnavailable(backend=NAME, reason=features))
        version = ".".join(map(str, features.version))
        enforced = {
            Protection.FILESYSTEM_READ,
            Protection.FILESYSTEM_WRITE,
            Protection.PROTECTED_PATHS,
            Protection.NETWORK_NONE,
            Protection.PID_ISOLATION,
            Protection.HOST_PROCESSES_HIDDEN,
            Protection.ENVIRONMENT,
            Protection.TIMEOUT,
            Protection.TREE_TEARDOWN,
            Protection.CPU,
            Protection.OPEN_FILES,
            Protection.FILE_SIZE,
        }
        details = [
            (
                Protection.FILESYSTEM_READ,
                f"bwrap {version}: empty root, system trees read-only, home hidden, "
                "deny_read and /etc secrets masked",
            ),
            (
                Protection.FILESYSTEM_WRITE,
                "mount namespace: only the workspace, writable paths and private tmpfs; "
                "kernel settings (/proc/sys...) read-only, kernel information masked",
            ),
            (
                Protection.PROTECTED_PATHS,
                "read-only self-binds; parents pinned against rename; missing paths covered; "
                "a run whose cover a host process replaces is stopped (50 ms watch)",
            ),
            (Protection.NETWORK_NONE, "network namespace with loopback only"),
            self._allowlist_detail(),
            (Protection.PID_ISOLATION, "pid namespace; ptrace denied by seccomp"),
            (Protection.HOST_PROCESSES_HIDDEN, "pid namespace with a fresh /proc"),
            (
                Protection.ENVIRONMENT,
                "scrubbed environment, handed to the command only (bwrap starts with none)",
            ),
            (
                Protection.TREE_TEARDOWN,
                "pid namespace (its init's death kills all), --die-with-parent, subreaper",
            ),
            (Protection.CPU, "RLIMIT_CPU"),
            (Protection.OPEN_FILES, "RLIMIT_NOFILE"),
            (Protection.FILE_SIZE, "RLIMIT_FSIZE"),
        ]
        if self._socat() is not None:
            enforced.add(Protection.NETWORK_ALLOWLIST)
        abi = landlock_abi()
        if abi >= LANDLOCK_SCOPE_ABI:
            enforced.add(Protection.NAMED_UNIX_SOCKETS)
        details.append(_named_sockets_detail(abi))
        warnings: list[str] = []
        resources = resource_support(self.cgroups, self.host.uid)
        enforced |= resources.enforced
        details += resources.details
        warnings += resources.warnings
        return Success(
            Capabilities(
                backend=NAME,
                enforced=frozenset(enforced),
                details=tuple(details),
                warnings=tuple(warnings),
            )
        )

    def _allowlist_detail(self) -> tuple[Protection, str]:
        socat = self._socat()
        if socat is None:
            return (
                Protection.NETWORK_ALLOWLIST,
                "needs socat in the system trees (Debian package socat) for the bridge to "
                "the proxy; best-effort runs with no network at all",
            )
        return (
            Protection.NETWORK_ALLOWLIST,
            "network namespace with loopback only; the run's proxy socket bound in and "
            f"{socat} forwarding 127.0.0.1:{PROXY_PORT} to it; no route, no DNS inside",
        )

    def _bridge(self, policy: Policy, socket: str) -> ProxyBridge | None:
        socat = self._socat()
        if policy.network.mode is not NetworkMode.ALLOWLIST or socat is None:
            return None
        return ProxyBridge(socket=socket, socat=socat)

    def _compile(
        self,
        request: RunRequest,
        policy: Policy,
        host: HostContext,
        workspace: str,
        features: BwrapFeatures,
        proxy_socket: str = PROXY_SOCKET_PLACEHOLDER,
    ) -> Result[tuple[BwrapCommand, SpawnSpec], SandboxError]:
        layout = HostLayout.survey(
            paths_to_survey(workspace, policy, host),
            placeholders=_PLACEHOLDERS.active(workspace),
            hollowness_of=protected_parents(workspace, policy, host),
        )
        bridge = self._bridge(policy, proxy_socket)
        env = scrubbed_environment(policy.environment, dict(host.env))
        if bridge is not None:
            env.update(proxy_environment(PROXY_URL))
        unix = unix_socket_plan(policy, find_named_sockets(policy, host, workspace), landlock_abi())
        compiled: Result[BwrapCommand, SandboxError] = compile_bwrap(
            request,
            policy,
            host,
            workspace=workspace,
            layout=layout,
            features=features,
            bridge=bridge,
            environment=env,
            sockets=unix.sockets,
        )
        rlimits = run_rlimits(policy.limits, self.cgroups)

        def resolved(command: BwrapCommand) -> Result[tuple[BwrapCommand, SpawnSpec], SandboxError]:
            found = resolve_command(request.argv[0], env, workspace)
            if isinstance(found, Failure):
                return Failure(found.failure())
            executable = os.path.realpath(found.unwrap())
            if not command.visible(executable):
                return Failure(
                    SpawnFailed(
                        command=request.argv[0],
                        reason=f"{executable} is not visible inside the sandbox",
                        exit_status=127,
                    )
                )
            spec = SpawnSpec(
                argv=command.argv,
                env=LAUNCHER_ENVIRONMENT,
                cwd=workspace,
                stdin=request.stdin,
                timeout_s=policy.limits.timeout_s,
                max_output_bytes=policy.limits.max_output_bytes,
                umask=UMASK,
                rlimits=rlimits,
                hooks=(*unix.hooks, environment_hook(command)),
                executable=features.path,
            )
            return Success((command, spec))

        return compiled.bind(resolved)

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        found = self._features()
        features = found if isinstance(found, BwrapFeatures) else BwrapFeatures()
        unavailable = (
            (f"bubblewrap is unavailable here: {found}",) if isinstance(found, str) else ()
        )
        unix = unix_socket_plan(policy, NO_NAMED_SOCKETS, landlock_abi())

        def render(compiled: tuple[BwrapCommand, SpawnSpec]) -> LaunchPlan:
            command, spec = compiled
            cgroup = describe_cgroups(self.cgroups)
            return LaunchPlan(
                backend=NAME,
                sections=(
                    ("bwrap", shlex.join(command.argv)),
                    ("environment", command.describe_environment()),
                    ("bwrap's own environment", _describe_launcher_environment(spec.env)),
                    ("seccomp (fd 3)", seccomp_summary(unix.allowed)),
                    ("landlock", _describe_scope(unix)),
                    ("placeholders", "\n".join(command.placeholders) or "none"),
                    ("umask", f"{spec.umask:04o}"),
                    ("rlimits", describe(spec.rlimits)),
                    ("cgroup", cgroup),
                ),
                warnings=unavailable + command.warnings,
            )

        workspace: Result[str, SandboxError] = check_workspace(request)
        return workspace.bind(
            lambda path: self._compile(
                request, planned_policy(policy, path, host), host, path, features
            )
        ).map(render)

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        prepared = prepare_run(self, request, policy)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        warnings, workspace, policy = prepared.unwrap()
        features = self._features()
        if isinstance(features, str):  # probed fine a moment ago; cached, so not reached
            return Failure(BackendUnavailable(backend=NAME, reason=features))

        async def body(proxy: RunningProxy | None) -> Result[RunResult, SandboxError]:
            socket = str(proxy.socket_path) if proxy is not None else PROXY_SOCKET_PLACEHOLDER
            if not _PLACEHOLDERS.enter(workspace):
                return Failure(BackendFailed(backend=NAME, reason=locked_too_long("run")))
            try:
                compiled = self._compile(request, policy, self.host, workspace, features, socket)
                if isinstance(compiled, Failure):
                    return Failure(compiled.failure())
                command, spec = compiled.unwrap()
                _PLACEHOLDERS.created(workspace, command.placeholders)
                _PLACEHOLDERS.make(workspace, command.placeholders)
                guards = GuardSet(
                    command.guards + tuple((p, "write") for p in command.placeholders)
                )
                try:
                    result = await execute_spec(
                        NAME,
                        self.runner,
                        attrs.evolve(spec, watch=guards.watcher()),
                        policy,
                        warnings=warnings + command.warnings,
                        cgroups=self.cgroups,
                        adjust=_signal_decoded,
                    )
                    late = guards.warnings()  # lost since the watcher's last look
                finally:
                    guards.close()
            finally:
                # After the guards' last look: taking the placeholders out changes their entries.
                _PLACEHOLDERS.leave(workspace)
            if isinstance(result, Success):
                failed = _setup_failure(result.unwrap(), request.argv[0])
                if failed is not None:
                    return Failure(failed)
                if late:
                    value = result.unwrap()
                    return Success(attrs.evolve(value, warnings=value.warnings + late))
            return result

        started = run_started()
        if self._bridge(policy, PROXY_SOCKET_PLACEHOLDER) is None:
            # no bridge: best-effort allowlist runs with no network
            return disarm_after(await body(None), workspace, policy, started)
        # The proxy (and with it asyncio) is imported only by runs that need it.
        from mechasandbox.network.session import EgressProxy, run_with_proxy

        proxied = await run_with_proxy(self.egress or EgressProxy(), policy.network, body)
        return disarm_after(proxied, workspace, policy, started)
