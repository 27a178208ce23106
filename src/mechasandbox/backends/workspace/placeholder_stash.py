"""Placeholders taken out of a workspace by a rename and removed later, off the run's path.

Removing an empty directory frees its block, and on a file system mounted with online
discard (`-o discard`, common for cloud disks) `rmdir` then waits for the device: 68 µs
each on the VM the figures of docs/performance.md come from, 13 of them after every run
with the default protected paths, where renaming one into another directory of the same
file system takes 8 µs. So a placeholder found empty is renamed into this process's stash
(beside its journal, when that is on the workspace's file system) and removed there by a
background thread; the run is over, and the workspace as it was, the moment the renames
are done. One that is not empty (something on the host wrote into it during the run) stays
in the workspace, as before. One found not empty when its turn comes (written between the
check and the rename) is renamed back when its place is still free.

The background work waits a few ms and takes a run's directories in one batch (it would
otherwise contend with the renames and the next run's placeholders in the file system),
and most of them are not removed at all: kept empty in a pool (up to 64), they become the
next runs' placeholders, renamed back into a workspace (`place`: a fifth of a `mkdir`,
never over what is there, `renameat2(RENAME_NOREPLACE)`; each checked empty first). At
`close` (or at exit, for an owner that never closed it) the stash is emptied and removed; a
host that died leaves empty directories in it, which the next process removes with the
journal (see `placeholders`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import queue
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

_EXIT_WAIT_S = 5.0
_SETTLE_S = 0.003
# Empty directories kept for the next runs' placeholders: two runs' worth of the default
# protected list and then some (a run's are pooled a few ms after it ended, once the next
# run has taken the ones before).
_POOL_MAX = 64
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def remove_stash(stash: Path) -> None:
    """Remove a stash: its empty directories, then itself (anything else stays)."""
    with contextlib.suppress(OSError), os.scandir(stash) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                os.rmdir(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(stash)


def is_empty_directory(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


@functools.cache
def _rename_noreplace() -> Callable[[str, str], int] | None:
    """`renameat2(..., RENAME_NOREPLACE)` as a function giving 0 or the errno; None where
    libc has none. (ctypes is imported here, once pooled directories are there to place:
    a one-shot CLI run never gets that far.)"""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    renameat2.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )

    def rename(source: str, target: str) -> int:
        result = renameat2(
            _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
        )
        return 0 if result == 0 else ctypes.get_errno() or errno.EIO

    return rename


# What the background worker and the finalizer share with the stash (never the stash itself,
# so that it can go away and its finalizer run).
_Batches = queue.SimpleQueue[list[tuple[str, str]] | None]


def _remove_batches(
    batches: _Batches, closing: threading.Event, lock: threading.Lock, pool: list[str]
) -> None:
    """The background worker: removes what is handed over, or pools it (see `_keep`)."""
    while (batch := batches.get()) is not None:
        # Not at once: runs back to back make their next placeholders meanwhile, and
        # a removal here contends with each of those mkdirs in the file system (13 made
        # in 0.24 ms after this pause, 0.83 ms without it). At exit, no pause.
        closing.wait(_SETTLE_S)
        for stashed, origin in batch:
            if is_empty_directory(stashed) and _keep(stashed, closing, lock, pool):
                continue
            try:
                os.rmdir(stashed)
            except OSError:  # written into after all: back where it was, if still free
                with contextlib.suppress(OSError):
                    if not os.path.lexists(origin):
                        os.rename(stashed, origin)


def _keep(stashed: str, closing: threading.Event, lock: threading.Lock, pool: list[str]) -> bool:
    """Pool an empty directory for the next runs' placeholders, while there is room:
    a rename into the workspace costs a fifth of a `mkdir`, and nothing is removed."""
    with lock:
        if closing.is_set() or len(pool) >= _POOL_MAX:
            return False
        pool.append(stashed)
        return True


def _finish(
    path: Path,
    batches: _Batches,
    closing: threading.Event,
    pool: list[str],
    worker: threading.Thread,
    owner: int,
) -> None:
    """Finish the removals (bounded), then remove the stash (the pool with it); only in
    the process `owner` that made it. Takes no lock and joins no thread of its own: when the
    stash is collected, this may run in any thread, the worker (holding `lock`) included. A
    directory pooled meanwhile is removed with the stash."""
    if os.getpid() != owner:
        return
    closing.set()
    pool.clear()
    batches.put(None)
    if threading.current_thread() is not worker:
        worker.join(_EXIT_WAIT_S)
    remove_stash(path)


class PlaceholderStash:
    """This process's stash at `path` (made on first use). Thread-safe; in a process forked
    from the one that made it, it stashes nothing (the caller removes in place)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._names = itertools.count()
        self._queue: _Batches = queue.SimpleQueue()
        self._device: int | None = None
        self._closing = threading.Event()
        self._pool: list[str] = []  # empty directories in the stash, ready to be placed
        # Stops the worker and removes the stash (`_finish`), at `close` or at exit; made
        # with the worker.
        self._finalizer: weakref.finalize[..., PlaceholderStash] | None = None

    def retire(self, workspace: str, paths: list[str]) -> list[str]:
        """Take the empty ones of `paths` (deepest first) out of `workspace`; gives back
        those left for the caller to remove in place."""
        if os.getpid() != self._owner or not self._same_device(workspace):
            return paths
        left: list[str] = []
        moved: list[tuple[str, str]] = []
        for path in paths:
            if not is_empty_directory(path):
                left.append(path)
                continue
            with self._lock:
                stashed = str(self.path / str(next(self._names)))
            try:
                os.rename(path, stashed)
            except OSError:
                left.append(path)
                continue
            moved.append((stashed, path))
        # Handed over whole, once the renames are done: a removal in the stash directory
        # meanwhile would hold the locks these renames need (measured: 13 renames took
        # 0.52 ms interleaved with the removals, 0.06 ms alone).
        if moved:
            self._queue.put(moved)
        return left

    def place(self, workspace: str, paths: list[str]) -> list[str]:
        """Put pooled empty directories at those of `paths` that do not exist (in the given
        order: parents first), by a rename that never replaces: one at a path that exists
        (another run's placeholder) is left there as `mkdir` would leave it. Gives back the
        paths left for the caller to make. A pooled directory found not empty (written
        into while pooled) is not used: the stash is this user's alone, but nothing of it
        may reach a workspace unchecked."""
        if os.getpid() != self._owner:
            return paths
        with self._lock:
            if not self._pool:
                return paths
        rename = _rename_noreplace()
        if rename is None or not self._same_device(workspace):
            return paths
        left: list[str] = []
        for path in paths:
            with self._lock:
                pooled = self._pool.pop() if self._pool else None
            if pooled is None:
                left.append(path)
                continue
            if not is_empty_directory(pooled):  # left in the stash (kept at exit), not placed
                left.append(path)
                continue
            code = rename(pooled, path)
            if code == 0:
                continue
            with self._lock:
                self._pool.append(pooled)
            if code != errno.EEXIST:
                left.append(path)
        return left

    def _same_device(self, workspace: str) -> bool:
        with self._lock:
            if self._device is None:
                try:
                    self.path.mkdir(mode=0o700, exist_ok=True)
                    self._device = self.path.stat().st_dev
                except OSError:
                    self._device = -1
                if self._device != -1:
                    shared = (self._queue, self._closing, self._lock, self._pool)
                    worker = threading.Thread(target=_remove_batches, args=shared, daemon=True)
                    worker.start()
                    self._finalizer = weakref.finalize(
                        self,
                        _finish,
                        self.path,
                        self._queue,
                        self._closing,
                        self._pool,
                        worker,
                        self._owner,
                    )
            device = self._device
        try:
            return device == os.stat(workspace).st_dev
        except OSError:
            return False

    def close(self) -> None:
        """Finish the removals (bounded), then remove the stash (the pool with it).
        Idempotent; nothing in a process forked from the one that made it."""
        if self._finalizer is not None:
            self._finalizer()
