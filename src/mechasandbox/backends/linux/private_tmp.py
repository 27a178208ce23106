"""The private temporary directories of Landlock runs (the sandbox's TMPDIR).

Each run gets a fresh-looking one: a directory of this process's user, mode 0700, empty and
without extended attributes (so no ACL either). A run that leaves it like that gives it
back for a later run instead of removing it (a `mkdtemp` and an `rmdir` less: about 0.1 ms
a run here); one it changed in any way is removed, tree and all, and never handed out
again. A kept directory is checked again when it is handed out (something of the same user
may have touched it meanwhile). What is kept is removed by `close` (the composition root's
shutdown), or at exit for an owner that never closed it. A process forked from the host
keeps nothing of its parent's: two processes handing out one directory would give their
runs a shared TMPDIR. The directories are named after their owner (`leftovers`): those of
a host that died are removed by the next one's sweep (of the host's temp dir at start, of
another parent at its first use here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
import weakref

from mechasandbox.leftovers import sweep_temp_dir, temp_prefix

_KEPT_PER_PARENT = 8  # runs going at once that each find theirs ready (two each: TMPDIR, HOME)


def _pristine(path: str) -> bool:
    """An empty directory of ours, mode 0700, without extended attributes."""
    try:
        found = os.lstat(path)
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
            return False
        if stat.S_IMODE(found.st_mode) != 0o700:
            return False
        with os.scandir(path) as entries:
            if next(entries, None) is not None:
                return False
        return not os.listxattr(path, follow_symlinks=False)
    except OSError:
        return False


def _remove(path: str) -> None:
    try:
        os.rmdir(path)  # most runs leave it empty: one call, not a tree walk
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _remove_kept(kept: dict[str | None, list[str]], lock: threading.Lock, owner: int) -> None:
    """Remove the directories kept in `kept` (only in the process `owner` that kept them)."""
    if os.getpid() != owner:
        return
    with lock:
        paths = [path for paths in kept.values() for path in paths]
        kept.clear()
    for path in paths:
        with contextlib.suppress(OSError):
            _remove(path)


class PrivateTmpDirs:
    """Hands out private temporary directories below a parent (None: the host's temp dir)
    and takes them back after the run (see the module's docstring). Thread-safe. State of
    the landlock backend: `close` removes what it keeps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str | None, list[str]] = {}
        self._owner = os.getpid()  # the process the kept directories belong to
        # Removes the kept directories at `close`, or at exit if nobody closed (see
        # `_remove_kept`); made when the first directory is kept.
        self._finalizer: weakref.finalize[..., PrivateTmpDirs] | None = None
        self._swept: set[str] = set()  # parents other than the temp dir swept already

    def _mine(self) -> dict[str | None, list[str]]:
        """The kept directories, none in a process forked since (they are its parent's).
        Called with the lock held."""
        if self._owner != os.getpid():
            self._owner = os.getpid()
            self._kept = {}
            if self._finalizer is not None:
                self._finalizer.detach()  # the parent's to remove, not ours
                self._finalizer = None
        return self._kept

    def take(self, parent: str | None) -> str:
        with self._lock:
            kept = self._mine().get(parent)
            path = kept.pop() if kept else None
        if path is not None:
            if _pristine(path):
                return path
            _remove(path)
        if parent is not None and parent not in self._swept:
            self._swept.add(parent)  # the temp dir is swept at start (`leftovers`)
            sweep_temp_dir(parent)
        return os.path.realpath(tempfile.mkdtemp(prefix=temp_prefix("landlock"), dir=parent))

    def give_back(self, parent: str | None, path: str) -> None:
        if _pristine(path):
            with self._lock:
                kept = self._mine().setdefault(parent, [])
                if len(kept) < _KEPT_PER_PARENT:
                    kept.append(path)
                    if self._finalizer is None or not self._finalizer.alive:
                        self._finalizer = weakref.finalize(
                            self, _remove_kept, self._kept, self._lock, self._owner
                        )
                    return
        _remove(path)

    def close(self) -> None:
        """Remove every kept directory (idempotent; the object may be used again)."""
        with self._lock:
            self._mine()
            finalizer = self._finalizer
        if finalizer is not None:
            finalizer()
