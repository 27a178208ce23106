"""The empty directories made in a workspace as mount points for missing protected paths
(`.git`, `.envrc`... covered read-only for the run), and their removal. Paths git reads
as files get a file instead (`FILE_PLACEHOLDERS`, and those a run names: `FileContents`; a
directory there would break git, in the sandbox and on the host, while the run goes),
holding what git makes of the path being absent; it is removed only if it still holds
exactly that.

They stay while any run of this process still uses their workspace: removing one while
another run's bwrap is setting up (or running) over the same workspace would break that run
("Can't get type of source"), so removal waits for the last run in the workspace to end;
meanwhile new runs treat them as missing paths and cover them read-only too. Runs of other
processes of the same user wait for each other through `workspace_locks`: a placeholder is a
mount point in every sandbox that covered it, and removing it would detach those covers.

A host that dies during a run (SIGKILL, a crash) cannot remove them, and an empty `.env/`
or `.mechasandbox.toml/` directory left in a workspace breaks the tools that expect a file
there. So each process journals the paths it may leave behind in a file of its own under
the user's state directory (one per `WorkspacePlaceholders`), and removes the journal at
`close` (or at exit, for an owner that never closed it); the next process that makes
placeholders first removes what the journals of dead processes list (empty directories and
untouched file placeholders only: anything else stays; in a workspace where other processes
still run, they are left pending for the last of them, see `workspace_locks`).

Removal itself mostly happens off the run's path: see `placeholder_stash`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import secrets
import stat
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from mechasandbox.backends.workspace.placeholder_stash import (
    PlaceholderStash,
    is_empty_directory,
    remove_stash,
)
from mechasandbox.backends.workspace.workspace_locks import WorkspaceLocks
from mechasandbox.leftovers import start_time, state_directory

# Missing protected paths whose placeholder is a file, not a directory: git reads them as
# files, and a directory there (or an empty file) would break git in the sandbox and on the
# host while the run goes. Each holds what git makes of the path being absent.
FILE_PLACEHOLDERS = {
    ".git/commondir": b".\n",  # the repository's own directory: no redirection
    ".git/config.worktree": b"",  # an empty configuration
}


# Other paths whose placeholder is a file, as (absolute path, content): the configuration
# files a repository's settings include (see `git_indirections`), found for each run and
# carried with it to what makes and removes its placeholders.
FileContents = tuple[tuple[str, bytes], ...]
NO_FILES: Mapping[str, bytes] = MappingProxyType({})
_KNOWN_MAX = 4096


class KnownFiles(Mapping[str, bytes]):
    """The file placeholders (`FileContents`) of the runs a state object made placeholders
    for, by path: what their removal, after the run, compares with. Bounded: one forgotten
    while its placeholder stands is taken for a directory placeholder, and so left as it
    is (a file)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, bytes] = {}

    def add(self, files: FileContents) -> None:
        with self._lock:
            for path, content in files:
                self._files.pop(path, None)
                self._files[path] = content
            while len(self._files) > _KNOWN_MAX:
                del self._files[next(iter(self._files))]

    def __getitem__(self, path: str) -> bytes:
        return self._files[path]

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(tuple(self._files))

    def __len__(self) -> int:
        return len(self._files)


def file_placeholder(path: str, files: Mapping[str, bytes] = NO_FILES) -> bytes | None:
    """The content of the file placeholder at `path`, or None: a directory placeholder.
    `files`: the run's others, by path (see `FileContents`)."""
    registered = files.get(path)
    if registered is not None:
        return registered
    for tail, content in FILE_PLACEHOLDERS.items():
        if path.endswith("/" + tail):
            return content
    return None


def is_placeholder(path: str, files: Mapping[str, bytes] = NO_FILES) -> bool:
    """Whether `path` is, right now, what a placeholder of ours there would be: an empty
    directory, or a file placeholder holding exactly its content (not a symlink)."""
    content = file_placeholder(path, files)
    if content is None:
        return not os.path.islink(path) and is_empty_directory(path)
    try:
        return _holds(path, content)
    except OSError:
        return False


def _holds(path: str, content: bytes) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.read(fd, len(content) + 1) == content
    finally:
        os.close(fd)


def _make_file(path: str, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        written = os.write(fd, content)
    except OSError:
        written = -1
    finally:
        os.close(fd)
    if written != len(content):
        # Never leave it half made: an empty `.git/commondir` breaks git, and only a file
        # holding exactly its content is removed after the run.
        os.unlink(path)
        raise OSError(errno.EIO, f"could not write the placeholder {path}")


def path_depth(path: str) -> int:
    """How many components below / (`/` itself: 0)."""
    return path.rstrip("/").count("/")


def make_placeholders(paths: Iterable[str], files: Mapping[str, bytes] = NO_FILES) -> None:
    """Make the placeholders before bwrap would (shallowest first): then the host knows
    which directory entries the sandbox's covers stand on, and watches them as it watches
    its other guards (see `guards`). One that exists already (another run's) is used as
    it is; one that cannot be made is left to bwrap, which fails the run if it cannot."""
    for path in sorted(paths, key=path_depth):
        content = file_placeholder(path, files)
        with contextlib.suppress(OSError):
            if content is None:
                os.mkdir(path, 0o700)
            else:
                _make_file(path, content)


def remove_placeholders(paths: Iterable[str], files: Mapping[str, bytes] = NO_FILES) -> None:
    """Remove empty directories and file placeholders that hold just their content,
    deepest first; anything else (someone on the host put content there meanwhile, or
    something else is there) stays."""
    for path in sorted(paths, key=path_depth, reverse=True):
        content = file_placeholder(path, files)
        with contextlib.suppress(OSError):
            if content is None:
                os.rmdir(path)
            elif _holds(path, content):
                os.unlink(path)


def placeholder_state_directory() -> Path | None:
    """Where journals, stashes and workspace locks live (None: no usable home)."""
    base = state_directory()
    return base / "placeholders" if base is not None else None


def _journal_name(name: str) -> tuple[int, str, str] | None:
    """(pid, start time, ".paths" or ".stash") of a journal's or stash's file name,
    `PID-START[-TOKEN].paths` (the token tells several journals of one process apart)."""
    pid, _, rest = name.partition("-")
    stem, kind = os.path.splitext(rest)
    if not pid.isdigit() or kind not in (".paths", ".stash"):
        return None
    return int(pid), stem.partition("-")[0], kind


def _remove_journal(path: Path, owner: int) -> None:
    """Remove the journal at `path` (only in the process `owner` that wrote it)."""
    if os.getpid() == owner:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _journal_entry(line: str) -> tuple[str | None, str, bytes | None]:
    """(workspace, placeholder, its content if a run named it a file placeholder) of a
    journal line: a JSON list, or (from an earlier version) a bare path."""
    if line.startswith("["):
        with contextlib.suppress(ValueError, TypeError):
            workspace, path, *content = json.loads(line)
            file = str(content[0]).encode("latin-1") if content else None
            return str(workspace), str(path), file
    return None, line, None


def _journal_line(workspace: str, path: str, files: Mapping[str, bytes]) -> str:
    content = files.get(path)
    entry = [workspace, path] if content is None else [workspace, path, content.decode("latin-1")]
    return json.dumps(entry) + "\n"


class _Journal:
    """This process's list of the placeholders it made (one JSON [workspace, path] per
    line, [workspace, path, content] for a file placeholder a run named: see
    `FileContents`)."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self.written: set[str] = set()
        self.path: Path | None = None
        self.swept = False
        self._stash: PlaceholderStash | None = None
        self._owner = os.getpid()
        # Removes the journal at `close`, or at exit (see `_remove_journal`).
        self._finalizer: weakref.finalize[..., _Journal] | None = None

    def _mine(self) -> None:
        """In a process forked since the journal was opened: start one of its own (writing
        into the parent's, and removing it at exit, would lose what the parent made)."""
        if self._owner != os.getpid():
            self._owner = os.getpid()
            self._forget()

    def _forget(self) -> None:
        """Start afresh: a new journal (and stash) at the next use."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self.written = set()
        self.path = None
        self._stash = None

    @property
    def directory(self) -> Path | None:
        """Given, or the user's state directory (looked up at first use, not at import)."""
        if self._directory is None:
            self._directory = placeholder_state_directory()
        return self._directory

    def _open_path(self) -> Path | None:
        self._mine()
        if self.path is None and self.directory is not None:
            start = start_time(os.getpid())
            if start is None:
                return None
            try:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError:
                return None
            token = secrets.token_hex(4)
            self.path = self.directory / f"{os.getpid()}-{start}-{token}.paths"
            self._finalizer = weakref.finalize(self, _remove_journal, self.path, self._owner)
        return self.path

    def stash(self) -> PlaceholderStash | None:
        """This process's stash, beside its journal (None without a journal)."""
        if self._stash is None:
            path = self._open_path()
            if path is not None:
                self._stash = PlaceholderStash(path.with_suffix(".stash"))
        return self._stash

    def sweep(self, locks: WorkspaceLocks) -> None:
        """Remove what the journals of dead processes list (through `locks`: pending where
        others still run), then the journals."""
        self.swept = True
        if self.directory is None:
            return
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                named = _journal_name(entry.name)
                if named is None:
                    continue
                pid, start, kind = named
                if start_time(pid) == start:
                    continue  # alive: its placeholders may be in use
                if kind == ".stash":
                    remove_stash(Path(entry.path))
                    continue
                with contextlib.suppress(OSError):
                    lines = Path(entry.path).read_text().splitlines()
                    listed = [_journal_entry(line) for line in lines]
                    files = {path: file for _, path, file in listed if file is not None}
                    remove_placeholders(path for ws, path, _ in listed if ws is None)
                    locks.hand_over(
                        ((ws, path) for ws, path, _ in listed if ws is not None),
                        functools.partial(remove_empty, files=files),
                    )
                    os.unlink(entry.path)

    def record(
        self, workspace: str, paths: Iterable[str], files: Mapping[str, bytes] = NO_FILES
    ) -> None:
        self._mine()
        new = [p for p in paths if p not in self.written]
        if not new:
            return
        path = self._open_path()
        if path is None:
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, "".join(_journal_line(workspace, p, files) for p in new).encode())
            finally:
                os.close(fd)
        except OSError:
            return
        self.written.update(new)

    def close(self) -> None:
        """Finish and remove the stash, then remove the journal (nothing of a parent's in a
        forked process); a later use starts a new one."""
        if self._owner != os.getpid():
            return
        if self._stash is not None:
            self._stash.close()
        if self._finalizer is not None:
            self._finalizer()
        self._forget()


class PlaceholderJournal:
    """The journal of placeholders made by code that keeps no `WorkspacePlaceholders` (the
    container backends' mount points, `backends.oci.protection`), so that those of a
    process that dies are swept like the others (see the module's docstring). State of its
    owner: `close` removes it (at exit at the latest)."""

    def __init__(self) -> None:
        self._journal = _Journal(None)
        self._lock = threading.Lock()

    def record(self, workspace: str, paths: Iterable[str]) -> None:
        """Placeholders about to be made in `workspace`."""
        with self._lock:
            self._journal.record(workspace, paths)

    def close(self) -> None:
        with self._lock:
            self._journal.close()


def remove_empty(_workspace: str, paths: list[str], files: Mapping[str, bytes] = NO_FILES) -> None:
    """`remove_placeholders` as a `workspace_locks.Remover` (with `files` bound)."""
    remove_placeholders(paths, files)


class WorkspacePlaceholders:
    """The placeholders of this process's runs, by workspace (see the module's docstring).

    State of the backends that make placeholders: `close` (at shutdown, once the runs have
    ended) releases what it holds outside the process: the stash, the journal, the lock
    files. Each part also goes at exit if nobody closed it."""

    def __init__(self, state_directory: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, int] = {}
        self._created: dict[str, set[str]] = {}
        self._journal = _Journal(state_directory)
        self._locks: WorkspaceLocks | None = None
        self._files = KnownFiles()
        self._owner = os.getpid()

    def _workspace_locks(self) -> WorkspaceLocks:
        """Made at first use, beside the journal (the state directory is looked up then)."""
        if self._locks is None:
            directory = self._journal.directory
            self._locks = WorkspaceLocks(directory / "workspaces" if directory else None)
        return self._locks

    def _mine(self) -> None:
        """In a process forked since: the parent's runs are not ours to end."""
        if self._owner != os.getpid():
            self._owner = os.getpid()
            self._runs = {}
            self._created = {}

    def active(self, workspace: str) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._created.get(workspace, ()))

    def sweep(self) -> None:
        """Remove what the journals of dead processes list, once (see the module's
        docstring); the first run does it if nobody called this before."""
        with self._lock:
            self._mine()
            if not self._journal.swept:
                self._journal.sweep(self._workspace_locks())

    def enter(self, workspace: str) -> bool:
        """A run starts in `workspace`. False: another process has been removing
        placeholders there for too long (see `WorkspaceLocks.enter`); the run must not
        start, and must not `leave`."""
        with self._lock:
            self._mine()
            locks = self._workspace_locks()
            if not self._journal.swept:
                self._journal.sweep(locks)
            if not self._runs.get(workspace) and not locks.enter(workspace):
                return False
            self._runs[workspace] = self._runs.get(workspace, 0) + 1
            return True

    def make(self, workspace: str, placeholders: Iterable[str]) -> None:
        """Make the placeholders of a run in `workspace` (see `make_placeholders`): from the
        stash's pool of empty directories where it has them, by a rename (see
        `placeholder_stash`), the rest by `mkdir`."""
        paths = sorted(placeholders, key=path_depth)
        directories = [path for path in paths if file_placeholder(path, self._files) is None]
        stash = self._journal.stash() if directories else None
        left = stash.place(workspace, directories) if stash else directories
        placed = set(directories) - set(left)
        make_placeholders((path for path in paths if path not in placed), self._files)

    def created(
        self, workspace: str, placeholders: Iterable[str], files: FileContents = ()
    ) -> None:
        """Record placeholders as soon as they are known (before they are made), for runs
        that start meanwhile and for the journal; `files`: the run's file placeholders
        (see `FileContents`), for making and removing them."""
        paths = tuple(placeholders)
        self._files.add(files)
        with self._lock:
            self._created.setdefault(workspace, set()).update(paths)
            self._journal.record(workspace, paths, self._files)

    def leave(self, workspace: str) -> None:
        with self._lock:
            self._runs[workspace] -= 1
            if self._runs[workspace]:
                return
            del self._runs[workspace]
            paths = sorted(self._created.pop(workspace, set()), key=path_depth, reverse=True)
            self._workspace_locks().leave(workspace, paths, self._retire)

    def close(self) -> None:
        """Release the stash, the journal and the lock files (idempotent)."""
        with self._lock:
            self._journal.close()
            if self._locks is not None:
                self._locks.close()

    def _retire(self, workspace: str, paths: list[str]) -> None:
        """Out of the workspace through the stash where it can, else removed in place."""
        stash = self._journal.stash() if paths else None
        remove_placeholders(stash.retire(workspace, paths) if stash else paths, self._files)
