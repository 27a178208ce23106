"""Each `process` limit stops a real offender, with the matching error kind."""

from __future__ import annotations

import pathlib
import sys

import anyio
import attrs
import pytest
from returns.result import Failure

from mechasandbox.backends.process import ProcessBackend
from mechasandbox.domain import (
    MIB,
    CpuLimit,
    Enforcement,
    FileSizeLimit,
    Limits,
    MemoryLimit,
    Policy,
    Protection,
    RunRequest,
)
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.runner.runner import HelperProcessRunner
from tests.resource_limits import assert_fork_bomb_stopped

BEST_EFFORT = Policy(enforcement=Enforcement.BEST_EFFORT)


@pytest.fixture
def backend(runner: HelperProcessRunner) -> ProcessBackend:
    return ProcessBackend(runner=runner)


def run(backend: ProcessBackend, argv: list[str], workspace: pathlib.Path, limits: Limits):  # type: ignore[no-untyped-def]
    policy = attrs.evolve(BEST_EFFORT, limits=limits)
    return anyio.run(backend.run, RunRequest(argv=argv, workspace=str(workspace)), policy)


def test_cpu_time(backend: ProcessBackend, tmp_path: pathlib.Path) -> None:
    result = run(backend, ["sh", "-c", "while :; do :; done"], tmp_path, Limits(cpu_time_s=1))
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), CpuLimit)
    assert result.failure().partial.usage.cpu_s >= 0.8  # tick-based accounting


def test_memory(backend: ProcessBackend, tmp_path: pathlib.Path) -> None:
    hog = "x = bytearray(600 * 1024 * 1024); print('allocated')"
    result = run(backend, [sys.executable, "-c", hog], tmp_path, Limits(memory_bytes=200 * MIB))
    if isinstance(backend.cgroups, CgroupManager):
        assert isinstance(result, Failure)
        assert isinstance(result.failure(), MemoryLimit)
        assert b"allocated" not in result.failure().partial.stdout
    else:  # RLIMIT_AS: the allocation fails inside the command
        finished = result.unwrap()
        assert finished.exit_code != 0
        assert b"MemoryError" in finished.stderr


def test_processes(backend: ProcessBackend, tmp_path: pathlib.Path) -> None:
    capabilities = backend.probe().unwrap()
    if Protection.PROCESSES not in capabilities.enforced:
        pytest.skip(f"not enforced here: {capabilities.detail(Protection.PROCESSES)}")
    bomb = "for i in $(seq 100); do sleep 5 & done; wait"
    result = run(backend, ["sh", "-c", bomb], tmp_path, Limits(max_processes=20, timeout_s=30))
    assert_fork_bomb_stopped(backend, result)


def test_open_files(backend: ProcessBackend, tmp_path: pathlib.Path) -> None:
    opener = (
        "import os\nfds = []\ntry:\n    while True: fds.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError as e: print(len(fds), e.errno)"
    )
    finished = run(
        backend, [sys.executable, "-c", opener], tmp_path, Limits(max_open_files=64)
    ).unwrap()
    opened, errno_value = finished.stdout.split()
    assert int(opened) < 64
    assert int(errno_value) == 24  # EMFILE


def test_file_size(backend: ProcessBackend, tmp_path: pathlib.Path) -> None:
    result = run(
        backend,
        ["sh", "-c", "exec head -c 100000 /dev/zero > big.bin"],
        tmp_path,
        Limits(max_file_size_bytes=10_000),
    )
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), FileSizeLimit)
    assert (tmp_path / "big.bin").stat().st_size <= 10_000


def test_strict_default_policy_is_refused(backend: ProcessBackend, tmp_path: pathlib.Path) -> None:
    result = anyio.run(backend.run, RunRequest(argv=["true"], workspace=str(tmp_path)), Policy())
    assert isinstance(result, Failure)
    missing = result.failure().missing
    assert Protection.FILESYSTEM_READ in missing
    assert Protection.NETWORK_NONE in missing
