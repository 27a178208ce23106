"""Bad input through the library (`Application`, `Sandbox`): always a `Failure(ConfigInvalid)`
naming what is wrong, as a configuration file would be told; never an exception, never a
backend's confused failure. Runs go to the backend `auto` picks here (a real sandbox)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from returns.pipeline import is_successful
from returns.result import Failure, Result
from returns.unsafe import unsafe_perform_io

from mechasandbox.config import load_policy
from mechasandbox.containers import Application
from mechasandbox.domain.errors import ConfigInvalid, SandboxError
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import EnvironmentPolicy, FilesystemPolicy, NetworkPolicy, Policy
from mechasandbox.domain.result import RunResult
from mechasandbox.sandbox import Sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    app = Application.from_config(workspace=str(workspace), user_file=None).unwrap()
    try:
        yield app.services.sandbox()
    finally:
        app.shutdown_resources()


def refused(result: Result[object, SandboxError]) -> ConfigInvalid:
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, ConfigInvalid), error
    return error


def finished(result: Result[RunResult, SandboxError]) -> RunResult:
    if isinstance(result, Failure) and result.failure().kind == "backend_unavailable":
        pytest.skip(f"no sandbox backend here: {result.failure().message}")
    assert is_successful(result), result
    return result.unwrap()


def test_a_nul_byte_in_argv(sandbox: Sandbox) -> None:
    error = refused(sandbox.run_sync(["echo", "a\0b"]))
    assert error.field == "argv"
    assert "argument 1 holds a NUL byte" in error.problem


def test_a_string_for_argv_is_no_command_line(sandbox: Sandbox) -> None:
    error = refused(sandbox.run_sync("ls -la"))
    assert error.field == "argv"
    assert "must be a sequence of strings, got str 'ls -la'" in error.problem
    assert error.field == refused(sandbox.plan("ls -la")).field


@pytest.mark.parametrize("workspace", ["", "/tmp\0x"])
def test_a_bad_workspace_of_a_run(sandbox: Sandbox, workspace: str) -> None:
    assert refused(sandbox.run_sync(["true"], workspace=workspace)).field == "workspace"
    assert refused(sandbox.plan(["true"], workspace=workspace)).field == "workspace"
    composed = anyio.run(sandbox.run(["true"], workspace=workspace).awaitable)
    assert not is_successful(composed)
    error = unsafe_perform_io(composed.failure())
    assert isinstance(error, ConfigInvalid)
    assert error.field == "workspace"


@pytest.mark.parametrize("workspace", ["", "/tmp\0x"])
def test_a_bad_workspace_of_the_application(workspace: str) -> None:
    built = Application.from_config(workspace=workspace, user_file=None)
    error = refused(built)
    assert error.source == "workspace"
    assert f"workspace {workspace!r} is not an existing directory" in error.problem


def test_environment_set_takes_a_mapping(sandbox: Sandbox) -> None:
    """`set={"CI": "1"}` is how Python spells a table (and `set = { CI = "1" }` a file):
    accepted, and kept as pairs, so the policy stays a hashable value."""
    environment = EnvironmentPolicy(set={"CI": "1"})
    assert environment.set == (("CI", "1"),)
    policy = attrs.evolve(sandbox.policy, environment=environment)
    run = finished(sandbox.run_sync(["sh", "-c", 'echo "$CI"'], policy=policy))
    assert run.stdout == b"1\n"


def _file_says(tmp_path: Path, toml: str) -> ConfigInvalid:
    path = tmp_path / "f.toml"
    path.write_text(toml)
    return refused(load_policy(workspace=str(tmp_path), user_file=None, extra_files=[str(path)]))


@pytest.mark.parametrize(
    ("environment", "toml"),
    [
        (EnvironmentPolicy(set={"1X": "y"}), '[environment]\nset = { 1X = "y" }\n'),
        (EnvironmentPolicy(set={"A": "x\0y"}), '[environment]\nset = { A = "x\\u0000y" }\n'),
        (EnvironmentPolicy(set={"A": 1}), "[environment]\nset = { A = 1 }\n"),
        (EnvironmentPolicy(pass_through=("",)), '[environment]\npass = [""]\n'),
        (EnvironmentPolicy(allow=("A-B",)), '[environment]\nallow = ["A-B"]\n'),
    ],
)
def test_a_bad_variable_is_said_as_a_file_would_be_told(
    sandbox: Sandbox, tmp_path: Path, environment: EnvironmentPolicy, toml: str
) -> None:
    policy = attrs.evolve(sandbox.policy, environment=environment)
    error = refused(sandbox.run_sync(["true"], policy=policy))
    told = _file_says(tmp_path, toml)
    assert (error.field, error.problem) == (told.field, told.problem)
    assert error.source == "policy"


def test_bad_pairs_in_environment_set(sandbox: Sandbox) -> None:
    policy = attrs.evolve(sandbox.policy, environment=EnvironmentPolicy(set=[("A",), "B=c"]))
    error = refused(sandbox.run_sync(["true"], policy=policy))
    assert error.field == "environment.set"
    assert "entry 0: expected a (name, value) pair, got ('A',)" in error.problem
    assert "entry 1: expected a (name, value) pair, got 'B=c'" in error.problem


@pytest.mark.parametrize("key", ["readable", "writable", "deny_read", "deny_write"])
def test_a_relative_path_in_a_policy(sandbox: Sandbox, key: str) -> None:
    """Relative to what? Landlock would take it literally (the helper's directory), bwrap
    another way: refused, as the files refuse it."""
    changes: dict[str, Any] = {key: ("data",)}
    policy = attrs.evolve(sandbox.policy, filesystem=FilesystemPolicy(**changes))
    error = refused(sandbox.run_sync(["true"], policy=policy))
    assert error.field == f"filesystem.{key}"
    assert "'data' is relative" in error.problem


def test_every_problem_of_a_policy_at_once(sandbox: Sandbox) -> None:
    policy = Policy(
        filesystem=FilesystemPolicy(readable=("rel",)),
        network=NetworkPolicy(allow=("a b",)),
        limits=Limits(max_open_files=2),
    )
    error = refused(sandbox.run_sync(["true"], policy=policy))
    fields = [error.field, *(more.field for more in error.more)]
    assert fields == ["filesystem.readable", "network.allow", "limits.max_open_files"]


def test_too_few_open_files_to_start_anything(sandbox: Sandbox, tmp_path: Path) -> None:
    policy = attrs.evolve(sandbox.policy, limits=Limits(max_open_files=2))
    error = refused(sandbox.run_sync(["true"], policy=policy))
    assert error.field == "limits.max_open_files"
    assert error.problem.startswith("2 is below the minimum 16: too few to start a command")
    assert error.problem == _file_says(tmp_path, "[limits]\nmax_open_files = 2\n").problem
    at_minimum = attrs.evolve(sandbox.policy, limits=Limits(max_open_files=16))
    assert finished(sandbox.run_sync(["true"], policy=at_minimum)).exit_code == 0
