"""What runs bare also runs sandboxed: long command lines on each host-process backend,
and a `config_invalid` naming the kernel's limit where even a bare exec would fail."""

from __future__ import annotations

import pathlib
import subprocess

import anyio
import pytest
from returns.result import Failure, Result

from mechasandbox.backends.base import Backend
from mechasandbox.backends.command_line import MAX_ARG_STRLEN, argument_space, exec_problem
from mechasandbox.domain import Enforcement, Policy, RunRequest
from mechasandbox.domain.errors import ConfigInvalid, SandboxError
from mechasandbox.domain.result import RunResult
from tests.backends.host_backends import backend

__all__ = ["backend"]  # the fixture: each test runs on process, landlock and bubblewrap

BEST_EFFORT = Policy(enforcement=Enforcement.BEST_EFFORT)
CHUNK = 120 * 1024  # under MAX_ARG_STRLEN


def _run(
    backend: Backend, argv: list[str], workspace: pathlib.Path
) -> Result[RunResult, SandboxError]:
    request = RunRequest(argv=argv, workspace=str(workspace))
    return anyio.run(backend.run, request, BEST_EFFORT)


def test_ten_thousand_arguments_run(backend: Backend, tmp_path: pathlib.Path) -> None:
    numbers = [str(n) for n in range(10_000)]
    result = _run(backend, ["sh", "-c", 'echo "$#" "$1" "${10000}"', "sh", *numbers], tmp_path)
    assert result.unwrap().stdout == b"10000 0 9999\n"


def test_arguments_near_the_kernels_limit_run(backend: Backend, tmp_path: pathlib.Path) -> None:
    count = argument_space() * 9 // 10 // CHUNK
    quote = 'it\'s a "quoted" $HOME `x` \\ \xe9 ' * 4  # what the shell must pass untouched
    argv = ["sh", "-c", 'echo "$#"; printf %s "$1"', "sh", quote, *(["a" * CHUNK] * count)]
    result = _run(backend, argv, tmp_path).unwrap()
    assert result.stdout == f"{count + 1}\n{quote}".encode()


def test_an_argument_over_max_arg_strlen_is_config_invalid(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    result = _run(backend, ["echo", "a" * (1024 * 1024)], tmp_path)
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, ConfigInvalid), error
    assert "MAX_ARG_STRLEN" in error.message


def test_a_command_line_over_arg_max_is_config_invalid(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    count = argument_space() * 3 // 2 // CHUNK
    result = _run(backend, ["echo", *(["a" * CHUNK] * count)], tmp_path)
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, ConfigInvalid), error
    assert "ARG_MAX" in error.message


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_the_check_agrees_with_the_kernel_at_the_boundary(extra: int) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    base = ["/bin/true", *(["a" * 100_000] * (argument_space() // 100_001))]
    used = sum(len(a) + 1 for a in base) + len("/bin/true") + 1 + len("PATH=/usr/bin:/bin") + 1
    room = argument_space() - used - 8 * (len(base) + 1 + 1)
    last = room - 1 + extra  # with its NUL, exactly the room left when extra is 0
    assert 0 < last < MAX_ARG_STRLEN
    argv = [*base, "b" * last]
    try:
        subprocess.run(argv, env=env, executable="/bin/true", check=True)
        kernel_runs = True
    except OSError:
        kernel_runs = False
    assert kernel_runs == (extra <= 0)
    assert (exec_problem(argv, env.items(), executable="/bin/true") is None) == kernel_runs
