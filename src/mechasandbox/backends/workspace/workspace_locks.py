"""Runs of several processes in one workspace, kept from removing each other's placeholders.

A placeholder is a mount point: while a sandbox stands, the directory carries its read-only
cover of a missing protected path (`.env`, `.git`...), and a sandbox of another process that
started meanwhile in the same workspace found that directory and bound it read-only in turn.
Removing or renaming a directory that is a mount point in another mount namespace succeeds
(Linux >= 3.18) and detaches the mounts on it there: the other sandbox could then create
`.env` or `.git/hooks/...` for real. So the processes of one user coordinate through a lock
file in the state directory, per workspace (hashed into `_BUCKETS` files, so that they stay
few: workspaces of one bucket only wait for each other's cleanup). A process holds its
bucket's lock shared while it has runs there, and removes placeholders only once it gets the
lock exclusive, i.e. when no run of any process is left in the bucket. One that cannot get it
appends its placeholders to the bucket's pending file, then tries once more: whoever gets the
lock exclusive next removes what is pending (empty directories only), so that the last run to
end cleans up.

The lock files are outside every sandbox (the home directory is hidden; see
docs/backends-bubblewrap.md), so a sandboxed process cannot hold them. A lock held exclusive
for longer than `ENTER_WAIT_S` (a removal takes milliseconds: a stuck or foreign holder)
makes a run refuse to start rather than start unprotected. A child forked from a process
holding locks closes its copies at once (`os.register_at_fork`, one hook per `WorkspaceLocks`
that ever opened a lock file, holding it weakly): a copy would share the parent's lock and
could keep it held after the parent let go or died. Another user's runs in the same
workspace use another state directory and are not coordinated.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

_BUCKETS = 256
# Lock files of buckets with no run of ours kept open (unlocked) for the next runs there:
# opening one (and making sure its directory exists) is most of what a run pays for the
# coordination after a quiet spell. A few: a host working in many workspaces holds no more.
_IDLE_KEPT = 8
# How long a run waits for another process's removal of placeholders (milliseconds, as a
# rule) before it gives up rather than run unprotected: see `enter`.
ENTER_WAIT_S = 10.0

# (workspace, placeholders) -> None: removes what it can (empty directories only).
Remover = Callable[[str, list[str]], None]


def locked_too_long(what: str) -> str:
    """Why a `what` ("run", "container") did not start: `enter` gave up."""
    return (
        f"another process has held this workspace's placeholder lock for over "
        f"{ENTER_WAIT_S:g}s; not starting a {what} whose covers it could remove"
    )


def bucket_of(workspace: str) -> str:
    digest = hashlib.sha256(os.fsencode(workspace)).digest()
    return f"{digest[0] % _BUCKETS:02x}"


def _close_descriptors(fds: dict[str, int], owner: int) -> None:
    """Close the lock files in `fds` (only in the process `owner` that opened them)."""
    if os.getpid() != owner:
        return
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _forget_in_child(locks: weakref.ref[WorkspaceLocks]) -> None:
    alive = locks()
    if alive is not None:
        alive.forget_inherited()


class WorkspaceLocks:
    """This process's side of the coordination (not thread-safe: the caller serialises).
    `close` closes the lock files it keeps open (at exit, for an owner that never closed)."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self._owner = os.getpid()
        self._fds: dict[str, int] = {}
        self._idle: dict[str, None] = {}  # buckets whose fd is kept unlocked, oldest first
        self._busy: dict[str, int] = {}  # by bucket: its workspaces this process runs in
        self._deferred: dict[str, list[tuple[str, list[str]]]] = {}  # by bucket
        self._finalizer: weakref.finalize[..., WorkspaceLocks] | None = None
        self._fork_hook = False

    @property
    def directory(self) -> Path | None:
        """Where the lock and pending files are (None: nothing is coordinated)."""
        return self._directory

    def _mine(self) -> None:
        """In a process forked without the fork hook running (not through `os.fork`):
        the same as `forget_inherited`."""
        if self._owner != os.getpid():
            self.forget_inherited()

    def _fd(self, bucket: str) -> int | None:
        if bucket in self._fds:
            if bucket not in self._idle:
                return self._fds[bucket]
            del self._idle[bucket]
            if self._current(bucket, self._fds[bucket]):
                return self._fds[bucket]
            self._close(bucket)
        if self._directory is None:
            return None
        try:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(
                self._directory / f"{bucket}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError:
            return None
        self._fds[bucket] = fd
        if self._finalizer is None or not self._finalizer.alive:
            self._finalizer = weakref.finalize(self, _close_descriptors, self._fds, self._owner)
        if not self._fork_hook:
            self._fork_hook = True  # stays registered (and set) in a forked child
            hook = functools.partial(_forget_in_child, weakref.ref(self))
            os.register_at_fork(after_in_child=hook)
        return fd

    def enter(self, workspace: str) -> bool:
        """The first run of this process in `workspace` starts: hold its bucket shared
        (waits while another process removes placeholders there, up to `ENTER_WAIT_S`).
        False: it could not, and the run must not start (its covers could be removed under
        it); nothing is held then."""
        self._mine()
        bucket = bucket_of(workspace)
        if not self._busy.get(bucket):
            fd = self._fd(bucket)
            if fd is not None and not self._shared(fd):
                self._close(bucket)
                return False
        self._busy[bucket] = self._busy.get(bucket, 0) + 1
        return True

    @staticmethod
    def _shared(fd: int) -> bool:
        deadline = time.monotonic() + ENTER_WAIT_S
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
            except OSError:  # not lockable here (some network file systems): no coordination
                return True
            else:
                return True

    def leave(self, workspace: str, placeholders: list[str], remove: Remover) -> None:
        """The last run of this process in `workspace` ended: its placeholders go once no
        run of any process is left in the bucket (now, or by whoever ends last)."""
        self._mine()
        bucket = bucket_of(workspace)
        if placeholders:
            self._deferred.setdefault(bucket, []).append((workspace, placeholders))
        self._busy[bucket] -= 1
        if self._busy[bucket]:
            return  # another workspace of the bucket still runs here: later
        del self._busy[bucket]
        self._settle(bucket, self._deferred.pop(bucket, []), remove)

    def hand_over(self, entries: Iterable[tuple[str, str]], remove: Remover) -> None:
        """Placeholders a dead process left (workspace, path): removed, or made pending."""
        self._mine()
        by_bucket: dict[str, dict[str, list[str]]] = {}
        for workspace, path in entries:
            by_bucket.setdefault(bucket_of(workspace), {}).setdefault(workspace, []).append(path)
        for bucket, workspaces in by_bucket.items():
            if self._busy.get(bucket):
                self._append_pending(bucket, list(workspaces.items()))
            else:
                self._settle(bucket, list(workspaces.items()), remove)

    def _settle(self, bucket: str, owned: list[tuple[str, list[str]]], remove: Remover) -> None:
        fd = self._fd(bucket)
        if fd is None:  # no state directory: nothing to coordinate with
            for workspace, paths in owned:
                remove(workspace, paths)
            return
        try:
            if self._exclusive(fd):
                for workspace, paths in owned:
                    remove(workspace, paths)
                self._drain_pending(bucket, remove)
                return
            # Someone still runs in the bucket: pending, then once more, in case the last
            # of them ended (and drained) between our try and the append.
            self._append_pending(bucket, owned)
            if self._exclusive(fd):
                self._drain_pending(bucket, remove)
        finally:
            # Unlocked explicitly: a child forked meanwhile shares the descriptor, and a
            # close alone would leave the lock held through its copy. Kept open for the
            # next run there, while few are (see `_IDLE_KEPT`).
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._idle[bucket] = None
            while len(self._idle) > _IDLE_KEPT:
                self._close(next(iter(self._idle)))

    def _close(self, bucket: str) -> None:
        self._idle.pop(bucket, None)
        with contextlib.suppress(OSError):
            os.close(self._fds.pop(bucket))

    def _current(self, bucket: str, fd: int) -> bool:
        """Whether a kept descriptor is still the bucket's lock file: one removed or
        replaced meanwhile (someone cleaned the state directory) would coordinate with
        no other process."""
        assert self._directory is not None
        try:
            held, named = os.fstat(fd), os.stat(self._directory / f"{bucket}.lock")
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)

    @staticmethod
    def _exclusive(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another (EWOULDBLOCK), or not lockable: remove nothing
            return False
        return True

    def _pending_path(self, bucket: str) -> Path:
        assert self._directory is not None
        return self._directory / f"{bucket}.pending"

    def _append_pending(self, bucket: str, owned: list[tuple[str, list[str]]]) -> None:
        lines = "".join(
            json.dumps([workspace, path]) + "\n" for workspace, paths in owned for path in paths
        )
        if not lines or self._directory is None:
            return
        with contextlib.suppress(OSError):
            fd = os.open(
                self._pending_path(bucket),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, lines.encode())
            finally:
                os.close(fd)

    def _drain_pending(self, bucket: str, remove: Remover) -> None:
        """Called holding the bucket exclusive: remove what other processes left pending."""
        path = self._pending_path(bucket)
        try:
            if not os.stat(path).st_size:
                return
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "rb") as handle:
                text = handle.read()
            os.ftruncate(fd, 0)
        except OSError:
            return
        finally:
            os.close(fd)
        by_workspace: dict[str, list[str]] = {}
        for line in text.splitlines():
            with contextlib.suppress(ValueError, TypeError):
                workspace, placeholder = json.loads(line)
                by_workspace.setdefault(str(workspace), []).append(str(placeholder))
        for workspace, paths in by_workspace.items():
            remove(workspace, paths)

    def forget_inherited(self) -> None:
        """In a child just forked: close the copies of the parent's lock descriptors, so
        that the child never holds the parent's locks (not even if the parent dies)."""
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._finalizer is not None:
            self._finalizer.detach()  # the parent's descriptors: closed just now
            self._finalizer = None
        self._owner = os.getpid()
        self._fds = {}
        self._idle = {}
        self._busy = {}
        self._deferred = {}

    def close(self) -> None:
        """Close the lock files kept open (idempotent; they are opened again if needed)."""
        if self._owner != os.getpid():
            return
        if self._finalizer is not None:
            self._finalizer()
        self._idle = {}
