"""The pytest plugin of mechasandbox: fixtures for testing code that runs commands through
it, and what the backend contract suite needs.

Installed with the `testing` extra (`pip install 'mechasandbox[testing]'`) and loaded by
pytest through its entry point (`pytest11`, name `mechasandbox`); nothing to import.

- `sandbox`: a `Sandbox` on the strongest backend of this machine that enforces
  `sandbox_policy` (the `auto` choice), for the test to run real commands in; a run that
  names no `workspace=` happens in `sandbox_workspace`. Skipped, with the reason, where no
  backend here enforces the policy.
- `sandbox_workspace`: that workspace, an empty directory of the test's own.
- `sandbox_policy`: the policy of `sandbox`; `Policy()` (strict, the library's default).
  Override it (in a conftest, a module or a class) to test under your application's policy.
- `sandbox_application`: the session's `Application` the sandboxes come from, configured
  with `backend = "auto"`, on `sandbox_runner`. Override it to configure another backend.
- `sandbox_runner`: the session's process runner (its spawn helper is stopped at the end),
  for the `backend` fixture of a `BackendContract` subclass.
- `fake_runner`: a `FakeRunner`, to override an application's runner with
  (`app.core.runner.override(fake_runner)`): every spec a backend would run is recorded in
  `fake_runner.specs`, and nothing runs.

Imports are made by the fixtures, so that loading the plugin costs pytest's start nothing.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from returns.result import Failure

from mechasandbox.testing.fakes import FakeRunner

if TYPE_CHECKING:
    from mechasandbox.containers import Application
    from mechasandbox.domain.policy import Policy
    from mechasandbox.runner.runner import HelperProcessRunner
    from mechasandbox.sandbox import Sandbox

# What makes `sandbox` skip rather than fail: nothing here can run the policy.
_NOT_HERE = frozenset({"backend_unavailable", "policy_unsupported"})


@pytest.fixture(scope="session")
def sandbox_runner() -> Iterator[HelperProcessRunner]:
    from mechasandbox.runner.runner import HelperProcessRunner

    runner = HelperProcessRunner()
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="session")
def sandbox_application(sandbox_runner: HelperProcessRunner) -> Iterator[Application]:
    from mechasandbox.containers import Application

    app = Application()
    app.config.from_dict({"backend": "auto"})
    app.core.runner.override(sandbox_runner)
    try:
        yield app
    finally:
        app.shutdown_resources()


@pytest.fixture
def sandbox_policy() -> Policy:
    from mechasandbox.domain.policy import Policy

    return Policy()


@pytest.fixture
def sandbox_workspace(tmp_path: pathlib.Path) -> pathlib.Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    return workspace


@pytest.fixture
def sandbox(
    sandbox_application: Application,
    sandbox_policy: Policy,
    sandbox_workspace: pathlib.Path,
) -> Sandbox:
    from mechasandbox.sandbox import Sandbox

    chosen = Sandbox(
        backend=sandbox_application.backends.selected(),
        policy=sandbox_policy,
        workspace=str(sandbox_workspace),
    )
    planned = chosen.plan(["true"])
    if isinstance(planned, Failure):
        error = planned.failure()
        if error.kind in _NOT_HERE:
            pytest.skip(f"no sandbox here enforces the policy: {error.message}")
        pytest.fail(f"the sandbox cannot run here: {error.message}")
    return chosen


@pytest.fixture
def fake_runner() -> FakeRunner:
    return FakeRunner()
