"""The process tree on macOS, where there is no /proc and no child subreaper.

The spawn helper kills a run's tree by walking "children of" from the run's root. Linux
answers that from /proc/PID/task/*/children; here the whole process table is read with
`sysctl(CTL_KERN, KERN_PROC, KERN_PROC_ALL)` (one `struct kinfo_proc` per process; only
pid, parent pid and process group are used), falling back to `ps -Ao pid=,ppid=,pgid=`.

"Children of PID" are the processes whose parent is PID, plus those still in process
group PID. The second half matters after PID has exited: its orphans are re-parented to
launchd, but the ones that stayed in the run's process group (every child that did not
call `setsid`/`setpgid`, since the run's root leads its own session and group) are still
found. POSIX keeps a process group's id from being reused while the group has members.

What still escapes: a process that left the run's process group (`setsid`, `setpgid`,
a shell with job control) *and* whose parent chain to the run was broken (its parent
exited, so launchd adopted it) before the tree was walked. While its ancestry is intact
it is found and killed like any other descendant. A process forked between the walk and
the kill can also escape one pass.

Everything here is standard library, so the helper stays small; the parsers are pure and
tested on any OS from sample data. The helper imports this module on every platform, so
what only macOS needs (`ctypes.util`, `subprocess`) is imported when used, and `typing` not
at all (as in `helper`).
"""

from __future__ import annotations

import collections
import contextlib
import struct

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the spawn helper does not import `typing`
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import NamedTuple

    class Proc(NamedTuple):
        pid: int
        ppid: int
        pgid: int

else:
    Proc = collections.namedtuple("Proc", ("pid", "ppid", "pgid"))  # what NamedTuple makes

# <sys/sysctl.h>
CTL_KERN = 1
KERN_PROC = 14
KERN_PROC_ALL = 0
# sizeof(struct kinfo_proc) on 64-bit macOS, and the offsets of the fields we read:
# kp_proc.p_pid, and kp_eproc.e_ppid followed by kp_eproc.e_pgid, read together (kp_eproc
# starts at 296).
KINFO_PROC_SIZE = 648
OFFSET_PID = 40
OFFSET_PPID = 560
PS = "/bin/ps"
_ENOMEM = 12


def parse_kinfo_procs(buffer: bytes, *, size: int = KINFO_PROC_SIZE) -> tuple[Proc, ...]:
    """The processes in a KERN_PROC_ALL buffer (native byte order; a partial tail ignored)."""
    procs: list[Proc] = []
    for start in range(0, len(buffer) - size + 1, size):
        (pid,) = struct.unpack_from("=i", buffer, start + OFFSET_PID)
        ppid, pgid = struct.unpack_from("=ii", buffer, start + OFFSET_PPID)
        if pid > 0:
            procs.append(Proc(pid, ppid, pgid))
    return tuple(procs)


def parse_ps(text: str) -> tuple[Proc, ...]:
    """The processes in `ps -Ao pid=,ppid=,pgid=` output (malformed lines skipped)."""
    procs: list[Proc] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            procs.append(Proc(int(fields[0]), int(fields[1]), int(fields[2])))
    return tuple(procs)


def children(table: Iterable[Proc], pid: int) -> list[int]:
    """Processes whose parent is `pid` or that are still in process group `pid`."""
    return [p.pid for p in table if p.pid != pid and pid in (p.ppid, p.pgid)]


def _sysctl_table() -> tuple[Proc, ...] | None:
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        mib = (ctypes.c_int * 3)(CTL_KERN, KERN_PROC, KERN_PROC_ALL)
        for _ in range(5):  # the table can grow between the size query and the read
            size = ctypes.c_size_t(0)
            if libc.sysctl(mib, 3, None, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
                return None
            size.value += 32 * KINFO_PROC_SIZE
            buffer = ctypes.create_string_buffer(size.value)
            if libc.sysctl(mib, 3, buffer, ctypes.byref(size), None, ctypes.c_size_t(0)) == 0:
                return parse_kinfo_procs(buffer.raw[: size.value])
            if ctypes.get_errno() != _ENOMEM:
                return None
    except (OSError, AttributeError, TypeError):
        return None
    return None


def _ps_table() -> tuple[Proc, ...]:
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        completed = subprocess.run(
            [PS, "-Ao", "pid=,ppid=,pgid="], capture_output=True, timeout=5, check=False
        )
        return parse_ps(completed.stdout.decode(errors="replace"))
    return ()


def process_table() -> tuple[Proc, ...]:
    """Every process of the host: from sysctl, or from `ps` when sysctl fails."""
    table = _sysctl_table()
    return table if table else _ps_table()


def children_of(pid: int) -> list[int]:
    """The live "children" of `pid` (see the module docstring), read now."""
    return children(process_table(), pid)
