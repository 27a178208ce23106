"""Host paths a bubblewrap sandbox guards with a mount, checked again after the run.

A read-only pin (`.git/config`, `.git/hooks`) or a mask (`~/.netrc`, `/etc/shadow`) is a
mount on the directory entry the path had when the sandbox was set up. A host process that
replaces the path while the run goes, by a rename over it (how `git config`, many editors and
`passwd` write a file), makes a new entry; the kernel takes the mounts off the old one in
every mount namespace (Linux >= 3.18), and from then on the sandbox sees the new file through
the workspace's (or /etc's) bind: it may write a pinned one, or read a masked one. A mount
namespace offers no way to hold on to a name rather than an entry, so this cannot be
prevented from inside; what the host can do is notice. Each guarded path's identity
(device, inode) is taken before the run and compared after it: a path replaced meanwhile
becomes a warning of the run's result, naming it and what the command could have done.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

Identity = tuple[int, int] | None  # (st_dev, st_ino), None: missing


def _identity(path: str) -> Identity:
    try:
        found = os.lstat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def identities(guards: Iterable[tuple[str, str]]) -> dict[str, Identity]:
    """The identity of each guarded path now (just before the sandbox is set up)."""
    return {path: _identity(path) for path, _ in guards}


def guards_lost(
    before: Mapping[str, Identity], guards: Iterable[tuple[str, str]]
) -> tuple[str, ...]:
    """Warnings for the guarded paths replaced (or removed) since `before` was taken."""
    warnings: list[str] = []
    for path, kind in guards:
        if path not in before or _identity(path) == before[path]:
            continue
        could = "written" if kind == "write" else "read"
        guard = "read-only pin" if kind == "write" else "mask"
        warnings.append(
            f"{path} was replaced on the host during the run: its {guard} came off with the old "
            f"file, so from then on the command could have {could} the new one; check it"
        )
    return tuple(warnings)
