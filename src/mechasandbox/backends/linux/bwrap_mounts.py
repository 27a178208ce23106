"""The mounts of a bubblewrap sandbox, planned purely from the workspace, the policy, the
host's facts and its `HostLayout` (see `bwrap_compiler` for what they build, in order):
the system roots and the sandbox's own /proc, /dev and tmp dirs; the home hidden and the
policy's paths and the workspace bound; protected paths pinned or covered (their
placeholders); the kernel's interfaces covered; `deny_read` paths and /etc secrets masked.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Iterable, Mapping

import attrs

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.linux.bwrap_layout import HostLayout, PathKind
from mechasandbox.backends.linux.roots import SYSTEM_ROOTS
from mechasandbox.backends.workspace.placeholders import (
    FileContents,
    file_placeholder,
    path_depth,
)
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Enforcement, Policy

PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
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


@attrs.frozen(kw_only=True)
class Mount:
    """One mount of the sandbox tree. `exposes`: the host content at `dest` is visible;
    `writable`: and writable."""

    dest: str
    args: tuple[str, ...]
    exposes: bool
    writable: bool = False
    # Over an existing host path inside a tree the sandbox sees, to keep it from being
    # written ("write") or read ("read"): it holds on to that path's directory entry, so a
    # host process replacing the path (a rename over it) takes it off (see `workspace.guards`).
    guards: str | None = None


def under(path: str, root: str) -> bool:
    return root in (path, "/") or path.startswith(root.rstrip("/") + "/")


def covering_mount(mounts: Iterable[Mount], path: str) -> Mount | None:
    """The mount that decides what `path` is: the last one at or above it (later mounts
    cover earlier ones, and deeper ones are mounted after their parents)."""
    return next((mount for mount in reversed(tuple(mounts)) if under(path, mount.dest)), None)


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
        while (target := posixpath.dirname(target)) != workspace and under(target, workspace):
            parents.append(target)
    return tuple(dict.fromkeys(parents))


# A fresh procfs: the kernel's own, not the host's /proc (exposes nothing of the host's
# files, but does show the kernel interfaces `_kernel_covers` covers).
_PROC = Mount(dest="/proc", args=("--proc", "/proc"), exposes=False)


def _base_mounts(layout: HostLayout) -> list[Mount]:
    mounts: list[Mount] = []
    for root in SYSTEM_ROOTS:
        fact = layout.fact(root)
        if fact.kind is PathKind.DIRECTORY:
            mounts.append(Mount(dest=root, args=("--ro-bind", root, root), exposes=True))
        elif fact.kind is PathKind.SYMLINK and fact.link is not None:
            mounts.append(Mount(dest=root, args=("--symlink", fact.link, root), exposes=False))
    mounts += [_PROC, Mount(dest="/dev", args=("--dev", "/dev"), exposes=False)]
    mounts += [
        Mount(dest=path, args=("--perms", "1777", "--tmpfs", path), exposes=False)
        for path in PRIVATE_TMP_DIRS
    ]
    return mounts


def _tree_mounts(
    workspace: str, policy: Policy, host: HostContext, layout: HostLayout
) -> list[Mount]:
    """Home hidden, readable/writable paths and the workspace: shallowest first, so that a
    workspace inside the home directory shows through the tmpfs that hides the rest of it,
    and a home inside a broader workspace is still hidden."""
    fs = policy.filesystem
    wanted: list[tuple[int, Mount]] = []
    home, home_kind = _real(layout, _home(host))
    if home_kind is PathKind.DIRECTORY and home != "/":
        tmpfs = ("--perms", "0700", "--tmpfs", home)
        wanted.append((0, Mount(dest=home, args=tmpfs, exposes=False)))
    for priority, entries, writable in ((1, fs.readable, False), (2, fs.writable, True)):
        for entry in entries:
            absolute = _absolute(entry, host, workspace)
            if under(absolute, workspace):
                # Inside the workspace: mounted already, and a symlink the command or the
                # repository put there must not choose what else gets mounted.
                continue
            path, kind = _real(layout, absolute)
            if kind is PathKind.MISSING:
                continue
            option = "--bind" if writable else "--ro-bind"
            mount = Mount(dest=path, args=(option, path, path), exposes=True, writable=writable)
            wanted.append((priority, mount))
    ws_args = ("--bind", workspace, workspace)
    wanted.append((3, Mount(dest=workspace, args=ws_args, exposes=True, writable=True)))
    # Same destination: the highest priority wins (the workspace over a readable entry).
    best: dict[str, tuple[int, Mount]] = {}
    for priority, mount in wanted:
        if mount.dest not in best or best[mount.dest][0] <= priority:
            best[mount.dest] = (priority, mount)
    ordered = sorted(best.values(), key=lambda item: (path_depth(item[1].dest), item[0]))
    return [mount for _, mount in ordered]


def _own_trees_kept(base: list[Mount], tree: list[Mount], layout: HostLayout) -> list[Mount]:
    """`tree` with the sandbox's own /proc, /dev and private tmp dirs made again where one of
    its binds covers them (`readable = ["/"]`), each right after that bind: the host's
    /proc lists its processes (a root caller's command reads their environments), its /dev
    has only devices nothing may open (the binds are `nodev`), its /tmp is the host's. A
    bind of a tmp dir itself (`writable = ["/tmp"]`) shares it on purpose, and stays."""
    again: list[Mount] = []
    for own in base:
        if own.dest not in ("/proc", "/dev", *PRIVATE_TMP_DIRS):
            continue
        covering = covering_mount(tree + again, own.dest)
        if covering is None or covering is own:
            continue
        if own.dest in PRIVATE_TMP_DIRS and covering.dest == own.dest:
            continue
        again.append(own)
    for path in _HOST_SOCKET_TREES:
        covering = covering_mount(tree, path)
        if covering and covering.exposes and layout.fact(path).kind is PathKind.DIRECTORY:
            again.append(Mount(dest=path, args=("--perms", "0755", "--tmpfs", path), exposes=False))
    # A stable sort by depth puts each after the binds above it and before those below it
    # (the workspace under /tmp), and after a bind of its own path.
    return sorted(tree + again, key=lambda mount: path_depth(mount.dest))


@attrs.frozen(kw_only=True)
class _Protection:
    mounts: tuple[Mount, ...] = ()
    placeholders: tuple[str, ...] = ()
    problem: str | None = None


def _protect(
    target: str, mounts: list[Mount], layout: HostLayout, files: Mapping[str, bytes]
) -> _Protection:
    """Make `target` unwritable, unrenameable and uncreatable where the sandbox can write.

    Walk down from the writable mount above it: existing directories on the way are pinned
    (bound onto themselves), the target or the first non-directory is re-bound read-only,
    and the first missing component gets an empty read-only directory."""
    covering = covering_mount(mounts, target)
    if covering is None or not covering.writable:
        return _Protection()  # read-only or hidden already
    root = covering.dest
    rest = target[len(root) :].strip("/").split("/") if target != root else []
    if not rest:
        return _Protection(problem=f"{target} is a writable root itself")
    added: list[Mount] = []
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
            if last and file_placeholder(path, files) is not None:
                # A file the host makes with harmless content (see `placeholders`), pinned
                # read-only like an existing one: it cannot be written nor replaced.
                cover = ("--ro-bind", path, path)
                added.append(Mount(dest=path, args=cover, exposes=True))
                return _Protection(mounts=tuple(added), placeholders=(path,))
            placeholder = ("--perms", "0555", "--tmpfs", path, "--remount-ro", path)
            added.append(Mount(dest=path, args=placeholder, exposes=False))
            return _Protection(mounts=tuple(added), placeholders=(path,))
        if not last and path in layout.hollow_directories:
            # A hollow directory on the way (`.git` holding no repository) stays one:
            # covered read-only like a missing one, so that the command cannot make it one.
            # Not ours to make or remove: often another process's placeholder, which that
            # process removes once no run is left in the workspace (`workspace_locks`).
            empty = ("--perms", "0555", "--tmpfs", path, "--remount-ro", path)
            added.append(Mount(dest=path, args=empty, exposes=False))
            return _Protection(mounts=tuple(added))
        if last or fact.kind is not PathKind.DIRECTORY:
            pin = Mount(dest=path, args=("--ro-bind", path, path), exposes=True, guards="write")
            added.append(pin)
            return _Protection(mounts=tuple(added))
        added.append(
            Mount(
                dest=path, args=("--bind", path, path), exposes=True, writable=True, guards="write"
            )
        )
    return _Protection(mounts=tuple(added))


def _mask(path: str, kind: PathKind) -> Mount:
    if kind is PathKind.DIRECTORY:
        return Mount(
            dest=path,
            args=("--perms", "0000", "--tmpfs", path, "--remount-ro", path),
            exposes=False,
            guards="read",
        )
    return Mount(dest=path, args=("--ro-bind", "/dev/null", path), exposes=False, guards="read")


def _kernel_covers(layout: HostLayout, mounts: list[Mount], *, root: bool) -> list[Mount]:
    """Read-only binds and masks over the kernel interfaces the sandbox would see: in its
    fresh /proc, or in a host /proc or /sys a policy's readable or writable paths show.
    Made after those, so that no bind of the policy uncovers them. Only paths that exist on
    the host: bwrap cannot make a mount point in procfs, and a fresh /proc has what the
    host's has. The read-only binds take the host's /proc entries as their source (bwrap
    binds from the host's tree); a sysctl answers for the namespaces of whoever opens it,
    so the sandbox still reads its own network and uts settings there."""
    covers: list[Mount] = []
    masked_paths = KERNEL_MASKED + KERNEL_ROOT_ONLY if root else KERNEL_MASKED
    for paths, masked in ((KERNEL_READ_ONLY, False), (masked_paths, True)):
        for path in paths:
            kind = layout.fact(path).kind
            covering = covering_mount(mounts + covers, path)
            if kind not in (PathKind.DIRECTORY, PathKind.FILE) or covering is None:
                continue
            if covering is not _PROC and not covering.exposes:
                continue  # hidden already (by a mask or a tmpfs), or not mounted at all
            covers.append(_kernel_cover(path, kind, masked=masked))
    return covers


def _kernel_cover(path: str, kind: PathKind, *, masked: bool) -> Mount:
    """Not a guard (see `_mask`): the entries it covers are the kernel's, never replaced."""
    if not masked:
        return Mount(dest=path, args=("--ro-bind", path, path), exposes=True)
    if kind is PathKind.DIRECTORY:
        empty = ("--perms", "0555", "--tmpfs", path, "--remount-ro", path)
        return Mount(dest=path, args=empty, exposes=False)
    return Mount(dest=path, args=("--ro-bind", "/dev/null", path), exposes=False)


def _check_workspace_placement(
    workspace: str, policy: Policy, host: HostContext
) -> ConfigInvalid | None:
    if workspace == "/":
        return ConfigInvalid(problem="the workspace cannot be /", field="workspace")
    for entry in policy.filesystem.deny_read:
        denied = _absolute(entry, host, workspace)
        if under(workspace, denied):
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
            if under(path, tree):
                return ConfigInvalid(
                    problem=f"{entry!r} leads to {path}, a kernel interface: it may be "
                    "readable, never writable",
                    field="filesystem.writable",
                )
    return None


def _protections(
    workspace: str,
    policy: Policy,
    host: HostContext,
    layout: HostLayout,
    mounts: list[Mount],
    files: Mapping[str, bytes],
) -> tuple[list[str], list[str]] | ConfigInvalid:
    """Adds the protection mounts to `mounts`; gives the placeholders and warnings. A path
    that cannot be protected refuses a strict run and warns in a best-effort one."""
    fs = policy.filesystem
    placeholders: list[str] = []
    warnings: list[str] = []
    strict = policy.enforcement is Enforcement.STRICT
    for field, entries in (("filesystem.protected", fs.protected), ("deny_write", fs.deny_write)):
        for entry in entries:
            outcome = _protect(_absolute(entry, host, workspace), mounts, layout, files)
            if outcome.problem is not None:
                if strict:
                    return ConfigInvalid(problem=outcome.problem, field=field)
                warnings.append(f"not protected: {outcome.problem}")
            mounts += outcome.mounts
            placeholders += outcome.placeholders
    return placeholders, warnings


def _masks(
    workspace: str, policy: Policy, host: HostContext, layout: HostLayout, mounts: list[Mount]
) -> list[Mount]:
    """Masks for deny_read entries and /etc secrets that would otherwise be visible."""
    masks: dict[str, Mount] = {}
    for entry in policy.filesystem.deny_read:
        path, kind = _real(layout, _absolute(entry, host, workspace))
        covering = covering_mount(mounts, path)
        if kind is not PathKind.MISSING and covering is not None and covering.exposes:
            masks[path] = _mask(path, kind)
    for path in layout.etc_secrets:
        covering = covering_mount(mounts, path)
        if covering is not None and covering.exposes:
            masks[path] = _mask(path, layout.fact(path).kind)
    return sorted(masks.values(), key=lambda mount: (path_depth(mount.dest), mount.dest))


MountPlan = tuple[tuple[Mount, ...], tuple[str, ...], tuple[str, ...]]


@functools.lru_cache(maxsize=64)
def mount_plan(
    workspace: str,
    policy: Policy,
    host: HostContext,
    layout: HostLayout,
    file_placeholders: FileContents = (),
) -> MountPlan | ConfigInvalid:
    """The mounts, placeholders and warnings of a run. A pure function of values (the
    layout is surveyed afresh for every run), so an agent's next command in the same
    workspace, under the same policy and with the same paths present, reuses it.
    `file_placeholders`: the missing protected paths covered by a file, not a directory
    (see `with_git_indirections`), besides `FILE_PLACEHOLDERS`."""
    checked = _check_workspace_placement(workspace, policy, host)
    if checked is not None:
        return checked
    base = _base_mounts(layout)
    writable = _check_writable_entries(workspace, policy, host, layout)
    if writable is not None:
        return writable
    mounts = base + _own_trees_kept(base, _tree_mounts(workspace, policy, host, layout), layout)
    files = dict(file_placeholders)
    protected = _protections(workspace, policy, host, layout, mounts, files)
    if isinstance(protected, ConfigInvalid):
        return protected
    placeholders, warnings = protected
    mounts += _kernel_covers(layout, mounts, root=host.uid == 0)
    mounts += _masks(workspace, policy, host, layout, mounts)
    return tuple(mounts), tuple(placeholders), tuple(warnings)
