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
import functools
import os
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.oci.compiler import ContainerRun
from mechasandbox.backends.workspace.guards import GuardSet
from mechasandbox.backends.workspace.placeholders import (
    FileContents,
    KnownFiles,
    PlaceholderJournal,
    is_placeholder,
    make_placeholders,
    placeholder_state_directory,
    remove_empty,
)
from mechasandbox.backends.workspace.workspace_locks import WorkspaceLocks
from mechasandbox.domain.errors import ConfigInvalid, SandboxError
from mechasandbox.leftovers import temp_prefix

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
    make_placeholders(placeholder_paths(run), dict(run.file_placeholders))
    relative = (*run.pinned, *run.protected, *run.placeholders)
    guarded = [(os.path.join(run.workspace, p.strip("/")), "write") for p in relative]
    return GuardSet((*guarded, *((path, "read") for path in run.mounts.masks)))


# -- the placeholders this process's containers hold ------------------------------------


@attrs.define(eq=False)
class _Held:
    """What a `WorkspacePlaceholders` holds (handed to its finalizer, which must not hold
    the registry itself)."""

    lock: threading.Lock = attrs.field(factory=threading.Lock)
    # An empty read-only directory of this process: the source of every placeholder mount.
    empty: str | None = None
    # Placeholder mount points our containers are using, with how many use each; the
    # workspaces they run in, with how many; the placeholders no container uses any more,
    # by workspace, removed once its last container ends.
    placeholder_users: dict[str, int] = attrs.field(factory=dict)
    workspace_users: dict[str, int] = attrs.field(factory=dict)
    unused: dict[str, list[str]] = attrs.field(factory=dict)
    locks: WorkspaceLocks | None = None
    # The placeholders made, for the next start to sweep should this process die.
    journal: PlaceholderJournal = attrs.field(factory=PlaceholderJournal)
    # The file placeholders of the runs, with their content (what removal compares with).
    files: KnownFiles = attrs.field(factory=KnownFiles)

    def workspace_locks(self) -> WorkspaceLocks:
        """(Called with `lock` held.) Made at first use, where the user's state is then."""
        if self.locks is None:
            directory = placeholder_state_directory()
            self.locks = WorkspaceLocks(directory / "workspaces" if directory else None)
        return self.locks


class WorkspacePlaceholders:
    """The placeholders our containers hold, by workspace (see the module), and the empty
    directory mounted onto them. `close` releases them all (each removed once no process
    of this user runs in its workspace) and removes the empty directory, as the
    interpreter's exit does at the latest."""

    def __init__(self) -> None:
        self._held = _Held()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _holding(self) -> None:
        """(Called with the lock held.) Something is held from now on: released at exit."""
        if self._finalizer is None or not self._finalizer.alive:
            self._finalizer = weakref.finalize(self, _release_all, self._held)

    def locks(self) -> WorkspaceLocks:
        """How this registry coordinates with other processes (tests look where)."""
        with self._held.lock:
            return self._held.workspace_locks()

    def is_held(self, path: str) -> bool:
        """A placeholder (an empty directory, or a file placeholder with just its content)
        one of our live containers holds: still "missing" for the next run (not a real
        path to re-bind)."""
        with self._held.lock:
            held = path in self._held.placeholder_users
        return held and is_placeholder(path, self._held.files)

    def empty_directory(self) -> str:
        held = self._held
        with held.lock:
            if held.empty is None or not os.path.isdir(held.empty):
                self._holding()
                held.empty = tempfile.mkdtemp(prefix=temp_prefix("empty"))
                os.chmod(held.empty, 0o500)  # read-only for its owner too
            return held.empty

    def hold(self, workspace: str, paths: tuple[str, ...], files: FileContents = ()) -> bool:
        """A container of ours in `workspace` (with these placeholders; `files`: its file
        placeholders) is about to start; its mounts may also stand on another process's
        placeholders, hence the workspace's lock. False: it could not be had (see
        `WorkspaceLocks.enter`): do not start, do not release."""
        held = self._held
        held.files.add(files)
        with held.lock:
            users = held.workspace_users
            if not users.get(workspace) and not held.workspace_locks().enter(workspace):
                return False
            held.journal.record(workspace, paths)  # swept by the next start if we die
            self._holding()
            users[workspace] = users.get(workspace, 0) + 1
            for path in paths:
                held.placeholder_users[path] = held.placeholder_users.get(path, 0) + 1
            return True

    def release(self, workspace: str, paths: tuple[str, ...]) -> None:
        """That container is gone: remove the empty mount points the engine made on the
        host once no container uses them (anything someone put there meanwhile stays)."""
        _release(self._held, workspace, paths)

    def close(self) -> None:
        with self._held.lock:
            finalizer = self._finalizer
        if finalizer is not None:
            finalizer()


def _release(held: _Held, workspace: str, paths: tuple[str, ...]) -> None:
    with held.lock:
        for path in paths:
            users = held.placeholder_users.get(path, 0) - 1
            if users > 0:
                held.placeholder_users[path] = users
            else:
                held.placeholder_users.pop(path, None)
                held.unused.setdefault(workspace, []).append(path)
        if workspace not in held.workspace_users:
            # Let go of already (`close` came first: the root shuts the state down
            # before the warm pool whose containers end here).
            return
        remaining = held.workspace_users[workspace] - 1
        if remaining > 0:
            held.workspace_users[workspace] = remaining
            return
        del held.workspace_users[workspace]
        unused = held.unused.pop(workspace, [])
        held.workspace_locks().leave(
            workspace, unused, functools.partial(remove_empty, files=held.files)
        )


def _release_all(held: _Held) -> None:
    """Every workspace let go of at once (its containers are gone), then the empty
    directory removed."""
    with held.lock:
        workspaces = list(held.workspace_users)
        for workspace in workspaces:
            held.workspace_users[workspace] = 1
        placeholders = tuple(held.placeholder_users)
        for path in placeholders:
            held.placeholder_users[path] = 1
    for workspace in workspaces:
        mine = tuple(p for p in placeholders if p.startswith(workspace.rstrip("/") + "/"))
        _release(held, workspace, mine)
    with held.lock:
        if held.empty is not None:
            with contextlib.suppress(OSError):
                os.rmdir(held.empty)
            held.empty = None
        if held.locks is not None:
            held.locks.close()
        held.journal.close()
