"""The process tree of the spawn helper's runs: walked, killed, and waited for.

The helper is the child subreaper of every run, so what a run leaves behind (processes
that `setsid` or double-fork) is re-parented to it, and found by walking "children of"
from the helper or from a run's root: on Linux from /proc/PID/task/*/children, on macOS
from the process table (`proctree_darwin`). Standard library only, and no `typing`, as in
`helper`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

from mechasandbox.runner import proctree_darwin

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the helper does not import `typing`
if TYPE_CHECKING:
    from collections.abc import Callable

_IS_LINUX = sys.platform.startswith("linux")
# How long killing a run's tree waits for the killed processes to exit.
KILL_WAIT_S = 2.0


def children_of(pid: int) -> list[int]:
    """The children of `pid` now (on macOS, see `proctree_darwin` for what that means)."""
    if sys.platform == "darwin":  # no /proc: the sysctl process table
        return proctree_darwin.children_of(pid)
    if not _IS_LINUX:
        return []
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
    return found


def tree(roots: list[int]) -> list[int]:
    """`roots` and every descendant found, each once."""
    seen: list[int] = []
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.append(pid)
        pending.extend(children_of(pid))
    return seen


def kill_tree(roots: list[int], *, me: int, reap: Callable[[], None]) -> None:
    """SIGKILL `roots` and every descendant, repeating until no new process appears
    (a process may fork while we walk), and wait until the killed ones have exited:
    a process dies some time after SIGKILL (a sandbox's pid 1 first tears down its
    namespaces and kills what is left in them), and the run is not over before. Bounded by
    `KILL_WAIT_S` and 50 rounds: a process stuck in the kernel, or one we may not kill,
    must not stall the helper. `me`: the helper, never killed.
    Killed orphans are re-parented to the helper, and reaped here (`reap`) or by the
    helper's SIGCHLD loop."""
    deadline = time.monotonic() + KILL_WAIT_S
    for _ in range(50):
        pids = [p for p in tree(roots) if p != me]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _wait_exited(pids, deadline)
        reap()
        # A zombie has exited: it is reaped by its parent, or by us once it is ours.
        roots = [p for p in pids if _running(p)]
        if time.monotonic() >= deadline:
            return


def _wait_exited(pids: list[int], deadline: float) -> None:
    """Block until each of `pids` has exited (a zombie counts) or `deadline` has passed.
    Linux: on pidfds, waking when the last one exits; elsewhere: a short sleep."""
    if not hasattr(os, "pidfd_open"):
        time.sleep(0.001)
        return
    poller = select.poll()
    pidfds: list[int] = []
    try:
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:  # gone already
                continue
            pidfds.append(pidfd)
            poller.register(pidfd, select.POLLIN)
        waiting = len(pidfds)
        while waiting:
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0:
                return
            events = poller.poll(max(1, int(left_ms)))
            for fd, _ in events:
                poller.unregister(fd)
                waiting -= 1
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def _running(pid: int) -> bool:
    """Still there and not a zombie (Linux: its /proc state; elsewhere any process)."""
    if not _IS_LINUX:
        return pid_exists(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def pid_exists(pid: int) -> bool:
    """Still in the process table (possibly a zombie not yet reaped), on any platform."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
