"""One validation for every way in (`config.validation`): a command-line option, the same
value in a configuration file, and `PolicyChanges` from a library caller get the same
message, each named where it came from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from returns.result import Failure, Result

from mechasandbox.cli.options import policy_changes
from mechasandbox.cli.verbs import build_parser
from mechasandbox.config import load_policy
from mechasandbox.config.changes import PolicyChanges
from mechasandbox.containers import Application
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.limits import GIB


def refused(result: Result[object, ConfigInvalid]) -> ConfigInvalid:
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, ConfigInvalid)
    return error


def by_option(workspace: Path, argv: list[str]) -> ConfigInvalid:
    args = build_parser("run").parse_args(["run", *argv, "--", "true"])
    return refused(
        policy_changes(args).bind(
            lambda changes: Application.from_config(
                workspace=str(workspace), user_file=None, changes=changes
            )
        )
    )


def by_file(workspace: Path, toml: str) -> ConfigInvalid:
    path = workspace / "f.toml"
    path.write_text(toml)
    return refused(load_policy(workspace=str(workspace), user_file=None, extra_files=[str(path)]))


def _what(problem: str) -> str:
    """A problem without the list position a file's entry is told with (`entry 0: `)."""
    return re.sub(r"^entry \d+: ", "", problem)


@pytest.mark.parametrize(
    ("argv", "toml", "field"),
    [
        (["--env", "1X=y"], '[environment]\nset = { 1X = "y" }\n', "environment.set"),
        (["--pass-env", ""], '[environment]\npass = [""]\n', "environment.pass"),
        (["--pass-env", "A-B"], '[environment]\npass = ["A-B"]\n', "environment.pass"),
        (["--allow-read", "data"], '[filesystem]\nreadable = ["data"]\n', "filesystem.readable"),
        (["--allow-write", ""], '[filesystem]\nwritable = [""]\n', "filesystem.writable"),
        (["--deny-read", "x"], '[filesystem]\ndeny_read = ["x"]\n', "filesystem.deny_read"),
        (["--deny-write", ""], '[filesystem]\ndeny_write = [""]\n', "filesystem.deny_write"),
        (["--allow-domain", "a b"], '[network]\nallow = ["a b"]\n', "network.allow"),
        (["--deny-domain", ""], '[network]\ndeny = [""]\n', "network.deny"),
        (
            ["--allow-unix-socket", "rel.sock"],
            '[network]\nallow_unix_sockets = ["rel.sock"]\n',
            "network.allow_unix_sockets",
        ),
        (["--image", ""], '[backend]\nimage = ""\n', "backend.image"),
        (["--max-open-files", "2"], "[limits]\nmax_open_files = 2\n", "limits.max_open_files"),
        (["--max-processes", "many"], '[limits]\nmax_processes = "many"\n', "limits.max_processes"),
        (["--max-processes", "0"], "[limits]\nmax_processes = 0\n", "limits.max_processes"),
        (["--memory", "5t"], '[limits]\nmemory = "5t"\n', "limits.memory"),
        (["--memory", "5zz"], '[limits]\nmemory = "5zz"\n', "limits.memory"),
        (["--timeout", "forever"], '[limits]\ntimeout = "forever"\n', "limits.timeout"),
        (["--cpu-time", "30000h"], '[limits]\ncpu_time = "30000h"\n', "limits.cpu_time"),
        (
            ["--max-output", "unlimited"],
            '[limits]\nmax_output = "unlimited"\n',
            "limits.max_output",
        ),
    ],
)
def test_an_option_and_a_file_get_the_same_message(
    tmp_path: Path, argv: list[str], toml: str, field: str
) -> None:
    option = by_option(tmp_path, argv)
    file = by_file(tmp_path, toml)
    assert (option.source, option.field) == (argv[0], None)
    assert (file.source, file.field) == (str(tmp_path / "f.toml"), field)
    assert option.problem == _what(file.problem)


def test_the_problem_quotes_what_was_written(tmp_path: Path) -> None:
    assert by_option(tmp_path, ["--memory", "5120G"]).message == (
        "--memory: 5120G is above the maximum 1t"
    )
    assert by_file(tmp_path, '[limits]\nmemory = "5120G"\n').problem == (
        "5120G is above the maximum 1t"
    )
    minimum = by_option(tmp_path, ["--max-open-files", "15"]).message
    assert minimum.startswith("--max-open-files: 15 is below the minimum 16: too few to start")


def test_changes_from_a_library_caller_are_checked_the_same_way(tmp_path: Path) -> None:
    changes = PolicyChanges(
        allow_read=("rel",),
        set_env=(("1X", "y"),),
        pass_env=("",),
        limits=(("memory_bytes", 5 * 1024 * GIB), ("max_open_files", 8)),
        image="",
    )
    error = refused(
        Application.from_config(workspace=str(tmp_path), user_file=None, changes=changes)
    )
    told = [(error.source, error.problem)] + [(more.source, more.problem) for more in error.more]
    assert told == [
        ("--allow-read", "'rel' is relative; write an absolute path or one starting with ~"),
        ("--pass-env", "expected a non-empty variable name without NUL bytes, got ''"),
        ("--env", "'1X' is not a valid environment variable name"),
        ("--image", "expected a non-empty image name without NUL bytes, got ''"),
        ("--memory", "5t is above the maximum 1t"),
        (
            "--max-open-files",
            "8 is below the minimum 16: too few to start a command: the launcher (bwrap, "
            "the container runtime) runs under this limit too",
        ),
    ]
    assert "memory_bytes" not in error.message


def test_unlimited_is_one_word_everywhere(tmp_path: Path) -> None:
    args = build_parser("run").parse_args(["run", "--timeout", "unlimited", "--", "true"])
    changes = policy_changes(args).unwrap()
    assert changes.limits == (("timeout_s", None),)
    app = Application.from_config(workspace=str(tmp_path), user_file=None, changes=changes)
    assert app.unwrap().services.policy().limits.timeout_s is None


def test_an_unknown_key_says_which_was_meant(tmp_path: Path) -> None:
    error = by_file(tmp_path, '[network]\nmood = "none"\n')
    assert error.problem == (
        "unknown key; expected one of: mode, allow, deny, allow_unix_sockets (did you mean 'mode'?)"
    )
    far = by_file(tmp_path, "[network]\nzzz = 1\n")
    assert "did you mean" not in far.problem


def test_the_session_clients_limit_options_are_the_rules_own() -> None:
    """`session run` names the limit options without importing the rules (its start-up):
    the same options, in the same order."""
    from mechasandbox.cli.parser import LIMIT_OPTIONS
    from mechasandbox.config.validation import LIMIT_RULES

    assert tuple(rule.option for rule in LIMIT_RULES) == LIMIT_OPTIONS
