"""Per-run cgroups for memory and process-count limits, on cgroup v2 or v1.

A cgroup limits the run as a whole (RLIMIT_NPROC counts the user's processes, RLIMIT_AS
reserved address space) and tells a memory bomb (`oom_kill` event) and a fork bomb
(`pids` max event) apart from an ordinary failure. The child joins the cgroup itself,
before exec (see `SpawnSpec.cgroup_procs`), so nothing it starts runs outside it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from pathlib import Path

import attrs

from mechasandbox.domain.limits import Limits

_V2_MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
_V1_ROOT = Path("/sys/fs/cgroup")


@attrs.frozen(kw_only=True)
class CgroupRun:
    """The cgroup directories of one run (one per v1 hierarchy, or a single v2 one)."""

    version: int
    directories: tuple[str, ...]

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(f"{d}/cgroup.procs" for d in self.directories)


@attrs.frozen(kw_only=True)
class CgroupEvents:
    oom_kills: int = 0
    pids_max_hits: int = 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path in the v1 hierarchy of `controller` (v2 when None)."""
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _id, controllers, path = line.split(":", 2)
        if controller is None and controllers == "" or (
            controller is not None and controller in controllers.split(",")
        ):
            return path
    return "/"


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


@attrs.frozen(kw_only=True)
class CgroupManager:
    """Creates and tears down per-run cgroups below a parent directory it may write.

    `parents` holds one directory per v1 hierarchy (memory, pids) or one v2 directory.
    """

    version: int
    parents: tuple[str, ...]

    @staticmethod
    def probe() -> CgroupManager | str:
        """A manager for this host, or the reason there is none."""
        reasons: list[str] = []
        for mount in _V2_MOUNTS:
            base = Path(mount)
            if not (base / "cgroup.controllers").exists():
                continue
            parent = base / _own_cgroup(None).lstrip("/")
            enabled = _read(parent / "cgroup.subtree_control").split()
            if {"memory", "pids"} <= set(enabled) and _writable_dir(parent):
                return CgroupManager(version=2, parents=(str(parent),))
            reasons.append(f"cgroup v2 at {parent}: memory/pids not delegated or not writable")
        parents: list[str] = []
        for controller in ("memory", "pids"):
            parent = _V1_ROOT / controller / _own_cgroup(controller).lstrip("/")
            if not _writable_dir(parent):
                reasons.append(f"cgroup v1 {controller} at {parent}: not writable")
                break
            parents.append(str(parent))
        else:
            return CgroupManager(version=1, parents=tuple(parents))
        return "; ".join(reasons) or "no cgroup hierarchy found"

    def describe(self) -> str:
        return f"cgroup v{self.version} ({', '.join(self.parents)})"

    def create(self, limits: Limits) -> CgroupRun:
        """A fresh cgroup with `limits` applied. Raises OSError when the kernel refuses."""
        name = f"mechasandbox-{secrets.token_hex(6)}"
        directories = tuple(str(Path(p) / name) for p in self.parents)
        for directory in directories:
            os.mkdir(directory, 0o755)
        run = CgroupRun(version=self.version, directories=directories)
        try:
            self._apply(run, limits)
        except OSError:
            self.destroy(run)
            raise
        return run

    def _apply(self, run: CgroupRun, limits: Limits) -> None:
        def write(directory: str, name: str, value: object) -> None:
            Path(directory, name).write_text(str(value))

        if self.version == 2:
            (directory,) = run.directories
            if limits.memory_bytes is not None:
                write(directory, "memory.max", limits.memory_bytes)
                with contextlib.suppress(OSError):
                    write(directory, "memory.swap.max", 0)
            if limits.max_processes is not None:
                write(directory, "pids.max", limits.max_processes)
            return
        memory_dir, pids_dir = run.directories
        if limits.memory_bytes is not None:
            write(memory_dir, "memory.limit_in_bytes", limits.memory_bytes)
            with contextlib.suppress(OSError):  # absent without swap accounting
                write(memory_dir, "memory.memsw.limit_in_bytes", limits.memory_bytes)
        if limits.max_processes is not None:
            write(pids_dir, "pids.max", limits.max_processes)

    def events(self, run: CgroupRun) -> CgroupEvents:
        if self.version == 2:
            (directory,) = run.directories
            return CgroupEvents(
                oom_kills=_counter(_read(Path(directory, "memory.events")), "oom_kill"),
                pids_max_hits=_counter(_read(Path(directory, "pids.events")), "max"),
            )
        memory_dir, pids_dir = run.directories
        return CgroupEvents(
            oom_kills=_counter(_read(Path(memory_dir, "memory.oom_control")), "oom_kill"),
            pids_max_hits=_counter(_read(Path(pids_dir, "pids.events")), "max"),
        )

    def destroy(self, run: CgroupRun) -> None:
        """Kill whatever is still inside, then remove the directories."""
        for directory in run.directories:
            kill_file = Path(directory, "cgroup.kill")
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
            for _ in range(100):
                pids = [int(p) for p in _read(Path(directory, "cgroup.procs")).split()]
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.rmdir(directory)
