"""One rule for every limit, on each host-process backend (docs/failure-semantics.md): a
limit that refused something in a run that then completed is a violation of the result; a
limit is the run's error only when it ended the run."""

from __future__ import annotations

import pathlib
import signal

import anyio
import attrs
import pytest
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import Backend
from mechasandbox.domain import (
    MIB,
    Enforcement,
    FileSizeLimit,
    Limits,
    MemoryLimit,
    Policy,
    RunRequest,
)
from mechasandbox.domain.errors import SandboxError
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupManager
from tests.backends.host_backends import backend

__all__ = ["backend"]  # the fixture: each test runs on process, landlock and bubblewrap

PYTHON = "/usr/bin/python3"
BEST_EFFORT = Policy(enforcement=Enforcement.BEST_EFFORT)


def _run(
    backend: Backend, script: str, workspace: pathlib.Path, limits: Limits
) -> Result[RunResult, SandboxError]:
    # Landlock keeps the workspace's top level closed to new entries: write below it.
    (workspace / "src").mkdir(exist_ok=True)
    policy = attrs.evolve(BEST_EFFORT, limits=limits)
    request = RunRequest(argv=["sh", "-c", script], workspace=str(workspace))
    return anyio.run(backend.run, request, policy)


def _cgroup(backend: Backend) -> None:
    if not isinstance(getattr(backend, "cgroups", None), CgroupManager):
        pytest.skip("no cgroup here: refused forks and OOM kills are not counted")


def test_refused_forks_in_a_completed_run_are_a_violation(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    _cgroup(backend)
    # The subshell dies when a fork is refused; the command itself goes on and succeeds.
    script = "(for i in $(seq 100); do sleep 1 & done) 2>/dev/null; echo went on; exit 0"
    result = _run(backend, script, tmp_path, Limits(max_processes=16, timeout_s=30))
    assert isinstance(result, Success), result
    finished = result.unwrap()
    assert finished.exit_code == 0
    assert finished.stdout == b"went on\n"
    (violation,) = [v for v in finished.violations if v.kind == "process_limit"]
    assert violation.count is not None and violation.count >= 1
    assert "process limit of 16" in violation.detail


def test_a_child_killed_by_the_oom_killer_in_a_completed_run_is_a_violation(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    _cgroup(backend)
    hog = f"{PYTHON} -c 'b = bytearray(1 << 30); b[::4096] = b\"x\" * (1 << 18)'"
    result = _run(backend, f"{hog}; echo went on", tmp_path, Limits(memory_bytes=64 * MIB))
    assert isinstance(result, Success), result
    finished = result.unwrap()
    assert finished.exit_code == 0
    assert finished.stdout == b"went on\n"
    (violation,) = [v for v in finished.violations if v.kind == "memory_limit"]
    assert violation.count is not None and violation.count >= 1
    assert "64m" in violation.detail


def test_an_oom_kill_that_ends_the_run_is_its_error(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    _cgroup(backend)
    hog = f"{PYTHON} -c 'b = bytearray(1 << 30); b[::4096] = b\"x\" * (1 << 18)'"
    result = _run(backend, hog, tmp_path, Limits(memory_bytes=64 * MIB))
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, MemoryLimit), error
    assert "memory limit of 64m" in error.message
    assert not [v for v in error.partial.violations if v.kind == "memory_limit"]


def test_a_child_killed_by_sigxfsz_that_ends_the_run_is_a_file_size_limit(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    script = "head -c 5000000 /dev/zero > src/big"
    result = _run(backend, script, tmp_path, Limits(max_file_size_bytes=1 * MIB))
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, FileSizeLimit), error
    assert "file-size limit of 1m" in error.message
    partial = error.partial
    # The status as it came: the shell's 153, or the signal bubblewrap's init reports.
    assert (partial.exit_code, partial.signal) in ((153, None), (None, signal.SIGXFSZ))
    assert (tmp_path / "src" / "big").stat().st_size == 1 * MIB


def test_the_command_killed_by_sigxfsz_is_a_file_size_limit(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    result = _run(
        backend,
        "exec head -c 5000000 /dev/zero > src/big",
        tmp_path,
        Limits(max_file_size_bytes=1 * MIB),
    )
    assert isinstance(result, Failure), result
    assert isinstance(result.failure(), FileSizeLimit), result
