"""The pytest plugin the package ships (`mechasandbox.testing.plugin`, entry point
`pytest11`), and `mechasandbox.testing` without pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_pytest_loads_the_plugin_from_its_entry_point(request: pytest.FixtureRequest) -> None:
    (declared,) = (
        found for found in entry_points(group="pytest11") if found.name == "mechasandbox"
    )
    assert declared.value == "mechasandbox.testing.plugin", "reinstall: pip install -e '.[dev]'"
    assert request.config.pluginmanager.has_plugin("mechasandbox")


def test_fixtures_in_a_users_test_module(pytester: pytest.Pytester) -> None:
    """`fake_runner` records what a backend would run; `sandbox_policy` can be overridden;
    `sandbox_runner` and `sandbox_application` are one per session."""
    pytester.makepyfile(
        test_user=textwrap.dedent(
            """
            import pytest

            from mechasandbox import Enforcement, Policy
            from mechasandbox.testing import FakeRunner

            SEEN = []


            @pytest.fixture
            def sandbox_policy():
                return Policy(enforcement=Enforcement.BEST_EFFORT)


            def test_fake_runner(fake_runner, sandbox_application, tmp_path):
                assert isinstance(fake_runner, FakeRunner) and fake_runner.specs == []
                SEEN.append((sandbox_application, fake_runner))


            def test_one_application_a_fresh_fake(fake_runner, sandbox_application):
                assert SEEN[0][0] is sandbox_application
                assert SEEN[0][1] is not fake_runner


            def test_the_policy_is_overridable(sandbox, sandbox_policy):
                assert sandbox.policy == sandbox_policy
                assert sandbox.policy.enforcement is Enforcement.BEST_EFFORT
            """
        )
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_sandbox_runs_in_its_workspace(pytester: pytest.Pytester) -> None:
    """A run that names no `workspace=` happens in `sandbox_workspace`; best-effort, so that
    every machine has a backend for it (the strict default may skip, see test_recipes)."""
    pytester.makepyfile(
        test_user=textwrap.dedent(
            """
            import os

            import pytest

            from mechasandbox import Enforcement, Policy


            @pytest.fixture
            def sandbox_policy():
                return Policy(enforcement=Enforcement.BEST_EFFORT)


            def test_run(sandbox, sandbox_workspace):
                assert sandbox.workspace == str(sandbox_workspace)
                assert os.listdir(sandbox_workspace) == []
                finished = sandbox.run_sync(["sh", "-c", "echo made > made.txt"]).unwrap()
                assert finished.exit_code == 0
                assert (sandbox_workspace / "made.txt").read_text() == "made\\n"
            """
        )
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_contract_suite_by_subclassing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_contract=textwrap.dedent(
            """
            import pytest

            from mechasandbox.backends.process import ProcessBackend
            from mechasandbox.testing import BackendContract


            class TestProcess(BackendContract):
                @pytest.fixture
                def backend(self, sandbox_runner):
                    return ProcessBackend(runner=sandbox_runner)
            """
        )
    )
    chosen = "echo_and_exit_code or command_not_found or timeout_kills_the_whole_tree"
    pytester.runpytest("-p", "no:cacheprovider", "-k", chosen).assert_outcomes(passed=3)


PYTEST_MISSING = """
import sys

sys.modules["pytest"] = None  # as if it were not installed
sys.modules["_pytest"] = None
from mechasandbox.testing import FakeRunner, ScriptedBackend

print(FakeRunner().specs, ScriptedBackend().name)
try:
    from mechasandbox.testing import BackendContract
except ImportError as error:
    print(error)
"""


def test_the_fakes_need_no_pytest_and_the_contract_names_the_extra() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", PYTEST_MISSING],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        check=True,
    )
    fakes, missing = completed.stdout.decode().splitlines()
    assert fakes == "[] scripted"
    assert "needs pytest" in missing
    assert "pip install 'mechasandbox[testing]'" in missing
