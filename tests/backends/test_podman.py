"""The podman backend against real podman (see oci_contract)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from returns.result import Success

from mechasandbox.backends.oci import OciBackend, PodmanBackend
from mechasandbox.domain import MIB, MemoryLimit, RunRequest
from tests.backends.oci_contract import OciContract, policy

pytestmark = [pytest.mark.backend("podman"), pytest.mark.anyio]


class TestPodman(OciContract):
    backend_class = PodmanBackend
    cli = "podman"

    async def test_memory_bomb_is_memory_limit(self, backend: OciBackend, tmp_path: Path) -> None:
        """Podman 4.3 on cgroup v1 reports OOMKilled=false when the kernel kills a child
        of the container's init: the bomb is stopped (SIGKILL) but not named as such."""
        request = RunRequest(
            argv=["sh", "-c", "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived"],
            workspace=str(tmp_path),
        )
        result = await backend.run(request, policy(memory_bytes=48 * MIB))
        if isinstance(result, Success):
            assert result.unwrap().signal == signal.SIGKILL
            assert b"survived" not in result.unwrap().stdout
        else:
            assert isinstance(result.failure(), MemoryLimit)
        assert self.leftovers() == []
