"""Refusals that explain themselves: after a run, the filesystem refusals the command
reported, each named with the rule of the policy that made it (`Violation(kind="filesystem")`).

Where these come from, and why not from the kernel: a write the sandbox refuses leaves no
trace the host can read. bubblewrap's read-only binds refuse with EROFS inside the mount
namespace (no inotify or fanotify event: the write never reaches the file), and Landlock
reports its denials only to the kernel's audit log (ABI 7), which is off unless auditd or
`audit=1` turned it on, and readable only with CAP_AUDIT_READ. Tracing every file system
call (ptrace, seccomp user notification) would cost every run for the few that fail. So
the refusals are read from what the command itself printed: each line of its stderr that
carries a refusal's text (`Read-only file system`, `Permission denied`, ...) and names a
path is matched against the policy, and only a path a rule explains is reported. What this
cannot see: a refusal the command did not print, or printed without the path (those stay
unexplained, as before), and a command can print such a line without having tried (a
violation is the command's report, explained, not proof of an attempt).

The rules, most specific first: a protected path (and, for a missing one, that it may not
be created), `deny_write`, `deny_read`, a directory that takes no new entries (Landlock's
carved directories: the workspace's top level when it holds protected paths), and a path
outside what the sandbox may write or see. A path the command found missing (`No such file
or directory`) is a refusal only when the host has it and a rule hides it: a secret under
bubblewrap's empty home is absent inside, not refused. `/proc`, `/sys` and `/dev` are left
out: their refusals are the kernel interfaces' covers, documented per backend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import attrs

from mechasandbox.backends.base import HostContext
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.result import RunResult, Violation

# At most this many filesystem violations per run, and stderr lines looked at.
MAX_VIOLATIONS = 20
MAX_LINES = 2000

# The C library's texts for the errors a refusal gives (any case: Node and Rust print them
# in lower case), by what they tell.
_REFUSED = re.compile(
    r"read-only file system|permission denied|operation not permitted|is a directory"
    r"|device or resource busy|invalid cross-device link|\be(?:rofs|acces|perm)\b"
    r"|no such file or directory|\benoent\b",
    re.IGNORECASE,
)
_REFUSED_BYTES = re.compile(_REFUSED.pattern.encode(), re.IGNORECASE)
_IS_A_DIRECTORY = re.compile(r"is a directory", re.IGNORECASE)
# A path the sandbox hides may look missing (bubblewrap's tmpfs home): a refusal only when
# the host has it (see `_hidden`).
_MISSING = re.compile(r"no such file or directory|\benoent\b", re.IGNORECASE)
# 'path', "path", the typographic quotes of coreutils in a UTF-8 locale, `path'.
_QUOTED = re.compile("'([^'\n]+)'|\"([^\"\n]+)\"|\u2018([^\u2019\n]+)\u2019|`([^'`\n]+)'")
_QUOTES = "'\"`\u2018\u2019"
_KERNEL_TREES = ("/proc", "/sys", "/dev")


@attrs.frozen(kw_only=True)
class RefusalView:
    """What a backend's sandbox let the command change and see, for naming the rule that
    refused a path. Paths are absolute and normalised; each rule keeps the entry as the
    policy wrote it. `closed`: directories that take no new entry, rename or removal
    (Landlock's carved ones); `scratch`: where writes go to a private, throwaway place
    (bubblewrap's tmpfs home and tmp dirs, landlock's private TMPDIR); `cover`: what a
    missing protected path looks like inside (None: it is simply absent)."""

    backend: str
    workspace: str
    protected: tuple[tuple[str, str], ...]
    deny_read: tuple[tuple[str, str], ...]
    deny_write: tuple[tuple[str, str], ...]
    readable: tuple[str, ...]
    writable: tuple[str, ...]
    scratch: tuple[str, ...] = ()
    closed: tuple[str, ...] = ()
    cover: str | None = None


def refusal_view(
    backend: str,
    policy: Policy,
    host: HostContext,
    workspace: str,
    *,
    system: tuple[str, ...],
    scratch: tuple[str, ...] = (),
    closed: tuple[str, ...] = (),
    cover: str | None = None,
) -> RefusalView:
    """The view of a run under `policy` in `workspace`; `system`: the trees it reads."""
    fs = policy.filesystem

    def absolute(entries: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        return tuple((_normal(os.path.join(workspace, host.expand(e))), e) for e in entries)

    writable = (workspace, *(path for path, _ in absolute(fs.writable)))
    return RefusalView(
        backend=backend,
        workspace=workspace,
        protected=tuple(
            (path, entry) for path, entry in absolute(fs.protected) if _inside(path, workspace)
        ),
        deny_read=absolute(fs.deny_read),
        deny_write=absolute(fs.deny_write),
        readable=(*system, *writable, *(path for path, _ in absolute(fs.readable))),
        writable=writable,
        scratch=scratch,
        closed=closed,
        cover=cover,
    )


def may_report_refusals(stderr: bytes) -> bool:
    """Whether `stderr` holds a refusal's text at all (searched in bytes, undecoded)."""
    return _REFUSED_BYTES.search(stderr) is not None


def filesystem_violations(result: RunResult, view: RefusalView) -> tuple[Violation, ...]:
    """The refusals `result`'s stderr reports on paths a rule of `view` explains."""
    found: dict[str, Violation] = {}
    for line, refusal in _refusal_lines(result.stderr):
        for path in _paths(line, refusal):
            if path in found:
                continue
            rule = _rule(
                path,
                view,
                is_a_directory=bool(_IS_A_DIRECTORY.search(refusal)),
                missing=bool(_MISSING.search(refusal)),
            )
            if rule is None:
                continue
            found[path] = Violation(
                kind="filesystem",
                detail=f"{_shown(path, view.workspace)}: {rule} (the command reported: "
                f"{_clipped(line)})",
            )
            if len(found) >= MAX_VIOLATIONS:
                return tuple(found.values())
    return tuple(found.values())


def _refusal_lines(stderr: bytes) -> Iterator[tuple[str, str]]:
    """Each stderr line with a refusal's text, and that text."""
    seen = 0
    for raw in stderr.splitlines():
        line = raw.decode(errors="replace").strip()
        match = _REFUSED.search(line)
        if match is None:
            continue
        yield line, match.group(0)
        seen += 1
        if seen >= MAX_LINES:
            return


def _paths(line: str, refusal: str) -> Iterator[str]:
    """The paths `line` names: quoted ones anywhere, and the last word before the
    refusal's text in `WHO: CONTEXT PATH: ERROR` (sh, bash, git), made absolute against
    the workspace later. Words that cannot be paths (none, or with a space) are skipped."""
    for match in _QUOTED.finditer(line):
        yield next(group for group in match.groups() if group is not None)
    before = line[: line.find(refusal)].rstrip()
    if before.endswith(":"):
        words = before[:-1].rsplit(": ", 1)[-1].split()
        if words:
            yield words[-1].strip(_QUOTES)


def _rule(
    path: str, view: RefusalView, *, is_a_directory: bool, missing: bool = False
) -> str | None:
    """Why `view`'s sandbox refused `path`, as a rule of the policy; None: no rule does."""
    absolute = _normal(os.path.join(view.workspace, path))
    if any(_inside(absolute, tree) for tree in _KERNEL_TREES):
        return None
    if missing:
        return _hidden(absolute, view)
    for protected, entry in view.protected:
        if not _inside(absolute, protected):
            continue
        if is_a_directory and os.path.isdir(absolute):
            return None  # `cat .vscode`: a directory of the host, not a cover
        return _protected(absolute, protected, entry, view)
    if is_a_directory:
        return None  # a directory's own answer, not a refusal
    return _denied(absolute, view) or _unreachable(absolute, view)


def _denied(absolute: str, view: RefusalView) -> str | None:
    """The deny lists, a pinned directory on the way to protected paths, a closed one."""
    for denied, entry in view.deny_write:
        if _inside(absolute, denied):
            return f"not writable: filesystem.deny_write {entry!r}"
    for denied, entry in view.deny_read:
        if _inside(absolute, denied):
            return f"hidden: filesystem.deny_read {entry!r}"
    held = [entry for protected, entry in view.protected if _inside(protected, absolute)]
    if held and absolute != view.workspace:
        more = ", ..." if len(held) > 3 else ""
        names = ", ".join(held[:3]) + more
        return f"holds protected paths ({names}): it cannot be renamed or removed"
    if os.path.dirname(absolute) in view.closed:
        return _closed(absolute, view)
    return None


_READ_ONLY = (
    "read-only in the sandbox: only the workspace and filesystem.writable are "
    "writable (--allow-write PATH)"
)
_OUTSIDE = (
    "outside what the sandbox shows: only the system trees, the workspace and "
    "filesystem.readable/writable are (--allow-read PATH)"
)


def _unreachable(absolute: str, view: RefusalView) -> str | None:
    """A path outside what the sandbox lets the command write, or see. Between a scratch
    place and a readable tree, the innermost holding the path says: a toolchain made
    readable inside bubblewrap's tmpfs home is bound read-only over it."""
    if any(_inside(absolute, place) for place in view.writable):
        return None
    holding: list[tuple[int, str | None]] = [
        (len(place), None) for place in view.scratch if _inside(absolute, place)
    ]
    holding += [(len(tree), _READ_ONLY) for tree in view.readable if _inside(absolute, tree)]
    if holding:
        return max(holding, key=lambda held: held[0])[1]
    return _OUTSIDE


def _hidden(absolute: str, view: RefusalView) -> str | None:
    """A path the command was told does not exist although the host has it: hidden by a
    deny rule, or outside what the sandbox shows (a scratch place is a private, empty one:
    bubblewrap's tmpfs home). A path missing on the host too is simply missing."""
    if not os.path.lexists(absolute):
        return None
    for denied, entry in view.deny_read:
        if _inside(absolute, denied):
            return f"hidden: filesystem.deny_read {entry!r}"
    if any(_inside(absolute, place) for place in (*view.writable, *view.readable)):
        return None
    return _OUTSIDE


def _protected(absolute: str, protected: str, entry: str, view: RefusalView) -> str:
    rule = (
        f"protected (filesystem.protected {entry!r}): read-only, so that nothing planted "
        "there runs later on the host"
    )
    if os.path.lexists(absolute) or os.path.lexists(protected):
        return rule
    missing = "it does not exist and may not be created"
    if view.cover is not None:
        missing += f"; inside the sandbox it is {view.cover}"
    return f"{rule}; {missing}"


def _closed(absolute: str, view: RefusalView) -> str:
    parent = os.path.dirname(absolute)
    top = parent == view.workspace
    where = "the workspace's top level" if top else _shown(parent, view.workspace) + "/"
    instead = (
        "existing files there can be rewritten in place; create new ones in a subdirectory"
        if top
        else "so commands that add entries there fail (in .git/: git add, commit, checkout)"
    )
    return (
        f"{where} takes no new entry, rename or removal on {view.backend}: it holds "
        "protected paths, and a right granted on a directory holds for everything below "
        f"it; {instead}, or use the bubblewrap backend"
    )


def _shown(path: str, workspace: str) -> str:
    absolute = _normal(os.path.join(workspace, path))
    if _inside(absolute, workspace) and absolute != workspace:
        return os.path.relpath(absolute, workspace)
    return absolute


def _clipped(line: str, limit: int = 200) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _normal(path: str) -> str:
    return os.path.normpath(path)
