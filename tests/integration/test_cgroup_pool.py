"""The cgroup pool: a reused cgroup gets every limit rewritten and reports only its own
run's events; pooled cgroups are removed on close, those of a dead host by the next sweep."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import anyio
import attrs
import pytest

from mechasandbox.domain import Limits
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import SpawnSpec


@pytest.fixture
def manager() -> CgroupManager:
    probed = CgroupManager.probe()
    if isinstance(probed, str):
        pytest.skip(f"no writable cgroup here: {probed}")
    return probed


def _memory_limit(manager: CgroupManager, directories: tuple[str, ...]) -> str:
    name = "memory.max" if manager.version == 2 else "memory.limit_in_bytes"
    return Path(directories[0], name).read_text().strip()


def _pids_limit(manager: CgroupManager, directories: tuple[str, ...]) -> str:
    return Path(directories[-1], "pids.max").read_text().strip()


def _released(pids_dir: str) -> None:
    """Wait until the kernel has released the run's last process: one that has left
    cgroup.procs still counts in pids.current a moment longer, and such a cgroup is not
    pooled (this test needs it reused)."""
    deadline = time.monotonic() + 10
    while Path(pids_dir, "pids.current").read_text().strip() != "0":
        assert time.monotonic() < deadline, "the run's processes were never released"
        time.sleep(0.005)


def test_a_reused_cgroup_gets_every_limit_rewritten(manager: CgroupManager) -> None:
    first = manager.create(Limits(memory_bytes=64 * 1024 * 1024, max_processes=7))
    assert _memory_limit(manager, first.directories) == str(64 * 1024 * 1024)
    assert _pids_limit(manager, first.directories) == "7"
    manager.destroy(first)
    second = manager.create(Limits(memory_bytes=None, max_processes=None))
    try:
        assert second.directories == first.directories  # the pool handed it back
        assert _memory_limit(manager, second.directories) in ("max", str(2**63 - 4096))
        assert _pids_limit(manager, second.directories) == "max"
    finally:
        manager.destroy(second)
        manager.close()
    assert not any(os.path.exists(d) for d in first.directories)


def test_events_of_a_reused_cgroup_are_its_own_runs(
    manager: CgroupManager, runner: HelperProcessRunner
) -> None:
    limits = Limits(max_processes=4)
    bomb = SpawnSpec(
        argv=("sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait"),
        env=(("PATH", "/usr/bin:/bin"),),
        cwd="/",
        timeout_s=10,
    )
    first = manager.create(limits)
    anyio.run(runner.run, attrs.evolve(bomb, cgroup_procs=first.procs_files))
    assert manager.events(first).pids_max_hits > 0
    _released(first.directories[-1])
    manager.destroy(first)
    second = manager.create(limits)
    try:
        assert second.directories == first.directories
        quiet = attrs.evolve(bomb, argv=("true",), cgroup_procs=second.procs_files)
        anyio.run(runner.run, quiet)
        assert manager.events(second).pids_max_hits == 0
    finally:
        manager.destroy(second)
        manager.close()


def test_the_sweep_empties_and_removes_the_cgroups_of_a_dead_host(manager: CgroupManager) -> None:
    """A host killed mid-run leaves its pooled cgroups, possibly with a process inside (a
    warm child not yet gone): the next manager's sweep kills it and removes them, and leaves
    those of live hosts alone."""
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    left = f"mechasandbox-p{dead.pid}-{os.urandom(6).hex()}"
    alive = f"mechasandbox-p{os.getpid()}-{os.urandom(6).hex()}"
    directories = [os.path.join(p, name) for p in manager.parents for name in (left, alive)]
    for directory in directories:
        os.mkdir(directory)
    inside = subprocess.Popen(["sleep", "60"])
    try:
        for parent in manager.parents:
            Path(parent, left, "cgroup.procs").write_text(str(inside.pid))
        CgroupManager(version=manager.version, parents=manager.parents).sweep()
        assert inside.wait(timeout=10) == -signal.SIGKILL
        for parent in manager.parents:
            assert not os.path.exists(os.path.join(parent, left))
            assert os.path.isdir(os.path.join(parent, alive))
    finally:
        inside.kill()
        inside.wait()
        for directory in directories:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
