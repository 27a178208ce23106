"""The docker backend against a real Docker engine (see oci_contract)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mechasandbox.backends.oci import DockerBackend
from mechasandbox.domain.request import RunRequest
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.oci_contract import TEST_IMAGE, OciContract, ok, policy
from tests.conftest import require_available

pytestmark = [pytest.mark.backend("docker"), pytest.mark.anyio]

SRC = str(Path(__file__).resolve().parents[2] / "src")

_HOST_RUNNING = r"""
import anyio, sys
from mechasandbox.backends.oci import DockerBackend
from mechasandbox.domain import Enforcement, Limits, Policy, RunRequest
from mechasandbox.runner.runner import HelperProcessRunner

backend = DockerBackend(runner=HelperProcessRunner(), image=sys.argv[2])
request = RunRequest(argv=("sh", "-c", "sleep 1"), workspace=sys.argv[1])
policy = Policy(limits=Limits(timeout_s=60), enforcement=Enforcement.STRICT)
print(anyio.run(backend.run, request, policy).unwrap().exit_code)
"""


class TestDocker(OciContract):
    backend_class = DockerBackend
    cli = "docker"


async def test_a_container_of_another_process_keeps_its_covers_when_the_first_ends(
    runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """Two host processes run containers in one workspace. The second container starts
    while the first one's placeholders stand and binds them read-only in turn; when the
    first ends, removing them would detach those binds in the second container, which could
    then create `.envrc`. They stay until the last container ends, and go then."""
    backend = DockerBackend(runner=runner, image=TEST_IMAGE)
    require_available(backend)
    # The other host must lock in the same place as this backend (under this test's
    # XDG_STATE_HOME, where its placeholders' locks are set up at first use).
    locks = backend.state.placeholders.locks().directory
    assert locks is not None
    env = {**os.environ, "XDG_STATE_HOME": str(locks.parents[2]), "PYTHONPATH": SRC}
    workspace = tmp_path / "ws"
    workspace.mkdir()
    first = subprocess.Popen(
        [sys.executable, "-c", _HOST_RUNNING, str(workspace), TEST_IMAGE],
        env=env,
        stdout=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (workspace / ".envrc").is_dir():
        assert time.monotonic() < deadline, "the first container never started"
        assert first.poll() is None, "the first host ended early"
        time.sleep(0.02)
    attack = "sleep 3; echo 'eval evil' > .envrc; echo envrc=$?"
    request = RunRequest(argv=["sh", "-c", attack], workspace=str(workspace))
    result = ok(await backend.run(request, policy()))
    first_out, _ = first.communicate(timeout=60)
    assert first.returncode == 0 and first_out.strip() == b"0"
    assert b"envrc=0" not in result.stdout, result
    assert not (workspace / ".envrc").is_file()
    assert os.listdir(workspace) == []  # and the last to end removed the placeholders
