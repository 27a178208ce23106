"""Finding the command as the sandbox sees it: on the PATH entries it can read, with advice
naming the option that would make a hidden one visible.

A backend that hides part of the host (bubblewrap, landlock, seatbelt) describes what its
command can read as a `View`; the command is looked up only in the PATH entries the view
shows, those entries alone are handed on as the command's PATH, and a command found only in
hidden ones fails with where it is on the host and what to allow (`--allow-read ~/.pyenv`).
Answered before anything is spawned (127/126), so that "not found" is never confused with
a command that itself exits 127.
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.toolchains import command_root, known_root_of
from mechasandbox.domain.errors import SpawnFailed

# Whether the sandbox reads the host's `path` (a real path) at that same path.
Visible = Callable[[str], bool]


def _inside(path: str, root: str) -> bool:
    return root in ("/", path) or path.startswith(root.rstrip("/") + "/")


@functools.lru_cache(maxsize=64)
def _real_paths(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The real paths of `paths` (`/bin` is `/usr/bin` on a merged-usr host), one for
    each. Remembered: a backend asks about the same roots and PATH run after run, and a
    stale answer only ever changes where a command is looked up, never what the sandbox
    lets it read."""
    return tuple(os.path.realpath(path) for path in paths)


@functools.lru_cache(maxsize=64)
def _prefixes(paths: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    """The real paths of `paths` as the paths they are and the prefixes of what is inside
    them: whether a path is in one of them is then one set lookup and one `startswith`
    (`/` holds all). Remembered, as `_real_paths` is."""
    roots = _real_paths(paths)
    return frozenset(roots), tuple("/" if root == "/" else root.rstrip("/") + "/" for root in roots)


def tree_view(readable: Iterable[str], denied: Iterable[str] = ()) -> Visible:
    """The view of a sandbox that reads the trees `readable` but nothing in `denied`
    (absolute paths; symlinks among them resolved)."""
    roots, inside = _prefixes(tuple(readable))
    hidden, inside_hidden = _prefixes(tuple(denied))

    def visible(path: str) -> bool:
        shown = path in roots or path.startswith(inside)
        return shown and path not in hidden and not path.startswith(inside_hidden)

    return visible


def everything(_path: str) -> bool:
    """The view of a backend that hides nothing of the host."""
    return True


@attrs.frozen(kw_only=True)
class View:
    """What a run's command can read, and the host facts advice is phrased in."""

    visible: Visible = everything
    host: HostContext | None = None
    deny_read: tuple[str, ...] = ()  # the policy's, as written

    def shows(self, path: str) -> bool:
        return self.visible(os.path.realpath(path))

    def advice(self, path: str) -> str:
        """What would make the host's `path` visible: the option, and the setting."""
        home = self.host.home if self.host is not None else ""
        real = os.path.realpath(path)
        for entry in self.deny_read:
            denied = self.host.expand(entry) if self.host is not None else entry
            if _inside(real, posixpath.normpath(denied)) or _inside(path, denied):
                return f"it is under {entry}, which filesystem.deny_read hides"
        known = known_root_of(path, self.host) if self.host is not None else None
        if known is not None:
            return (
                f"make it readable: --allow-read {known} (filesystem.readable), or "
                'filesystem.toolchains = "auto"'
            )
        root = (command_root(path, home) if home else None) or posixpath.dirname(path)
        if home and _inside(root, home) and root != home:
            root = "~" + root[len(home.rstrip("/")) :]
        return f"make it readable: --allow-read {root} (filesystem.readable)"


EVERYTHING = View()


def sandbox_path(value: str, view: View) -> str:
    """`value` (a PATH) without the entries the sandbox cannot see. Relative entries are
    the working directory's, the workspace: kept."""
    if view.visible is everything:
        return value
    entries = tuple(value.split(os.pathsep))
    kept = [
        entry
        for entry, real in zip(entries, _real_paths(entries), strict=True)
        if not os.path.isabs(entry) or view.visible(real)
    ]
    return value if len(kept) == len(entries) else os.pathsep.join(kept)


def with_sandbox_path(env: Mapping[str, str], view: View) -> dict[str, str]:
    """`env` with its PATH as the sandbox sees it (see `sandbox_path`)."""
    shown = dict(env)
    if "PATH" in shown:
        shown["PATH"] = sandbox_path(shown["PATH"], view)
    return shown


def _hidden(argv0: str, path: str, view: View) -> SpawnFailed:
    reason = f"{path} is not visible inside the sandbox; {view.advice(path)}"
    return SpawnFailed(command=argv0, reason=reason, exit_status=127)


def executables(argv0: str, search: str, cwd: str) -> Iterator[str]:
    """Where `search` (a PATH) has the executable `argv0`, first first: as execvp looks (an
    empty entry is the working directory), as `shutil.which` would for each directory but
    without its per-call overhead (every run asks this)."""
    for entry in search.split(os.pathsep):
        found = os.path.join(entry if os.path.isabs(entry) else os.path.join(cwd, entry), argv0)
        if os.path.isfile(found) and os.access(found, os.X_OK):
            yield found


def resolve_command(
    argv0: str, env: Mapping[str, str], cwd: str, view: View = EVERYTHING
) -> Result[str, SpawnFailed]:
    """Find the executable as the sandboxed command would: its PATH, its cwd, and only
    what `view` shows (`env`'s PATH is searched whole, so that a command found only where
    the sandbox cannot see is told apart from one that is nowhere)."""
    if os.sep in argv0:
        path = argv0 if os.path.isabs(argv0) else os.path.join(cwd, argv0)
        if not os.path.exists(path):
            return Failure(SpawnFailed(command=argv0, reason="command not found", exit_status=127))
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return Failure(SpawnFailed(command=argv0, reason="not executable", exit_status=126))
        if not view.shows(path):
            return Failure(_hidden(argv0, path, view))
        return Success(path)
    first_hidden: str | None = None
    for found in executables(argv0, env.get("PATH", ""), cwd):
        if view.shows(found):
            return Success(found)
        first_hidden = first_hidden or found
    if first_hidden is not None:
        return Failure(_hidden(argv0, first_hidden, view))
    return Failure(SpawnFailed(command=argv0, reason="command not found on PATH", exit_status=127))
