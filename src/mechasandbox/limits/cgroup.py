"""Per-run cgroups for memory and process-count limits, on cgroup v2 or v1.

A cgroup limits the run as a whole (RLIMIT_NPROC counts the user's processes, RLIMIT_AS
reserved address space) and tells a memory bomb (`oom_kill` event) and a fork bomb
(`pids` max event) apart from an ordinary failure. The child joins the cgroup itself,
before exec (see `SpawnSpec.cgroup_procs`), so nothing it starts runs outside it.

Creating and removing a cgroup directory costs about a millisecond per run on cgroup v1
(and removal is asynchronous work for the kernel), so a manager keeps a small pool: a
cgroup whose run has ended, that is empty and holds (almost) no memory charge, is kept and
handed to the next run with every limit rewritten. Its event counters cannot be reset, so
a run records them when it gets the cgroup and reports the difference. Pooled cgroups are
removed when the host exits; those of a host that died are swept by the next manager.

`ProcessCgroup` only reads: the cgroup an engine made for a container, found from its init's
pid (the warm pool's usage and limit events).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import threading
import time
import weakref
from pathlib import Path

import attrs

from mechasandbox.domain.limits import Limits
from mechasandbox.runner.proctree import pid_exists

_V2_MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
_V1_ROOT = Path("/sys/fs/cgroup")
_PREFIX = "mechasandbox-"
_OWNED = re.compile(r"mechasandbox-p(\d+)-[0-9a-f]+")
POOL_SIZE = 8
# A cgroup still charged with more than this (page cache of the last run) is removed rather
# than reused, so that a run never starts with another run's memory counted against it.
_REUSE_MAX_CHARGE = 4 * 1024 * 1024
# How long emptying a cgroup waits for the processes it killed to exit.
_EMPTY_WAIT_S = 2.0
_UNLIMITED_V1 = "-1"


@attrs.frozen(kw_only=True)
class CgroupEvents:
    oom_kills: int = 0
    pids_max_hits: int = 0


@attrs.frozen(kw_only=True)
class CgroupRun:
    """The cgroup directories of one run (one per v1 hierarchy, or a single v2 one).

    `baseline`: the event counters when the run got the cgroup (non-zero when reused)."""

    version: int
    directories: tuple[str, ...]
    baseline: CgroupEvents = CgroupEvents()

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(f"{d}/cgroup.procs" for d in self.directories)


def _read(path: Path | str) -> str:
    """A small kernel file, read raw (cgroupfs files are read several times per run, so
    the callers on a run's path pass plain strings, not `Path`s)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        return os.read(fd, 65536).decode()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _memberships(pid: int | str) -> list[tuple[str, str]]:
    """(controllers, path) of each hierarchy the process is in ("" controllers: v2)."""
    found: list[tuple[str, str]] = []
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        _id, controllers, path = line.split(":", 2)
        found.append((controllers, path))
    return found


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path in the v1 hierarchy of `controller` (v2 when None)."""
    for controllers, path in _memberships("self"):
        if (controller is None and controllers == "") or (
            controller is not None and controller in controllers.split(",")
        ):
            return path
    return "/"


def _event_files(memory_dir: str, pids_dir: str, *, v2: bool) -> tuple[str, str]:
    """The files holding the OOM kills and the pids-limit hits."""
    return (
        f"{memory_dir}/{'memory.events' if v2 else 'memory.oom_control'}",
        f"{pids_dir}/pids.events",
    )


def _events(memory_dir: str | None, pids_dir: str | None, *, v2: bool) -> CgroupEvents:
    """The OOM kills and pids-limit hits counted so far (0 for a directory not known)."""
    memory, pids = _event_files(memory_dir or "", pids_dir or "", v2=v2)
    return CgroupEvents(
        oom_kills=_counter(_read(memory), "oom_kill") if memory_dir else 0,
        pids_max_hits=_counter(_read(pids), "max") if pids_dir else 0,
    )


class HeldEvents:
    """A cgroup's event counters read through descriptors kept open: a session reads them
    after each of its commands, one `pread` per file rather than an open, a read and a
    close. Raises OSError when a file cannot be opened; `close` when done."""

    def __init__(self, run: CgroupRun) -> None:
        memory, pids = _event_files(run.directories[0], run.directories[-1], v2=run.version == 2)
        self._memory = os.open(memory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._pids = os.open(pids, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self._memory)
            raise

    def read(self) -> CgroupEvents:
        """The counters now (OSError when the cgroup is gone)."""
        return CgroupEvents(
            oom_kills=_counter(os.pread(self._memory, 4096, 0).decode(), "oom_kill"),
            pids_max_hits=_counter(os.pread(self._pids, 4096, 0).decode(), "max"),
        )

    def close(self) -> None:
        for fd in (self._memory, self._pids):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._memory = self._pids = -1


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _write(directory: str, name: str, value: object) -> None:
    fd = os.open(os.path.join(directory, name), os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


class _Pool:
    """Idle cgroups of one manager (each a tuple of directories), shared by its threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[tuple[str, ...]] = []
        # The limits last written to each cgroup of this pool: (memory_bytes, max_processes).
        self.applied: dict[tuple[str, ...], tuple[int | None, int | None]] = {}
        # The event counters last read from each cgroup (at its run's end): the next run's
        # baseline, so that handing a cgroup out reads nothing.
        self.counters: dict[tuple[str, ...], CgroupEvents] = {}
        self.swept = False
        self.finalizer: weakref.finalize[..., CgroupManager] | None = None

    def drain(self) -> list[tuple[str, ...]]:
        with self.lock:
            idle, self.idle = self.idle, []
            self.applied.clear()
            self.counters.clear()
        return idle


@attrs.frozen(kw_only=True)
class CgroupManager:
    """Creates and tears down per-run cgroups below a parent directory it may write.

    `parents` holds one directory per v1 hierarchy (memory, pids) or one v2 directory.
    """

    version: int
    parents: tuple[str, ...]
    _pool: _Pool = attrs.field(factory=_Pool, eq=False, repr=False, init=False)

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
        """A cgroup with `limits` applied (from the pool, or made). Raises OSError when the
        kernel refuses."""
        directories = self._take()
        fresh = directories is None
        if directories is None:
            directories = self._make()
        run = CgroupRun(version=self.version, directories=directories)
        wanted = (limits.memory_bytes, limits.max_processes)
        pool = self._pool
        try:
            # A reused cgroup whose files already hold these limits needs no writes.
            with pool.lock:
                applied = pool.applied.pop(directories, None)
            if fresh or applied != wanted:
                self._apply(run, limits, fresh=fresh)
            with pool.lock:
                pool.applied[directories] = wanted
            if not fresh:
                with pool.lock:
                    known = pool.counters.pop(directories, None)
                run = attrs.evolve(run, baseline=known or self._counters(run))
        except OSError:
            self._remove(run)
            if fresh:
                raise
            return self.create(limits)  # a pooled cgroup gone bad: a fresh one instead
        return run

    def _make(self) -> tuple[str, ...]:
        name = f"{_PREFIX}p{os.getpid()}-{secrets.token_hex(6)}"
        directories = tuple(str(Path(p) / name) for p in self.parents)
        made: list[str] = []
        try:
            for directory in directories:
                os.mkdir(directory, 0o755)
                made.append(directory)
        except OSError:
            for directory in made:
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise
        return directories

    def idle_procs_files(self, minimum: int = 2) -> tuple[tuple[str, ...], ...]:
        """The cgroup.procs files of every pooled cgroup, after making sure at least
        `minimum` are pooled: a runner prepares a child in each (`PreparesCgroups`), and with
        two or more in turn (the pool is first in, first out) the next run's cgroup has had
        a whole run's time to get its child in, even when runs follow each other closely."""
        pool = self._pool
        with pool.lock:
            missing = max(0, min(minimum, POOL_SIZE) - len(pool.idle))
        made: list[tuple[str, ...]] = []
        for _ in range(missing):
            try:
                directories = self._make()
            except OSError:
                break  # the next run makes its own and reports why it cannot
            made.append(directories)
        with pool.lock:
            pool.idle.extend(made)
            return tuple(tuple(f"{d}/cgroup.procs" for d in group) for group in pool.idle)

    def sweep(self) -> None:
        """Remove, once, the cgroups of hosts that died without removing them (the first
        run does it if nobody called this before)."""
        pool = self._pool
        with pool.lock:
            if not pool.swept:
                pool.swept = True
                self._sweep()

    def _take(self) -> tuple[str, ...] | None:
        self.sweep()
        pool = self._pool
        with pool.lock:
            if pool.finalizer is None:
                # The pool goes at `close`, or at exit for an owner that never closed it.
                pool.finalizer = weakref.finalize(
                    self, _close_pool, self.version, self.parents, pool
                )
            return pool.idle.pop(0) if pool.idle else None

    def _sweep(self) -> None:
        """Remove the pooled cgroups of hosts that died without removing them (one listing
        per hierarchy). What is still inside one (a warm child not yet gone with its
        helper, something a run left) was the dead host's: it is killed first."""
        for parent in self.parents:
            with contextlib.suppress(OSError), os.scandir(parent) as entries:
                for entry in entries:
                    owned = _OWNED.fullmatch(entry.name)
                    if owned and not pid_exists(int(owned.group(1))):
                        try:
                            os.rmdir(entry.path)
                        except OSError:
                            left = CgroupRun(version=self.version, directories=(entry.path,))
                            if self._empty(left):
                                with contextlib.suppress(OSError):
                                    os.rmdir(entry.path)

    def _apply(self, run: CgroupRun, limits: Limits, *, fresh: bool = True) -> None:
        """Write every limit; on a reused cgroup also reset the ones this run leaves unset."""
        if self.version == 2:
            (directory,) = run.directories
            memory = limits.memory_bytes
            if memory is not None or not fresh:
                _write(directory, "memory.max", "max" if memory is None else memory)
                with contextlib.suppress(OSError):
                    _write(directory, "memory.swap.max", "max" if memory is None else 0)
            if limits.max_processes is not None or not fresh:
                processes = limits.max_processes
                _write(directory, "pids.max", "max" if processes is None else processes)
            return
        memory_dir, pids_dir = run.directories
        if limits.memory_bytes is not None or not fresh:
            value = _UNLIMITED_V1 if limits.memory_bytes is None else str(limits.memory_bytes)
            # memsw >= limit at every step: the order depends on whether the limit goes up.
            try:
                _write(memory_dir, "memory.limit_in_bytes", value)
                lowered = True
            except OSError:
                lowered = False
            with contextlib.suppress(OSError):  # absent without swap accounting
                _write(memory_dir, "memory.memsw.limit_in_bytes", value)
            if not lowered:
                _write(memory_dir, "memory.limit_in_bytes", value)
        if limits.max_processes is not None or not fresh:
            processes = limits.max_processes
            _write(pids_dir, "pids.max", "max" if processes is None else processes)

    def _counters(self, run: CgroupRun) -> CgroupEvents:
        return _events(run.directories[0], run.directories[-1], v2=self.version == 2)

    def events(self, run: CgroupRun) -> CgroupEvents:
        """The run's events: the counters now, minus those when it got the cgroup."""
        now = self._counters(run)
        with self._pool.lock:
            self._pool.counters[run.directories] = now
        return CgroupEvents(
            oom_kills=now.oom_kills - run.baseline.oom_kills,
            pids_max_hits=now.pids_max_hits - run.baseline.pids_max_hits,
        )

    def _empty(self, run: CgroupRun) -> bool:
        """Kill whatever is still inside; True once no process is left."""
        empty = True
        for directory in run.directories:
            if self.version == 2:  # cgroup.kill: v2 only (kernel >= 5.14)
                with contextlib.suppress(OSError):
                    _write(directory, "cgroup.kill", 1)
            # A killed process leaves its cgroup only once it has exited, which a busy
            # host may take a while to get to: wait for it (bounded), do not just retry.
            deadline = time.monotonic() + _EMPTY_WAIT_S
            while True:
                pids = [int(p) for p in _read(f"{directory}/cgroup.procs").split()]
                if not pids:
                    break
                if time.monotonic() > deadline:
                    empty = False
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.001)
        return empty

    def _reusable(self, run: CgroupRun) -> bool:
        """Uncharged and without processes. A process that has left cgroup.procs but was
        not reaped yet (a sandbox's pid 1 whose reaper is slow) still counts: such a cgroup
        is not waited for but removed, and the pool makes another."""
        memory_dir, pids_dir = run.directories[0], run.directories[-1]
        memory_file = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        processes = _read(f"{pids_dir}/pids.current").strip()
        charge = _read(f"{memory_dir}/{memory_file}").strip()
        return (
            charge.isdigit()
            and int(charge) <= _REUSE_MAX_CHARGE
            and processes.isdigit()
            and int(processes) == 0
        )

    def destroy(self, run: CgroupRun) -> None:
        """Kill whatever is still inside, then keep the cgroup for the next run (empty and
        uncharged, room in the pool) or remove the directories."""
        emptied = self._empty(run)
        if emptied and self._reusable(run):
            pool = self._pool
            with pool.lock:
                if len(pool.idle) < POOL_SIZE and run.directories not in pool.idle:
                    pool.idle.append(run.directories)
                    return
        self._remove(run, emptied=emptied)

    def _remove(self, run: CgroupRun, *, emptied: bool = False) -> None:
        with self._pool.lock:
            self._pool.applied.pop(run.directories, None)
            self._pool.counters.pop(run.directories, None)
        if not emptied:
            # A pooled cgroup may hold a runner's warm child (see `PreparesCgroups`): it
            # dies with the cgroup, which cannot be removed while a process is inside.
            self._empty(run)
        for directory in run.directories:
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    def close(self) -> None:
        """Remove the pooled cgroups (idempotent; the pool refills on the next run)."""
        finalizer = self._pool.finalizer
        if finalizer is not None:
            finalizer()  # runs `_close_pool` once, and forgets it: no second call at exit
            return
        self._drain()

    def _drain(self) -> None:
        for directories in self._pool.drain():
            self._remove(CgroupRun(version=self.version, directories=directories))


def _close_pool(version: int, parents: tuple[str, ...], pool: _Pool) -> None:
    """`CgroupManager.close` for a pool whose manager may be gone: the finalizer's callback
    holds the pool, never the manager (that would keep the manager alive)."""
    manager = CgroupManager(version=version, parents=parents)
    object.__setattr__(manager, "_pool", pool)  # the frozen manager of this very pool
    pool.finalizer = None
    manager._drain()


@attrs.frozen(kw_only=True)
class ProcessCgroup:
    """The cgroup another manager made for a process of this host (an engine's container,
    whose init is that process), read from here: its usage and events.

    `directories`: (controller, directory) per v1 hierarchy read, or ("", directory) on v2.
    """

    directories: tuple[tuple[str, str], ...]

    @staticmethod
    def of(pid: int) -> ProcessCgroup | None:
        """Where the process `pid` is accounted (None: nowhere this process can read)."""
        found: list[tuple[str, str]] = []
        for controllers, path in _memberships(pid):
            if controllers == "":
                for root in _V2_MOUNTS:
                    candidate = root + path
                    if os.path.exists(candidate + "/cgroup.procs") and os.path.exists(
                        root + "/cgroup.controllers"
                    ):
                        found.append(("", candidate))
                        break
                continue
            for controller in controllers.split(","):
                if controller in ("memory", "pids", "cpuacct"):
                    candidate = f"{_V1_ROOT}/{controller}{path}"
                    if os.path.isdir(candidate):
                        found.append((controller, candidate))
        v1 = [item for item in found if item[0]]
        return ProcessCgroup(directories=tuple(v1 or found)) if found else None

    def _dir(self, controller: str) -> str | None:
        for name, directory in self.directories:
            if name in (controller, ""):
                return directory
        return None

    def _read(self, controller: str, filename: str) -> str:
        directory = self._dir(controller)
        return "" if directory is None else _read(f"{directory}/{filename}")

    @property
    def v2(self) -> bool:
        return any(name == "" for name, _ in self.directories)

    def cpu_ns(self) -> int:
        if self.v2:
            return _counter(self._read("", "cpu.stat"), "usage_usec") * 1000
        text = self._read("cpuacct", "cpuacct.usage").strip()
        return int(text) if text.isdigit() else 0

    def memory_peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        text = self._read("memory", name).strip()
        return int(text) if text.isdigit() else 0

    def reset_memory_peak(self) -> None:
        directory = self._dir("memory")
        if directory is not None and not self.v2:
            with contextlib.suppress(OSError):
                _write(directory, "memory.max_usage_in_bytes", 0)

    def events(self) -> CgroupEvents:
        return _events(self._dir("memory"), self._dir("pids"), v2=self.v2)
