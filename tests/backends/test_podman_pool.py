"""The warm pool refuses podman's keepers and gVisor, with the reason (see
pool_settings.PODMAN_UNSUPPORTED; podman's ready sessions, for discard and reuse runs:
test_podman_pool_contract.py)."""

from __future__ import annotations

import shutil

import pytest
from returns.result import Failure

from mechasandbox.backends.oci import AfterUse, PodmanBackend, PooledBackend, PoolSettings
from mechasandbox.domain import BackendUnavailable
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.oci_contract import TEST_IMAGE


def test_pool_on_podman_with_keepers_is_unavailable_with_the_reason(
    runner: HelperProcessRunner,
) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman not installed")
    pooled = PooledBackend(
        backend=PodmanBackend(runner=runner, image=TEST_IMAGE),
        settings=PoolSettings(after_use=AfterUse.DISCARD),
    )
    pooled.pool.sessions = False  # keepers, as where the runner cannot start the agent
    probed = pooled.probe()
    assert isinstance(probed, Failure)
    assert isinstance(probed.failure(), BackendUnavailable)
    assert "conmon" in probed.failure().reason
    pooled.close()


def test_pool_under_gvisor_is_unavailable_with_the_reason(runner: HelperProcessRunner) -> None:
    """gVisor gives a command that comes in by `exec` no seccomp filter (through a pool of
    keepers it could leave a setuid-root file in the workspace), and lets a ready session's
    command write its agent's channel (`test_oci_sessions.py`). Refused before a run."""
    if shutil.which("docker") is None:
        pytest.skip("docker not installed")
    from mechasandbox.backends.oci import DockerBackend
    from mechasandbox.backends.oci.compiler import Runtime

    pooled = PooledBackend(
        backend=DockerBackend(runner=runner, image=TEST_IMAGE, runtime=Runtime.RUNSC)
    )
    assert pooled.pool.sessions  # ready sessions would not do either
    probed = pooled.probe()
    assert isinstance(probed, Failure)
    assert "gVisor" in probed.failure().reason
    pooled.close()
