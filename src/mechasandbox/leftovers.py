"""Temporary files and directories named after the process that owns them, so that what a
process that died (SIGKILL, a crash) left behind can be told apart and removed by the next
one: one listing of the directory, and only the entries whose owner is gone.

Every temporary directory or file this package makes in a shared place is named with
`temp_prefix` (`mechasandbox-KIND-PID-START-XXXXXXXX`; the network sessions'
`msb-net-PID-START-XXXXXXXX`, kept short for their unix sockets). START is the owner's
start time (field 22 of /proc/PID/stat, in clock ticks since boot): with the pid it names a
process even after the pid is reused. `sweep_temp_dir` removes, in one listing of the
directory, every such entry of this user whose owner is no longer that process. Where
there is no /proc (macOS), START is 0 and the owner counts as alive while its pid is.

The other things a dead process leaves are swept by their own owners, each in one listing:
placeholders and their journals (`backends.workspace.placeholders`), pooled cgroups
(`limits.cgroup`). The composition root runs all of these when it builds its first backend
(`backends.factories.sweep_leftovers`): see docs/failure-semantics.md.

A limit: processes in another pid namespace that share the temp dir (a container with the
host's /tmp mounted) cannot be told alive from here; give them a temp dir of their own.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from mechasandbox.runner.proctree import pid_exists

_OWNED = re.compile(r"(?:mechasandbox-[a-z]+|msb-net)-(\d+)-(\d+)-[A-Za-z0-9_]+")
_FAMILIES = ("mechasandbox-", "msb-net-")
_stamps: dict[int, str] = {}  # by pid: this process's stamp (a forked child has its own)


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or
    None: no such process, or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19].decode() if len(fields) > 19 else None


def state_directory() -> Path | None:
    """This user's state directory of the package (`$XDG_STATE_HOME/mechasandbox`; None: no
    usable home)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    if not os.path.isabs(base):
        return None
    return Path(base, "mechasandbox")


def holds_any(directory: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether `directory` holds an entry named with one of `suffixes` (one listing)."""
    try:
        return any(name.endswith(suffixes) for name in os.listdir(directory))
    except OSError:
        return False


def owner_stamp() -> str:
    """`PID-START` of this process (START 0 where it cannot be read)."""
    pid = os.getpid()
    stamp = _stamps.get(pid)
    if stamp is None:
        stamp = f"{pid}-{start_time(pid) or 0}"
        _stamps.clear()
        _stamps[pid] = stamp
    return stamp


def temp_prefix(kind: str) -> str:
    """The `prefix` of a `mkdtemp`/`mkstemp` of this process for `kind` (lowercase letters):
    what `sweep_temp_dir` recognises."""
    if kind == "net":
        return f"msb-net-{owner_stamp()}-"
    return f"mechasandbox-{kind}-{owner_stamp()}-"


def owner_alive(pid: int, start: str) -> bool:
    """Whether the process that stamped `PID-START` still runs."""
    if start == "0":
        return pid_exists(pid)
    return start_time(pid) == start


def sweep_temp_dir(directory: str | None = None) -> None:
    """Remove what dead processes of this user left in `directory` (None: the host's temp
    dir): one listing; entries of live processes, of other users, or not named by
    `temp_prefix` stay."""
    parent = directory or tempfile.gettempdir()
    uid = os.getuid()
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            name = entry.name
            if not name.startswith(_FAMILIES):
                continue
            owned = _OWNED.fullmatch(name)
            if owned is None or owner_alive(int(owned.group(1)), owned.group(2)):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if info.st_uid != uid:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    _remove_tree(entry.path)
                else:
                    os.unlink(entry.path)


def _remove_tree(path: str) -> None:
    """`rmtree`, making a directory writable where its mode refuses the removal of an
    entry (the read-only empty directory of the container backends, a command's own)."""

    def retry(function: Any, failed: str, _error: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            function(failed)

    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)
