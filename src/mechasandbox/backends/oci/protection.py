"""How a container covers the protected paths of its workspace, and the placeholders that
stand on the host for the ones that are missing.

A missing protected path (`.envrc`, `.git/hooks`...) is covered by a read-only empty
directory mounted onto a placeholder: a mount point the engine (or we, first) make on the
host. A placeholder is removed from the host only when no live container still has it
mounted (removing a mount point on the host would detach the mount inside the container):
none of ours in its workspace (until then it waits among the unused ones), and none of
another process of this user (`workspace_locks`, shared with bubblewrap's runs).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Callable

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.linux.guards import GuardSet
from mechasandbox.backends.linux.placeholders import (
    is_placeholder,
    make_placeholders,
    placeholder_state_directory,
    remove_empty,
)
from mechasandbox.backends.linux.workspace_locks import WorkspaceLocks
from mechasandbox.backends.oci.compiler import ContainerRun
from mechasandbox.domain.errors import ConfigInvalid, SandboxError

# A comma or quote would be read as the next field of `--mount`, a newline ends it.
_UNMOUNTABLE = ",\n\"'"


@attrs.frozen(kw_only=True)
class ProtectionLayout:
    """How the protected paths of one workspace are covered (relative paths, see
    `ContainerRun`), and the ones that cannot be (`problems`: symlinks)."""

    protected: tuple[str, ...] = ()
    pinned: tuple[str, ...] = ()
    placeholders: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def _relative_in(workspace: str, entry: str) -> str | None:
    """`entry` relative to the workspace, or None when it is outside (the read-only root
    covers it already) or under the home directory (not mounted)."""
    if entry.startswith("~"):
        return None
    if os.path.isabs(entry):
        clean = os.path.normpath(entry)
        if not clean.startswith(workspace.rstrip("/") + "/"):
            return None
        entry = clean[len(workspace.rstrip("/")) + 1 :]
    clean = os.path.normpath(entry)
    if clean in (".", "") or clean == ".." or clean.startswith("../"):
        return None
    return clean


def protection_layout(
    workspace: str, entries: tuple[str, ...], *, held: Callable[[str], bool]
) -> ProtectionLayout:
    """Walk each protected entry down from the workspace, as the bubblewrap backend does:
    existing directories on the way are pinned (bound onto themselves, so `mv .git g`
    fails with EBUSY), the entry itself (or the first non-directory) is re-bound read-only,
    and the first missing component gets a read-only empty directory, so it cannot be
    created. A symlink on the way cannot be covered: it is reported as a problem. `held`:
    whether a path is a placeholder a live container of ours holds (still "missing")."""
    pinned: list[str] = []
    protected: list[str] = []
    placeholders: list[str] = []
    problems: list[str] = []
    for entry in entries:
        relative = _relative_in(workspace, entry)
        if relative is None:
            continue
        if any(char in relative for char in _UNMOUNTABLE):
            # Nested repositories are found by name: an earlier run chose these names.
            problems.append(
                f"{workspace}/{relative}: a container mount path cannot contain {_UNMOUNTABLE!r}"
            )
            continue
        parts = relative.split("/")
        for index in range(len(parts)):
            current = "/".join(parts[: index + 1])
            path = os.path.join(workspace, current)
            last = index == len(parts) - 1
            if os.path.islink(path):
                problems.append(
                    f"{path} is a symlink: its target can be made read-only but the link "
                    "itself could be replaced"
                )
                break
            if not os.path.lexists(path) or held(path):
                placeholders.append(current)
                break
            if last or not os.path.isdir(path):
                protected.append(current)
                break
            pinned.append(current)

    def unique(paths: list[str], *covered: list[str]) -> tuple[str, ...]:
        seen = {path for group in covered for path in group}
        return tuple(path for path in dict.fromkeys(paths) if path not in seen)

    return ProtectionLayout(
        protected=unique(protected),
        pinned=unique(pinned, protected, placeholders),
        placeholders=unique(placeholders, protected),
        problems=tuple(dict.fromkeys(problems)),
    )


def check_mountable(workspace: str) -> Result[str, SandboxError]:
    if any(char in workspace for char in _UNMOUNTABLE):
        return Failure(
            ConfigInvalid(
                problem=(
                    f"workspace {workspace!r}: a container mount path cannot contain "
                    "commas, quotes or newlines"
                ),
                field="workspace",
            )
        )
    return Success(workspace)


def placeholder_paths(run: ContainerRun) -> tuple[str, ...]:
    return tuple(os.path.join(run.workspace, path) for path in run.placeholders)


def guards(run: ContainerRun) -> GuardSet:
    """The host paths the container's protection mounts stand on, watched during the
    run (see `linux.guards`: a host process replacing one takes its mount off in the
    container too). The placeholders are made here, before the engine would, so that
    they are watched as well. On Linux only: elsewhere the engine runs in a VM and its
    mounts are not on this host's directory entries."""
    if not sys.platform.startswith("linux"):
        return GuardSet(())
    make_placeholders(placeholder_paths(run))
    relative = (*run.pinned, *run.protected, *run.placeholders)
    guarded = [(os.path.join(run.workspace, p.strip("/")), "write") for p in relative]
    return GuardSet((*guarded, *((path, "read") for path in run.mounts.masks)))


# -- the placeholders this process's containers hold ------------------------------------

# An empty read-only directory of this process: the source of every placeholder mount.
_EMPTY: list[str] = []
_EMPTY_LOCK = threading.Lock()
# Placeholder mount points this process's containers are using, with how many use each;
# the workspaces they run in, with how many; the placeholders no container uses any more,
# by workspace, removed once its last container ends.
_PLACEHOLDER_USERS: dict[str, int] = {}
_WORKSPACE_USERS: dict[str, int] = {}
_UNUSED: dict[str, list[str]] = {}
_LOCKS: list[WorkspaceLocks] = []


def workspace_locks() -> WorkspaceLocks:
    if not _LOCKS:
        directory = placeholder_state_directory()
        _LOCKS.append(WorkspaceLocks(directory / "workspaces" if directory else None))
    return _LOCKS[0]


def is_held_placeholder(path: str) -> bool:
    """A placeholder (an empty directory, or a file placeholder with just its content)
    one of our live containers holds: still "missing" for the next run (not a real path
    to re-bind)."""
    with _EMPTY_LOCK:
        held = path in _PLACEHOLDER_USERS
    return held and is_placeholder(path)


def empty_directory() -> str:
    with _EMPTY_LOCK:
        if not _EMPTY or not os.path.isdir(_EMPTY[0]):
            path = tempfile.mkdtemp(prefix="mechasandbox-empty-")
            os.chmod(path, 0o500)  # read-only for its owner too
            _EMPTY[:] = [path]
        return _EMPTY[0]


def hold_placeholders(workspace: str, paths: tuple[str, ...]) -> bool:
    """A container of ours in `workspace` (with these placeholders) is about to start; its
    mounts may also stand on another process's placeholders, hence the workspace's lock.
    False: it could not be had (see `WorkspaceLocks.enter`): do not start, do not release."""
    with _EMPTY_LOCK:
        if not _WORKSPACE_USERS.get(workspace) and not workspace_locks().enter(workspace):
            return False
        _WORKSPACE_USERS[workspace] = _WORKSPACE_USERS.get(workspace, 0) + 1
        for path in paths:
            _PLACEHOLDER_USERS[path] = _PLACEHOLDER_USERS.get(path, 0) + 1
        return True


def release_placeholders(workspace: str, paths: tuple[str, ...]) -> None:
    """That container is gone: remove the empty mount points the engine made on the host
    once no container uses them (anything someone put there meanwhile stays)."""
    with _EMPTY_LOCK:
        for path in paths:
            users = _PLACEHOLDER_USERS.get(path, 0) - 1
            if users > 0:
                _PLACEHOLDER_USERS[path] = users
            else:
                _PLACEHOLDER_USERS.pop(path, None)
                _UNUSED.setdefault(workspace, []).append(path)
        remaining = _WORKSPACE_USERS.get(workspace, 0) - 1
        if remaining > 0:
            _WORKSPACE_USERS[workspace] = remaining
            return
        _WORKSPACE_USERS.pop(workspace, None)
        workspace_locks().leave(workspace, _UNUSED.pop(workspace, []), remove_empty)


def release_all_at_exit() -> None:
    with _EMPTY_LOCK:
        workspaces = list(_WORKSPACE_USERS)
        for workspace in workspaces:
            _WORKSPACE_USERS[workspace] = 1
        held = tuple(_PLACEHOLDER_USERS)
        for path in held:
            _PLACEHOLDER_USERS[path] = 1
    for workspace in workspaces:
        mine = tuple(p for p in held if p.startswith(workspace.rstrip("/") + "/"))
        release_placeholders(workspace, mine)
    with _EMPTY_LOCK:
        for path in _EMPTY:
            with contextlib.suppress(OSError):
                os.rmdir(path)
