"""Runs of several processes in one workspace, kept from removing each other's placeholders.

A placeholder is a mount point: while a sandbox stands, the directory carries its read-only
cover of a missing protected path (`.env`, `.git`...), and a sandbox of another process that
started meanwhile in the same workspace found that directory and bound it read-only in turn.
Removing or renaming a directory that is a mount point in another mount namespace succeeds
(Linux >= 3.18) and detaches the mounts on it there: the other sandbox could then create
`.env` or `.git/hooks/...` for real. So the processes of one user coordinate through lock
files in the state directory: a workspace is hashed into one of `_BUCKETS` files (so that
they stay few), and locks one byte of its file, at an offset hashed from the workspace too
(open file description locks, Linux >= 3.15: they belong to the descriptor, as `flock`'s
do, so two `WorkspaceLocks` of one process conflict as two processes do). A process holds
its workspace's byte shared while it has runs there, and removes placeholders only once it
gets the byte exclusive, i.e. when no run of any process is left in that workspace (runs in
other workspaces of the same file do not hold it back: a finished run leaves its workspace
as its command left it). One that cannot get it appends its placeholders to the file's
pending list, then tries once more: whoever gets a workspace's byte exclusive next removes
what is pending there (empty directories only), so that the last run to end cleans up.
Where there are no such locks (macOS), a process locks the whole file with `flock`: the
workspaces of one file then wait for each other's cleanup.

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
import struct
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


# Open file description locks on one byte per workspace where the platform has them; None
# (the whole file, by `flock`) elsewhere.
_BYTE_LOCKS = hasattr(fcntl, "F_OFD_SETLK")
# struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for these locks), padding.
_FLOCK = struct.Struct("hhqqi4x")


def byte_of(workspace: str) -> int | None:
    """The offset of the byte `workspace` locks in its bucket's file (None: the whole file
    is locked, see the module's docstring)."""
    if not _BYTE_LOCKS:
        return None
    digest = hashlib.sha256(os.fsencode(workspace)).digest()
    return int.from_bytes(digest[1:9], "big") >> 2  # below 2**62: any file offset


def try_lock(fd: int, byte: int | None, kind: int) -> bool | None:
    """Lock `byte` of `fd` (None: the whole file) without waiting; `kind` is `fcntl`'s
    F_RDLCK, F_WRLCK or F_UNLCK. True: done; False: another holds a conflicting lock;
    None: the file cannot be locked here (some network file systems)."""
    try:
        if byte is None:
            operation = {fcntl.F_RDLCK: fcntl.LOCK_SH, fcntl.F_WRLCK: fcntl.LOCK_EX}
            fcntl.flock(fd, operation.get(kind, fcntl.LOCK_UN) | fcntl.LOCK_NB)
        else:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))
    except (BlockingIOError, PermissionError):  # EWOULDBLOCK, EACCES: held by another
        return False
    except OSError:
        return None
    return True


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
        # What one lock covers (a workspace, or a bucket without byte locks): how many times
        # this process entered it, and the placeholders waiting for its last run to end.
        self._busy: dict[str, int] = {}
        self._deferred: dict[str, list[tuple[str, list[str]]]] = {}
        self._users: dict[str, int] = {}  # by bucket: its units this process holds
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

    @staticmethod
    def _unit(workspace: str) -> tuple[str, str, int | None]:
        """(bucket, what its lock covers, the byte locked: see `byte_of`)."""
        bucket = bucket_of(workspace)
        byte = byte_of(workspace)
        return bucket, workspace if byte is not None else bucket, byte

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
        """The first run of this process in `workspace` starts: hold its lock shared (waits
        while another process removes placeholders there, up to `ENTER_WAIT_S`). False: it
        could not, and the run must not start (its covers could be removed under it);
        nothing is held then."""
        self._mine()
        bucket, unit, byte = self._unit(workspace)
        if not self._busy.get(unit):
            fd = self._fd(bucket)
            if fd is not None and not self._shared(fd, byte):
                self._release(bucket, used=False)
                return False
            self._users[bucket] = self._users.get(bucket, 0) + 1
        self._busy[unit] = self._busy.get(unit, 0) + 1
        return True

    @staticmethod
    def _shared(fd: int, byte: int | None) -> bool:
        deadline = time.monotonic() + ENTER_WAIT_S
        pause = 0.001
        while True:
            locked = try_lock(fd, byte, fcntl.F_RDLCK)
            if locked is not False:  # None: not lockable here, no coordination
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def leave(self, workspace: str, placeholders: list[str], remove: Remover) -> None:
        """The last run of this process in `workspace` ended: its placeholders go once no
        run of any process is left there (now, or by whoever ends last)."""
        self._mine()
        bucket, unit, byte = self._unit(workspace)
        if placeholders:
            self._deferred.setdefault(unit, []).append((workspace, placeholders))
        self._busy[unit] -= 1
        if self._busy[unit]:
            return  # (without byte locks) another workspace of the bucket still runs here
        del self._busy[unit]
        self._users[bucket] -= 1
        self._settle(bucket, byte, self._deferred.pop(unit, []), remove)

    def hand_over(self, entries: Iterable[tuple[str, str]], remove: Remover) -> None:
        """Placeholders a dead process left (workspace, path): removed, or made pending."""
        self._mine()
        by_unit: dict[tuple[str, str, int | None], dict[str, list[str]]] = {}
        for workspace, path in entries:
            by_unit.setdefault(self._unit(workspace), {}).setdefault(workspace, []).append(path)
        for (bucket, unit, byte), workspaces in by_unit.items():
            if self._busy.get(unit):
                self._append_pending(bucket, list(workspaces.items()))
            else:
                self._settle(bucket, byte, list(workspaces.items()), remove)

    def _settle(
        self,
        bucket: str,
        byte: int | None,
        owned: list[tuple[str, list[str]]],
        remove: Remover,
    ) -> None:
        """Remove `owned` once this process holds the lock of `byte` exclusive (no run of
        anyone left there), else leave it pending; then let go of that lock."""
        fd = self._fd(bucket)
        if fd is None:  # no state directory: nothing to coordinate with
            for workspace, paths in owned:
                remove(workspace, paths)
            self._release(bucket)
            return
        try:
            if self._exclusive(fd, byte):
                for workspace, paths in owned:
                    remove(workspace, paths)
                self._drain_pending(bucket, fd, byte, remove)
                return
            # Someone still runs there: pending, then once more, in case the last of them
            # ended (and drained) between our try and the append.
            self._append_pending(bucket, owned)
            if self._exclusive(fd, byte):
                self._drain_pending(bucket, fd, byte, remove)
        finally:
            # Unlocked explicitly: a child forked meanwhile shares the descriptor, and a
            # close alone would leave the lock held through its copy.
            try_lock(fd, byte, fcntl.F_UNLCK)
            self._release(bucket)

    def _release(self, bucket: str, *, used: bool = True) -> None:
        """A bucket none of whose locks this process holds any more keeps its descriptor
        open for the next run there, while few are (see `_IDLE_KEPT`); `used`: False when
        it was opened for nothing (a run that could not start), then closed."""
        if self._users.get(bucket) or bucket not in self._fds:
            return
        self._users.pop(bucket, None)
        if not used:
            self._close(bucket)
            return
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
    def _exclusive(fd: int, byte: int | None) -> bool:
        # Held by another, or not lockable: remove nothing.
        return try_lock(fd, byte, fcntl.F_WRLCK) is True

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

    def _drain_pending(self, bucket: str, fd: int, held: int | None, remove: Remover) -> None:
        """Called holding the lock of byte `held` (or of the whole file) exclusive: remove
        what other processes left pending where nobody runs any more (the workspace of
        `held`, and the others whose lock this process gets exclusive now); the rest stays
        pending."""
        path = self._pending_path(bucket)
        try:
            if not os.stat(path).st_size:
                return
            pending = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        taken: dict[str, list[str]] = {}
        locked: list[int] = []  # bytes locked here for the removal, let go of after it
        try:
            fcntl.flock(pending, fcntl.LOCK_EX)
            with os.fdopen(os.dup(pending), "rb") as handle:
                lines = handle.read().splitlines()
            kept: list[bytes] = []
            for line in lines:
                try:
                    workspace, placeholder = (str(part) for part in json.loads(line))
                except (ValueError, TypeError):
                    continue
                if workspace not in taken and not self._takes(fd, workspace, held, locked):
                    kept.append(line + b"\n")
                    continue
                taken.setdefault(workspace, []).append(placeholder)
            os.ftruncate(pending, 0)
            if kept:
                os.pwrite(pending, b"".join(kept), 0)
        except OSError:
            pass
        finally:
            os.close(pending)
        try:
            for workspace, paths in taken.items():
                remove(workspace, paths)
        finally:
            for byte in locked:
                try_lock(fd, byte, fcntl.F_UNLCK)

    def _takes(self, fd: int, workspace: str, held: int | None, locked: list[int]) -> bool:
        """Whether the pending placeholders of `workspace` may go now: nobody runs there
        (its lock is `held`, or this process gets it exclusive now: then `locked` gets its
        byte)."""
        byte = byte_of(workspace)
        if byte is None or byte == held:  # the whole file, or the byte held: ours already
            return True
        if self._busy.get(workspace) or not self._exclusive(fd, byte):
            return False
        locked.append(byte)
        return True

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
        self._users = {}

    def close(self) -> None:
        """Close the lock files kept open (idempotent; they are opened again if needed)."""
        if self._owner != os.getpid():
            return
        if self._finalizer is not None:
            self._finalizer()
        self._idle = {}
