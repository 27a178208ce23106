"""When the engine goes away during a run: what became of the command, made true.

Killing dockerd (`kill -9`, a crash, the OOM killer) does not stop its containers: their
shims and processes run on (and with `live-restore` even a clean stop leaves them), while
the CLI that was attached to one ends with "error waiting for container: unexpected EOF".
A stopped engine (SIGSTOP, a deadlock) answers nothing: the CLI waits. Neither can remove
the container. So a run whose engine was lost, or did not answer the removal of a container
that may still run, ends here: the container's processes are killed from this host,
found by the container's id (`docker run --cidfile`) in the cgroup hierarchy, where the
engine runs on this host and this user may signal them. The answer (`EngineLost`) says
which: killed, none left, or why they could not be (a remote engine, another user's
processes), so that a run is never reported ended while its command still runs unseen.

The container itself (the engine's record) is left to the engine: it stays registered with
the backend's `LiveContainers`, which removes it at the next run, at `close()` or at exit,
and the next process's sweep removes it otherwise (its owner is gone by then).

`RunFiles` holds the cid files: one private directory per `EngineState`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from mechasandbox.leftovers import temp_prefix

_V2_ROOT = Path("/sys/fs/cgroup")
# v1: one hierarchy is enough to find the container's processes (pids holds every task).
_V1_HIERARCHIES = ("pids", "memory", "systemd", "cpu,cpuacct")
_SEARCH_DEPTH = 7
_KILL_WAIT_S = 2.0


class RunFiles:
    """Where the engine CLI writes each run's container id (`--cidfile`): a private
    directory (mkdtemp, 0700) made at first use, removed by `close()` or at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._directory: list[str] = []
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def cidfile(self, run_id: str) -> str:
        with self._lock:
            if not self._directory or not os.path.isdir(self._directory[0]):
                self._directory[:] = [tempfile.mkdtemp(prefix=temp_prefix("oci"))]
                if self._finalizer is None or not self._finalizer.alive:
                    self._finalizer = weakref.finalize(self, _remove, self._directory)
            return os.path.join(self._directory[0], f"{run_id}.cid")

    def close(self) -> None:
        with self._lock:
            finalizer = self._finalizer
        if finalizer is not None:
            finalizer()


def _remove(directory: list[str]) -> None:
    for path in directory:
        shutil.rmtree(path, ignore_errors=True)
    directory.clear()


def read_cidfile(path: str | None) -> str | None:
    """The container id the engine CLI wrote (None: not created, or not written)."""
    if path is None:
        return None
    try:
        with open(path, encoding="ascii") as handle:
            found = handle.read().strip()
    except (OSError, ValueError):
        return None
    return found if len(found) >= 12 and all(c in "0123456789abcdef" for c in found) else None


def forget_cidfile(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _roots() -> list[Path]:
    if (_V2_ROOT / "cgroup.controllers").exists():
        return [_V2_ROOT]
    return [_V2_ROOT / name for name in _V1_HIERARCHIES if (_V2_ROOT / name).is_dir()]


def container_cgroups(container_id: str) -> list[Path]:
    """The cgroup directories of the container on this host (docker: `.../<id>` or
    `docker-<id>.scope`; podman: `libpod-<id>...`), in the first hierarchy that has one."""
    for root in _roots():
        found: list[Path] = []
        level = [root]
        for _depth in range(_SEARCH_DEPTH):
            deeper: list[Path] = []
            for directory in level:
                with contextlib.suppress(OSError), os.scandir(directory) as entries:
                    for entry in entries:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                        if container_id in entry.name and "conmon" not in entry.name:
                            found.append(Path(entry.path))
                        else:
                            deeper.append(Path(entry.path))
            level = deeper
            if found or not level:
                break
        if found:
            return found
    return []


def _members(cgroups: list[Path]) -> set[int]:
    """The processes in the cgroups and below them."""
    pids: set[int] = set()
    for top in cgroups:
        for directory, _subdirectories, files in os.walk(top):
            if "cgroup.procs" not in files:
                continue
            with contextlib.suppress(OSError, ValueError):
                text = Path(directory, "cgroup.procs").read_text()
                pids.update(int(line) for line in text.split())
    return pids


def stop_container_processes(container_id: str | None) -> str:
    """Kill what runs in the container, from this host; says what became of it."""
    if container_id is None:
        return (
            "the engine never said which container it made, so its processes (if any "
            "started) could not be looked for from this host"
        )
    cgroups = container_cgroups(container_id)
    if not cgroups:
        return f"no process of container {container_id[:12]} is left on this host"
    killed: set[int] = set()
    refused: set[int] = set()
    end = time.monotonic() + _KILL_WAIT_S
    while True:
        pids = _members(cgroups) - refused
        if not pids:
            break
        if time.monotonic() > end:
            return (
                f"{len(pids)} processes of container {container_id[:12]} were still running "
                f"after {_KILL_WAIT_S:g}s of SIGKILL from this host"
            )
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
            except PermissionError:
                refused.add(pid)
        time.sleep(0.02)
    if refused:
        return (
            f"{len(refused)} processes of container {container_id[:12]} could not be killed "
            "from this host (not this user's): the command may still be running"
        )
    if not killed:
        return f"no process of container {container_id[:12]} is left on this host"
    return f"its {len(killed)} remaining processes were killed from this host"
