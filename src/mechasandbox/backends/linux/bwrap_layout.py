"""What bubblewrap's compiler knows of the host: what is at the paths it asks about
(`HostLayout`, surveyed just before each run, so that the compiler stays pure; golden tests
write one by hand), and the bwrap executable's features (`BwrapFeatures`, see `bwrap_probe`)."""

from __future__ import annotations

import enum
import glob
import os
import posixpath
import stat
from collections.abc import Iterable, Mapping

import attrs

from mechasandbox.backends.linux.roots import ETC_SECRETS
from mechasandbox.backends.workspace.placeholder_stash import is_empty_directory

DISABLE_USERNS_VERSION = (0, 8, 0)


class PathKind(enum.Enum):
    DIRECTORY = "dir"
    FILE = "file"  # regular files and anything else that is not a directory (fifo, device)
    SYMLINK = "symlink"
    MISSING = "missing"


@attrs.frozen(kw_only=True)
class PathFact:
    """What is at one path (not following a final symlink), and where a symlink leads."""

    kind: PathKind
    link: str | None = None  # readlink() text, for symlinks
    real: str | None = None  # realpath, for symlinks
    real_kind: PathKind = PathKind.MISSING  # what the symlink resolves to


@attrs.frozen(kw_only=True)
class HostLayout:
    """The filesystem facts the compiler needs, captured once so the compiler stays pure."""

    facts: tuple[tuple[str, PathFact], ...]
    etc_secrets: tuple[str, ...] = ()  # existing paths matching ETC_SECRETS
    # Empty directories on the way to protected paths (see `bwrap_mounts._protect`).
    hollow_directories: frozenset[str] = frozenset()
    _index: Mapping[str, PathFact] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_index", dict(self.facts))

    def fact(self, path: str) -> PathFact:
        """The fact for `path`; a KeyError means the survey missed a path (a bug)."""
        return self._index[path]

    @staticmethod
    def survey(
        paths: Iterable[str],
        etc_patterns: Iterable[str] = ETC_SECRETS,
        *,
        placeholders: Iterable[str] = (),
        hollowness_of: Iterable[str] = (),
    ) -> HostLayout:
        """`placeholders`: empty directories other runs of ours created as mount points;
        they and anything below them count as missing, so this run covers them too.
        `hollowness_of`: directories the compiler needs to know to be `_hollow`."""
        covered = tuple(placeholders)

        def fact_of(path: str) -> PathFact:
            if any(path == p or path.startswith(p + "/") for p in covered):
                return _PLAIN_FACTS[PathKind.MISSING]
            return _lstat_fact(path)

        facts = {path: fact_of(path) for path in sorted(set(paths))}
        secrets: list[str] = []
        for pattern in etc_patterns:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            for path in matches:
                fact = _lstat_fact(path)
                if fact.kind in (PathKind.DIRECTORY, PathKind.FILE):
                    secrets.append(path)
                    facts[path] = fact
        hollow = frozenset(
            path
            for path in hollowness_of
            if facts.get(path) is _PLAIN_FACTS[PathKind.DIRECTORY] and _hollow(path)
        )
        return HostLayout(
            facts=tuple(sorted(facts.items())),
            etc_secrets=tuple(secrets),
            hollow_directories=hollow,
        )


def _hollow(path: str) -> bool:
    """Holds nothing to keep writable: empty, or a `.git` without `HEAD`, which is no
    repository (what a crashed run's placeholders, or an empty subdirectory, leave)."""
    if is_empty_directory(path):
        return True
    return posixpath.basename(path) == ".git" and not os.path.lexists(path + "/HEAD")


# One fact per kind that has nothing else to say (a survey makes about 50 of them per run;
# PathFact is frozen, so sharing them is safe).
_PLAIN_FACTS = {kind: PathFact(kind=kind) for kind in PathKind}


def _kind(mode: int) -> PathKind:
    if stat.S_ISDIR(mode):
        return PathKind.DIRECTORY
    if stat.S_ISLNK(mode):
        return PathKind.SYMLINK
    return PathKind.FILE


def _lstat_fact(path: str) -> PathFact:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return _PLAIN_FACTS[PathKind.MISSING]
    kind = _kind(mode)
    if kind is not PathKind.SYMLINK:
        return _PLAIN_FACTS[kind]
    try:
        link = os.readlink(path)
        real = os.path.realpath(path)
    except OSError:  # a link we may not follow (`/proc/1/root` of another user): not mounted
        return _PLAIN_FACTS[PathKind.MISSING]
    try:
        real_kind = _kind(os.stat(real).st_mode)
    except OSError:
        real_kind = PathKind.MISSING
    return PathFact(kind=kind, link=link, real=real, real_kind=real_kind)


@attrs.frozen(kw_only=True)
class BwrapFeatures:
    """The bwrap executable and what its version supports, and the kernel's Landlock ABI
    (0: none), with which bwrap's own hooks scope abstract unix sockets: found by the same
    probe, so that a run does not load the Landlock backend to ask."""

    path: str = "bwrap"
    version: tuple[int, ...] = DISABLE_USERNS_VERSION
    landlock_abi: int = 0

    @property
    def disable_userns(self) -> bool:
        return self.version >= DISABLE_USERNS_VERSION


# The features a compile assumes unless told (a recent bwrap on PATH).
DEFAULT_FEATURES = BwrapFeatures()
