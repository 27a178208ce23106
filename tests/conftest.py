"""Shared fixtures: a runner per test session, and backends that skip with a reason when
missing on a laptop but fail in CI, where MECHASANDBOX_REQUIRE_BACKENDS names them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from returns.result import Failure

from mechasandbox.backends.base import Backend
from mechasandbox.runner import native
from mechasandbox.runner.client import SpawnHelperClient
from mechasandbox.runner.runner import HelperProcessRunner

# host_secrets: a test that failed while the host replaced a masked /etc secret runs again.
pytest_plugins = ("pytester", "tests.host_secrets")


def _named_backends(variable: str) -> frozenset[str]:
    return frozenset(os.environ.get(variable, "").replace(",", " ").split())


def required_backends() -> frozenset[str]:
    return _named_backends("MECHASANDBOX_REQUIRE_BACKENDS")


def skipped_backends() -> frozenset[str]:
    """Backends a run leaves to another (MECHASANDBOX_SKIP_BACKENDS): CI's unprivileged run
    leaves docker to the root run (access to its socket is root's own) and podman too
    (rootless, it has no memory/pids cgroup without delegation and refuses strict runs)."""
    return _named_backends("MECHASANDBOX_SKIP_BACKENDS")


_PROVEN: set[str] = set()


def skip_if_left_to_another_run(name: str) -> None:
    """For tests of a backend that make their own instances instead of `require_available`."""
    if name in skipped_backends():
        if name in required_backends():
            pytest.fail(f"backend {name!r} is both required and skipped")
        pytest.skip(f"backend {name!r} is not tested in this run (MECHASANDBOX_SKIP_BACKENDS)")


def require_available(backend: Backend) -> None:
    """Skip (or fail, when CI requires this backend) unless `backend` probes available here."""
    skip_if_left_to_another_run(backend.name)
    probed = backend.probe()
    if not isinstance(probed, Failure):
        _PROVEN.add(backend.name)
    if isinstance(probed, Failure):
        reason = probed.failure().message
        if backend.name in required_backends():
            pytest.fail(f"required backend {backend.name!r} unavailable: {reason}")
        pytest.skip(f"backend {backend.name!r} unavailable: {reason}")


def require_exec_shim() -> str:
    """The exec shim's path; skip when it is not built here, fail where it must be (CI sets
    MECHASANDBOX_REQUIRE_SHIM=1: tests of the shim must not pass by skipping)."""
    path = native.shim_path()
    if path is None:
        reason = f"the exec shim is not built ({native.DEFAULT_SHIM}; `make shim`)"
        if os.environ.get("MECHASANDBOX_REQUIRE_SHIM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def require_session_agent() -> str:
    """The session agent's path (as `require_exec_shim`: CI requires it with the shim)."""
    from mechasandbox.runner import session_protocol

    path = session_protocol.agent_path()
    if path is None or not session_protocol.agent_speaks(path):
        reason = f"the session agent is not built ({session_protocol.DEFAULT_AGENT}; `make shim`)"
        if os.environ.get("MECHASANDBOX_REQUIRE_SHIM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(autouse=True)
def _isolated_user_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A developer's own ~/.config/mechasandbox (and the probes remembered in ~/.cache) must
    not change what the tests see, nor the tests leave state in theirs."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture(scope="session")
def runner() -> Iterator[HelperProcessRunner]:
    process_runner = HelperProcessRunner()
    yield process_runner
    process_runner.close()


@pytest.fixture(scope="session")
def forked_runner() -> Iterator[HelperProcessRunner]:
    """A runner whose warm children are Python processes forked by the helper (the way
    without the exec shim), for the tests that must hold on both ways."""
    process_runner = HelperProcessRunner(SpawnHelperClient(exec_shim=False))
    yield process_runner
    process_runner.close()


@pytest.fixture(params=["shim", "forked"])
def either_runner(
    request: pytest.FixtureRequest,
    runner: HelperProcessRunner,
    forked_runner: HelperProcessRunner,
) -> HelperProcessRunner:
    """The session's runner with its warm children started from the exec shim, then the
    forked one: a test using this holds on both ways a child can be set up."""
    if request.param == "shim":
        require_exec_shim()
        return runner
    return forked_runner


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A required backend whose tests never ran (deselected, renamed, collected nowhere)
    fails the run too: CI must not go green without having exercised it. A run of chosen
    files is held to it too where MECHASANDBOX_REQUIRE_EXERCISED=1 (`make test-security`)."""
    if exitstatus != 0 or session.config.option.collectonly:
        return
    deliberate = os.environ.get("MECHASANDBOX_REQUIRE_EXERCISED") == "1"
    if session.config.invocation_params.args and not deliberate:
        return  # a subset (paths, -k, -m): only the full run, or a named suite, is held to it
    sandbox_backends = required_backends() - {"none", "process"}
    unproven = sorted(sandbox_backends - _PROVEN)
    if unproven:
        print(f"\nrequired backends never exercised: {', '.join(unproven)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
