"""Host paths a bubblewrap sandbox guards with a mount, watched while the run goes.

A read-only pin (`.git/config`, `.git/hooks`) or a mask (`~/.netrc`, `/etc/shadow`) is a
mount on the directory entry the path had when the sandbox was set up. A host process that
replaces the path while the run goes, by a rename over it (how `git config`, many editors and
`passwd` write a file), makes a new entry; the kernel takes the mounts off the old one in
every mount namespace (Linux >= 3.18), and from then on the sandbox sees the new file through
the workspace's (or /etc's) bind: it may write a pinned one, or read a masked one. A mount
namespace offers no way to hold on to a name rather than an entry, so this cannot be
prevented from inside; what the host can do is notice, and stop. Each guarded path's
identity (device, inode) is taken before the run; while the run goes the runner checks
them every `WATCH_INTERVAL_S` (`watcher`, see `SpawnSpec.watch`) and stops the run as soon
as one changed; after the run they are checked once more (`guards_lost`), and a path
replaced since the last look becomes a warning of the result. Polling, not inotify: no
ctypes in the host, and no per-user limit of inotify instances to run into with many runs
at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

Identity = tuple[int, int] | None  # (st_dev, st_ino), None: missing
Guards = tuple[tuple[str, str], ...]  # (host path, "write" or "read")


def _identity(path: str) -> Identity:
    try:
        found = os.lstat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def identities(guards: Iterable[tuple[str, str]]) -> dict[str, Identity]:
    """The identity of each guarded path now (just before the sandbox is set up)."""
    return {path: _identity(path) for path, _ in guards}


def _changed(before: Mapping[str, Identity], guards: Iterable[tuple[str, str]]) -> Guards:
    return tuple((p, kind) for p, kind in guards if p in before and _identity(p) != before[p])


def describe_lost(lost: Guards) -> str:
    return "; ".join(
        f"{path} was replaced on the host during the run: its "
        f"{'read-only pin' if kind == 'write' else 'mask'} came off with the old file, so the "
        f"command could {'write' if kind == 'write' else 'read'} the new one"
        for path, kind in lost
    )


def watcher(before: Mapping[str, Identity], guards: Guards) -> Callable[[], str | None] | None:
    """For `SpawnSpec.watch`: the reason to stop the run once a guard came off (None while
    none did); no watcher without guards."""
    if not guards:
        return None

    def check() -> str | None:
        lost = _changed(before, guards)
        return describe_lost(lost) if lost else None

    return check


def guards_lost(
    before: Mapping[str, Identity], guards: Iterable[tuple[str, str]]
) -> tuple[str, ...]:
    """Warnings for the guarded paths replaced (or removed) since `before` was taken."""
    return tuple(
        describe_lost(((path, kind),)) + "; check it" for path, kind in _changed(before, guards)
    )
