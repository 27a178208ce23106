"""The three ways applications use mechasandbox through the container."""

from __future__ import annotations

import pathlib

import anyio
import attrs
from returns.future import FutureResult
from returns.pipeline import flow
from returns.pointfree import bind
from returns.result import Failure, Success
from returns.unsafe import unsafe_perform_io

from mechasandbox.backends.macos.apple_container import AppleContainerBackend
from mechasandbox.containers import Application
from mechasandbox.domain import (
    Enforcement,
    Limits,
    Policy,
    RunResult,
    SandboxError,
    SpawnFailed,
    Timeout,
)
from mechasandbox.testing import FakeRunner, ScriptedBackend


def test_wire_at_startup_and_run(tmp_path: pathlib.Path) -> None:
    app = Application()
    app.config.from_dict({"backend": "process"})
    app.core.base_policy.override(Policy(enforcement=Enforcement.BEST_EFFORT))
    try:
        sandbox = app.services.sandbox()
        result = sandbox.run_sync(["sh", "-c", "echo wired"], workspace=str(tmp_path))
        assert result.unwrap().stdout == b"wired\n"
        assert result.unwrap().backend == "process"
    finally:
        app.shutdown_resources()


def test_override_the_runner_in_tests(tmp_path: pathlib.Path) -> None:
    app = Application()
    app.config.from_dict({"backend": "process"})
    fake = FakeRunner(stdout=b"from the fake\n")
    app.core.runner.override(fake)
    app.core.base_policy.override(Policy(enforcement=Enforcement.BEST_EFFORT))
    # A command not on PATH is answered by the backend before it reaches the runner:
    missing = app.services.sandbox().run_sync(["no-such-command-xyz"], workspace=str(tmp_path))
    assert missing == Failure(
        SpawnFailed(
            command="no-such-command-xyz", reason="command not found on PATH", exit_status=127
        )
    )
    assert fake.specs == []
    result = app.services.sandbox().run_sync(["true"], workspace=str(tmp_path))
    assert result.unwrap().stdout == b"from the fake\n"
    assert fake.specs[-1].argv == ("true",)
    assert fake.specs[-1].cwd == str(tmp_path.resolve())


def test_override_the_backend_and_limits(tmp_path: pathlib.Path) -> None:
    app = Application()
    app.config.from_dict({"backend": "auto"})
    scripted = ScriptedBackend(
        results=[Success(RunResult(backend="scripted", exit_code=0, signal=None))]
    )
    app.backends.selected.override(scripted)
    app.services.limits.override(Limits(timeout_s=5.0))
    result = app.services.sandbox().run_sync(["true"], workspace=str(tmp_path))
    assert result.unwrap().backend == "scripted"
    assert scripted.requests[0][1].limits.timeout_s == 5.0


def test_compose_runs_functionally(tmp_path: pathlib.Path) -> None:
    app = Application()
    app.config.from_dict({"backend": "process"})
    app.core.base_policy.override(Policy(enforcement=Enforcement.BEST_EFFORT))
    sandbox = app.services.sandbox()

    def then_count(first: RunResult) -> FutureResult[RunResult, SandboxError]:
        counted: FutureResult[RunResult, SandboxError] = sandbox.run(
            ["wc", "-c"], workspace=str(tmp_path), stdin=first.stdout
        )
        return counted

    try:
        pipeline = flow(sandbox.run(["echo", "hello"], workspace=str(tmp_path)), bind(then_count))
        result = anyio.run(pipeline.awaitable)
        assert unsafe_perform_io(result.unwrap()).stdout.strip() == b"6"

        slow = attrs.evolve(sandbox.policy, limits=Limits(timeout_s=0.3))
        failed = anyio.run(
            sandbox.run(["sleep", "5"], workspace=str(tmp_path), policy=slow)
            .bind(then_count)
            .awaitable
        )
        assert isinstance(unsafe_perform_io(failed.failure()), Timeout)
    finally:
        app.shutdown_resources()


def test_apple_container_gets_only_the_configured_image() -> None:
    """No implicit public image: unset stays None (the backend then says it is unavailable)."""
    for config, expected in (({}, None), ({"image": "ghcr.io/me/tools:1"}, "ghcr.io/me/tools:1")):
        app = Application()
        app.config.from_dict({"backend": "apple-container", **config})
        app.core.runner.override(FakeRunner())
        try:
            backend = app.backends.named("apple-container")
            assert isinstance(backend, AppleContainerBackend)
            assert backend.image == expected
        finally:
            app.shutdown_resources()


def test_docker_pool_is_wired_and_shut_down(tmp_path: pathlib.Path) -> None:
    import os
    import subprocess
    import sys

    import pytest

    from mechasandbox.backends.oci import PooledBackend
    from mechasandbox.backends.oci.cli import owner_id
    from mechasandbox.backends.oci.compiler import LABEL_OWNER
    from tests.conftest import require_available

    if not sys.platform.startswith("linux"):
        pytest.skip("the docker tests run on Linux")
    image = os.environ.get("MECHASANDBOX_TEST_IMAGE", "mechasandbox-test:busybox")
    app = Application()
    app.config.from_dict({"backend": "docker", "image": image, "pool_size": 1})
    app.core.base_policy.override(Policy(enforcement=Enforcement.BEST_EFFORT))
    try:
        backend = app.backends.selected()
        assert isinstance(backend, PooledBackend)
        require_available(backend)
        result = app.services.sandbox().run_sync(["echo", "pooled"], workspace=str(tmp_path))
        assert result.unwrap().stdout == b"pooled\n"
    finally:
        app.shutdown_resources()
    listed = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label={LABEL_OWNER}={owner_id()}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.stdout.split() == []
