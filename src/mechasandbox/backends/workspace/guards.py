"""Host paths a bubblewrap sandbox guards with a mount, watched while the run goes.

A read-only pin (`.git/config`, `.git/hooks`), a mask (`~/.netrc`, `/etc/shadow`) or the
cover of a missing protected path (its placeholder) is a mount on the directory entry the
path had when the sandbox was set up. A host process that replaces the path while the run
goes, by a rename over it (how `git config`, many editors and `passwd` write a file) or by
removing and making it again, makes a new entry; the kernel takes the mounts off the old one
in every mount namespace (Linux >= 3.18), and from then on the sandbox sees the new one
through the workspace's (or /etc's) bind: it may write a pinned one, or read a masked one.
A mount namespace offers no way to hold on to a name rather than an entry, so this cannot be
prevented from inside; what the host can do is notice, and stop. `GuardSet` opens each
guarded path (`O_PATH`) before the run and keeps it open: while the run goes the runner
asks it every `WATCH_INTERVAL_S` (`SpawnSpec.watch`) whether the path still leads to the
same inode, and stops the run as soon as one does not; after the run it is asked once more,
and a path replaced since the last look becomes a warning of the result. Holding the
original open is what makes comparing inode numbers sound: a file system may give a freed
inode's number to the next file made (ext4 does, quickly), but not while it is held.
Polling, not inotify: no ctypes in the host, and no per-user limit of inotify instances to
run into with many runs at once. The cost is one descriptor per guarded path during the run.

A look costs an `lstat` per guarded path (19 in a fresh workspace), and a session looks
before and after every command. A path can lead elsewhere only once an entry of its
directory changed (made, removed, renamed over), which changes the directory's ctime; so
each look first takes the stamp of each guarded path's directory (device, inode, ctime:
see `stamps`), and a directory whose stamp is the one of the last look, trusted then, has
its guarded paths as they were then: one `stat` for all of them. The stamp is taken
before the paths are looked at, so a change during the look changes the next stamp.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable

from mechasandbox.backends.stamps import Stamp, directory_stamp, settled

Guards = tuple[tuple[str, str], ...]  # (host path, "write" or "read")
_Held = tuple[int, int, int] | None  # (fd, st_dev, st_ino) of the original; None: missing


def _identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.lstat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def _directory_stamp(path: str) -> Stamp | None:
    """Followed, as the guarded paths' `lstat` follows it; None where it cannot be had."""
    try:
        return directory_stamp(path)
    except OSError:
        return None


def _hold(path: str) -> _Held:
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    found = os.fstat(fd)
    return (fd, found.st_dev, found.st_ino)


def describe_lost(lost: Guards) -> str:
    return "; ".join(
        f"{path} was replaced on the host during the run: its "
        f"{'read-only cover' if kind == 'write' else 'mask'} came off with the old entry, "
        f"so the command could {'write' if kind == 'write' else 'read'} the new one"
        for path, kind in lost
    )


class GuardSet:
    """The guarded paths of one run, held open from before the sandbox is set up until
    `close` (see the module's docstring)."""

    def __init__(self, guards: Iterable[tuple[str, str]]) -> None:
        self.guards: Guards = tuple(guards)
        self._held = {path: _hold(path) for path, _ in self.guards}
        # The guards by directory; per directory, its stamp at the last look (when trusted)
        # and what that look found lost there.
        self._by_directory: dict[str, list[tuple[str, str]]] = {}
        for guard in self.guards:
            self._by_directory.setdefault(os.path.dirname(guard[0]), []).append(guard)
        self._looked: dict[str, tuple[Stamp, list[tuple[str, str]]]] = {}

    def lost(self) -> Guards:
        """The guards whose path leads elsewhere now (or nowhere, or somewhere new)."""
        changed: set[tuple[str, str]] = set()
        for directory, guards in self._by_directory.items():
            stamp = _directory_stamp(directory)
            looked = self._looked.get(directory)
            if stamp is not None and looked is not None and looked[0] == stamp:
                changed.update(looked[1])
                continue
            found = [guard for guard in guards if self._moved(guard[0])]
            if stamp is not None and settled(stamp[2]):
                self._looked[directory] = (stamp, found)
            else:
                self._looked.pop(directory, None)
            changed.update(found)
        return tuple(guard for guard in self.guards if guard in changed)

    def _moved(self, path: str) -> bool:
        held = self._held.get(path)
        return _identity(path) != (None if held is None else held[1:])

    def watcher(self) -> Callable[[], str | None] | None:
        """For `SpawnSpec.watch`: the reason to stop the run once a guard came off (None
        while none did); no watcher without guards."""
        if not self.guards:
            return None

        def check() -> str | None:
            lost = self.lost()
            return describe_lost(lost) if lost else None

        return check

    def warnings(self, lost: Guards | None = None) -> tuple[str, ...]:
        """After the run: one warning per guard lost since the watcher's last look (`lost`:
        as `lost()` found just now, when the caller asked it already)."""
        found = self.lost() if lost is None else lost
        return tuple(describe_lost((guard,)) + "; check it" for guard in found)

    def close(self) -> None:
        for held in self._held.values():
            if held is not None:
                with contextlib.suppress(OSError):
                    os.close(held[0])
        self._held = {}
        self._looked = {}
