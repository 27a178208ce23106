"""A long series of runs leaves the host process as it found it: the same open files, the
same resident memory (each within a small constant), and a bounded set of warm children
offered by the spawn helper, while pooled cgroups are retired and replaced under it.

CI runs a short series (MECHASANDBOX_SOAK_RUNS unset: 300 runs, about ten seconds on two
cores); `MECHASANDBOX_SOAK_RUNS=10000 pytest tests/integration/test_soak.py` runs the long
one on demand.
"""

from __future__ import annotations

import gc
import os
import pathlib

import anyio
import pytest

from mechasandbox.backends.base import Backend
from mechasandbox.domain import Enforcement, Policy, RunRequest
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

RUNS = int(os.environ.get("MECHASANDBOX_SOAK_RUNS", "300"))
WARM_UP = 100  # the first runs fill caches and pools: measured after them
FD_SLACK = 6  # warm children offered at a given moment (each a socket) vary by a few
RSS_SLACK = 4 * 1024 * 1024  # an allocator arena or a dict's table may grow once
# Each run writes more than a pooled cgroup may keep charged, so that its cgroup is retired
# and a fresh one takes its place: the churn under which offers once piled up.
SCRIPT = "head -c 6000000 /dev/zero > big; echo ok"


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def backend(runner: HelperProcessRunner) -> Backend:
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

    made = BubblewrapBackend(runner=runner)
    require_available(made)
    return made


@pytest.mark.slow
def test_many_runs_leave_files_memory_and_offers_as_they_were(
    backend: Backend, runner: HelperProcessRunner, tmp_path: pathlib.Path
) -> None:
    request = RunRequest(argv=["sh", "-c", SCRIPT], workspace=str(tmp_path))
    policy = Policy(enforcement=Enforcement.STRICT)
    client = runner._helper  # the client whose offers must stay bounded

    async def series(count: int) -> None:
        for _ in range(count):
            result = await backend.run(request, policy)
            assert result.unwrap().stdout == b"ok\n", result

    anyio.run(series, WARM_UP)
    gc.collect()
    files, resident = _open_files(), _resident()
    anyio.run(series, RUNS)
    gc.collect()
    assert _open_files() <= files + FD_SLACK, (files, _open_files())
    assert _resident() <= resident + RSS_SLACK, (resident, _resident())
    groups = len(client._offers)  # once one entry per cgroup ever seen
    assert groups <= 16, groups
