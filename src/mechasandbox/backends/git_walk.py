"""The bounded walk of a workspace for nested repositories, remembered between runs.

Listing every directory of a large workspace before each run costs (a tree of 50,000 files
in 2,550 directories: about 100 ms). A directory's entries change only with its ctime, so
each walk keeps what it listed with the directory's identity and ctime (which, unlike the
mtime, a command cannot set back), and the next walk lists again only the directories
whose stamp changed: one `lstat` each (about 4 ms for that tree). A stamp too young to be
trusted (`stamps.settled`) leaves that directory to be listed again next time.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Collection

import attrs

from mechasandbox.backends.stamps import Stamp, directory_stamp, settled

# The walk stops after this many directories (a warning says so): every run pays for it.
MAX_WALK_DIRECTORIES = 10_000
_WORKSPACES = 8  # how many workspaces' listings are kept


@attrs.frozen(kw_only=True)
class NestedWalk:
    """What the walk found: the tops of nested working trees (a `.git` there) and bare
    repositories, and whether it stopped early."""

    worktrees: tuple[str, ...] = ()
    bare: tuple[str, ...] = ()
    truncated: bool = False
    # Directories the walk could not list (a mode without read permission): what is below
    # them was not seen, though git reaches it by name.
    unreadable: tuple[str, ...] = ()


@attrs.frozen
class _Listing:
    stamp: Stamp | None  # None: too recent to be trusted next time
    subdirectories: tuple[str, ...]  # their paths (joined once, at the listing)
    names: frozenset[str]
    readable: bool = True


def is_bare_repository(path: str, names: frozenset[str] | set[str]) -> bool:
    return {"HEAD", "objects", "refs"} <= names and os.path.isfile(os.path.join(path, "HEAD"))


def _stamp(path: str) -> Stamp | None:
    """Not through a symlink: the walk does not follow them."""
    try:
        return directory_stamp(path, follow=False)
    except OSError:
        return None


def _list(path: str, stamp: Stamp) -> _Listing:
    subdirectories: list[str] = []
    names: set[str] = set()
    readable = True
    try:
        with os.scandir(path) as scan:
            for entry in scan:
                names.add(entry.name)
                try:
                    if entry.name != ".git" and entry.is_dir(follow_symlinks=False):
                        subdirectories.append(entry.path)
                except OSError:
                    continue
    except OSError:
        readable = False
    return _Listing(
        stamp=stamp if settled(stamp[2]) else None,
        subdirectories=tuple(subdirectories),
        names=frozenset(names),
        readable=readable,
    )


class NestedWalker:
    """Walks workspaces breadth first, not into `.git` directories nor symlinks (into bare
    repositories too: a repository can hide below a directory that looks like one),
    reusing the listings of unchanged directories (see the module): those of the last
    `_WORKSPACES` workspaces walked. Holds nothing outside the process: `close` forgets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listings: collections.OrderedDict[str, dict[str, _Listing]] = (
            collections.OrderedDict()
        )

    def walk(
        self,
        workspace: str,
        *,
        max_directories: int = MAX_WALK_DIRECTORIES,
        skip: Collection[str] = (),
    ) -> NestedWalk:
        """`skip`: directories not to walk into (a session's placeholders: empty, and
        covered read-only in its sandbox for as long as their guards hold)."""
        with self._lock:
            known = self._listings.pop(workspace, {})
        listings: dict[str, _Listing] = {}
        worktrees: list[str] = []
        bare: list[str] = []
        queue = collections.deque([workspace])
        truncated = False
        unreadable: list[str] = []
        while queue:
            if len(listings) >= max_directories:
                truncated = True
                break
            directory = queue.popleft()
            stamp = _stamp(directory)
            if stamp is None:
                continue
            listing = known.get(directory)
            if listing is None or listing.stamp != stamp:
                listing = _list(directory, stamp)
            listings[directory] = listing
            if not listing.readable:
                unreadable.append(directory)
            if directory != workspace:
                if ".git" in listing.names:
                    worktrees.append(directory)
                elif is_bare_repository(directory, listing.names):
                    bare.append(directory)
            if skip:
                queue.extend(path for path in listing.subdirectories if path not in skip)
            else:
                queue.extend(listing.subdirectories)
        with self._lock:
            self._listings[workspace] = listings
            while len(self._listings) > _WORKSPACES:
                self._listings.popitem(last=False)
        return NestedWalk(
            worktrees=tuple(worktrees),
            bare=tuple(bare),
            truncated=truncated,
            unreadable=tuple(unreadable),
        )

    def close(self) -> None:
        with self._lock:
            self._listings.clear()
