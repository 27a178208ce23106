"""The policy's own paths in a container: `readable` and `writable` host paths, `deny_read`.

A container's root is the image, so a host path is visible only where a mount puts it: the
workspace, and what this module adds, as the bubblewrap backend does (`linux/bubblewrap.py`,
`_tree_mounts` and `_masks`):

- each `readable` path bound read-only at its own path, each `writable` one read-write
  (the same path in both lists: writable), `~` against the host's home, relative entries
  against the workspace;
- the home directory hidden under an empty read-only tmpfs where one of those mounts (or
  the workspace) contains it without being it: a workspace that contains the home shows
  neither `~/.ssh` nor the rest of it (bubblewrap hides the home the same way);
- each `deny_read` path that a mount shows (inside the workspace, or inside a readable or
  writable path) masked: an empty read-only tmpfs (mode 0000) over a directory,
  `/dev/null` over a file; so are the secrets of `/etc` (bubblewrap's `ETC_SECRETS`) where a
  readable `/etc` would show them. Deny wins: a mount at or below a mask is left out (the
  engines order mounts by depth, so it would otherwise land on top of the mask).

Symlinks are resolved here, at plan time, and the resolved path is what gets bound (as
bubblewrap's `_real`); but an entry whose path, as written, is inside the workspace adds
nothing: the workspace mount shows it already, and a link there may have been planted by
the repository (`ref -> /`), and so does one that leads into the workspace through a link
on its way (`~/project-link/ref`), or through a link inside a writable path (which an
earlier command may have made). A path that does not exist is skipped.

`survey` reads the host; `mount_args` (pure) gives the `--mount` arguments.
"""

from __future__ import annotations

import glob
import os
import posixpath
import stat

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.linux.roots import ETC_SECRETS
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Policy

# What the engine itself mounts in every container: a policy path there cannot be bound.
_ENGINE_TREES = ("/proc", "/sys", "/dev")
_ENGINE_PATHS = ("/", "/tmp")
# Where the host keeps its unix sockets (docker.sock): a read-only bind does not stop
# connect(), and a socket is reachable only when the policy names it (`allow_unix_sockets`).
_SOCKET_TREES = ("/run", "/var/run")
# What the `--mount` syntax cannot carry in a path (its fields are comma-separated; docker
# reads them as CSV, where a quote starts a quoted field).
_UNMOUNTABLE_CHARACTERS = ",\n\"'"
# The empty read-only tmpfs over a masked directory or the hidden home: nothing is written
# there, but the engine makes the mount points of the mounts below it.
_COVER_BYTES = 4096


@attrs.frozen(kw_only=True)
class PolicyMounts:
    """The real host paths a run mounts for its policy (see the module's docstring)."""

    readable: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    hidden_home: str | None = None
    masked_dirs: tuple[str, ...] = ()
    masked_files: tuple[str, ...] = ()
    # Existing directories between a writable mount and a mask in it, bound onto themselves:
    # a mount point cannot be renamed, so `mv conf conf2` cannot take `conf/secret` out from
    # under its denied name (the next run would read it as `conf2/secret`).
    pinned: tuple[str, ...] = ()

    @property
    def masks(self) -> tuple[str, ...]:
        return (*self.masked_dirs, *self.masked_files)

    def masked(self, path: str) -> bool:
        """Whether `path` is at or below a mask (a mount there would uncover it)."""
        return any(_under(path, mask) for mask in self.masks)


def _under(path: str, root: str) -> bool:
    return root in (path, "/") or path.startswith(root.rstrip("/") + "/")


def _depth(path: str) -> int:
    return 0 if path == "/" else path.rstrip("/").count("/")


def _absolute(entry: str, host: HostContext, workspace: str) -> str:
    """`~` against the host's home, relative paths against the workspace; normalised."""
    expanded = host.expand(entry)
    if not posixpath.isabs(expanded):
        expanded = posixpath.join(workspace, expanded)
    return posixpath.normpath(expanded)


def _kind(path: str) -> str | None:
    """ "dir", "file" (anything else that exists) or None (missing), following links."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return "dir" if stat.S_ISDIR(mode) else "file"


def _shown(path: str, tree: list[tuple[str, bool]]) -> bool:
    """Whether the deepest mount at or above `path` shows host content there."""
    covering = [(dest, exposes) for dest, exposes in tree if _under(path, dest)]
    if not covering:
        return False
    return max(covering, key=lambda item: _depth(item[0]))[1]


def _unmountable(path: str) -> str | None:
    if any(char in path for char in _UNMOUNTABLE_CHARACTERS):
        return f"{path!r}: a container mount path cannot contain commas, quotes or newlines"
    if path in _ENGINE_PATHS or any(_under(path, tree) for tree in _ENGINE_TREES):
        return f"{path} is the engine's own (/, /tmp, /proc, /sys, /dev): it cannot be mounted"
    if any(_under(path, tree) for tree in _SOCKET_TREES):
        return (
            f"{path} holds the host's unix sockets: name a socket with allow_unix_sockets "
            "instead of mounting its directory"
        )
    return None


_MAX_LINKS = 40  # as the kernel's ELOOP limit


def _resolve(path: str, workspace: str, writable: tuple[str, ...]) -> str | None:
    """`path` with its links resolved one at a time, or None when it adds nothing: it does
    not exist, or it leads into the workspace (shown there already, and the repository's
    to redirect: `ref -> /`, or `<link to the workspace>/ref`), or it goes through a link
    inside a `writable` path (an earlier command's to redirect)."""
    pending = [part for part in path.split("/") if part]
    current = "/"
    links = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = posixpath.dirname(current)
            continue
        candidate = posixpath.join(current, part)
        if _under(candidate, workspace):
            return None
        if os.path.islink(candidate):
            links += 1
            if links > _MAX_LINKS or any(_under(current, root) for root in writable):
                return None
            try:
                target = os.readlink(candidate)
            except OSError:
                return None
            if target.startswith("/"):
                current = "/"
            pending[:0] = [piece for piece in target.split("/") if piece]
            continue
        current = candidate
    return current if _kind(current) is not None else None


def _binds(
    workspace: str, policy: Policy, host: HostContext
) -> Result[dict[str, bool], ConfigInvalid]:
    """{real path: writable} of the readable and writable entries a mount must show."""
    fs = policy.filesystem
    writable_roots = tuple(
        real
        for entry in fs.writable
        if (real := _resolve(_absolute(entry, host, workspace), workspace, ())) is not None
    )
    binds: dict[str, bool] = {}
    for field, entries, writable in (
        ("filesystem.readable", fs.readable, False),
        ("filesystem.writable", fs.writable, True),
    ):
        for entry in entries:
            real = _resolve(_absolute(entry, host, workspace), workspace, writable_roots)
            if real is None:
                continue
            problem = _unmountable(real)
            if problem is not None:
                return Failure(ConfigInvalid(problem=problem, field=field))
            binds[real] = binds.get(real, False) or writable
    return Success(binds)


def _denied_paths(workspace: str, policy: Policy, host: HostContext) -> list[str]:
    """The real paths of the deny_read entries and the existing /etc secrets."""
    paths = [
        os.path.realpath(_absolute(entry, host, workspace)) for entry in policy.filesystem.deny_read
    ]
    for pattern in ETC_SECRETS:
        paths += sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    return list(dict.fromkeys(paths))


def _pins(masks: list[str], tree: list[tuple[str, bool]], writable: set[str]) -> list[str]:
    """The directories between each mask and the writable mount that shows it."""
    pins: list[str] = []
    for mask in masks:
        covering = max((dest for dest, _ in tree if _under(mask, dest)), key=_depth)
        if covering not in writable:
            continue
        parts = mask[len(covering.rstrip("/")) + 1 :].split("/")[:-1]
        pins += [posixpath.join(covering, *parts[:count]) for count in range(1, len(parts) + 1)]
    return pins


def survey(
    workspace: str, policy: Policy, host: HostContext
) -> Result[PolicyMounts, ConfigInvalid]:
    """The mounts of one run, from the host as it is now. `workspace` is its real path.

    Refused (`ConfigInvalid`): a workspace inside a denied path (as bubblewrap refuses it),
    a readable or writable path the engine owns (`/`, `/tmp`, `/proc`...), and a path the
    `--mount` syntax cannot carry."""
    for entry in policy.filesystem.deny_read:
        lexical = _absolute(entry, host, workspace)
        if _under(workspace, lexical) or _under(workspace, os.path.realpath(lexical)):
            return Failure(
                ConfigInvalid(
                    problem=f"the workspace {workspace} is inside the denied path {lexical}",
                    field="filesystem.deny_read",
                )
            )
    found = _binds(workspace, policy, host)
    if isinstance(found, Failure):
        return Failure(found.failure())
    binds = found.unwrap()
    tree = [(workspace, True), *((path, True) for path in binds)]
    hidden_home: str | None = None
    home = os.path.realpath(host.home) if host.home else None
    shown = home is not None and home not in dict(tree) and _shown(home, tree)
    if home is not None and home != "/" and shown and _kind(home) == "dir":
        hidden_home = home
        tree.append((home, False))
    masked: dict[str, str] = {}
    for path in _denied_paths(workspace, policy, host):
        kind = _kind(path)
        if kind is not None and _shown(path, tree):
            masked[path] = kind
    writable_roots = {workspace, *(path for path, writable in binds.items() if writable)}
    pinned = [pin for pin in _pins(list(masked), tree, writable_roots) if pin not in masked]
    for path in (*masked, *pinned, *([hidden_home] if hidden_home else [])):
        if any(char in path for char in _UNMOUNTABLE_CHARACTERS):
            return Failure(
                ConfigInvalid(
                    problem=f"{path!r} cannot be masked: a container mount path cannot "
                    "contain commas, quotes or newlines",
                    field="filesystem.deny_read",
                )
            )
    return Success(
        PolicyMounts(
            readable=tuple(sorted(path for path, writable in binds.items() if not writable)),
            writable=tuple(sorted(path for path, writable in binds.items() if writable)),
            hidden_home=hidden_home,
            masked_dirs=tuple(sorted(p for p, kind in masked.items() if kind == "dir")),
            masked_files=tuple(sorted(p for p, kind in masked.items() if kind == "file")),
            pinned=tuple(sorted(set(pinned))),
        )
    )


def _cover(path: str, mode: str, *, copy_up: bool) -> list[str]:
    spec = f"type=tmpfs,destination={path},tmpfs-mode={mode},tmpfs-size={_COVER_BYTES},ro"
    # podman fills a new tmpfs with what was at its mount point unless told not to
    return ["--mount", spec + (",notmpcopyup" if copy_up else "")]


def _bind(path: str, *, readonly: bool) -> list[str]:
    spec = f"type=bind,source={path},target={path}"
    return ["--mount", spec + (",readonly" if readonly else "")]


def mount_args(
    mounts: PolicyMounts, *, tmpfs_copy_up: bool = False, taken: frozenset[str] = frozenset()
) -> list[str]:
    """The `--mount` arguments, shallowest first and masks last at each depth (the engines
    sort mounts by depth themselves; nothing is mounted at or below a mask).
    `tmpfs_copy_up`: the engine copies a directory's content into a tmpfs mounted over it
    by default (podman), so the covers must say `notmpcopyup`. `taken`: destinations the
    protected paths' mounts have already (a pin there is one of them)."""
    wanted: list[tuple[int, int, str, list[str]]] = [
        (_depth(path), 0, path, _bind(path, readonly=path not in mounts.writable))
        for path in (*mounts.readable, *mounts.writable)
    ]
    wanted += [
        (_depth(path), 0, path, _bind(path, readonly=False))
        for path in mounts.pinned
        if path not in taken
    ]
    if mounts.hidden_home is not None:
        home = mounts.hidden_home
        wanted.append((_depth(home), 1, home, _cover(home, "0755", copy_up=tmpfs_copy_up)))
    wanted = [item for item in wanted if not mounts.masked(item[2])]
    for path in mounts.masked_dirs:
        wanted.append((_depth(path), 2, path, _cover(path, "0000", copy_up=tmpfs_copy_up)))
    wanted += [(_depth(path), 2, path, _bind_null(path)) for path in mounts.masked_files]
    args: list[str] = []
    for *_order, mount in sorted(wanted, key=lambda item: item[:3]):
        args += mount
    return args


def _bind_null(path: str) -> list[str]:
    return ["--mount", f"type=bind,source=/dev/null,target={path},readonly"]
