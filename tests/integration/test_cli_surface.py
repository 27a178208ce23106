"""The CLI explains itself (docs/cli.md): `policy` prints the whole effective policy and its
sources, with or without a command; every option has a help text; `warnings` are gaps and
`notes` information (`--verbose`); `doctor` says what it checked and what is not claimed."""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys

import pytest

from mechasandbox.cli.main import main
from mechasandbox.cli.verbs import build_parser
from mechasandbox.config.loading import DEFAULTS_FILE
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

TEST_IMAGE = "mechasandbox-test:busybox"
SECRET_VALUE = "s3cret-token-value"


def _policy(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["policy", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# `policy` ---------------------------------------------------------------------------------


@pytest.fixture
def layered(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A workspace whose project file narrows the timeout and tries a setting it may not
    make, and a `--config` file that sets the memory limit."""
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / ".mechasandbox.toml").write_text(
        '[limits]\ntimeout = "30s"\n[backend]\npool_size = 5\n'
    )
    extra = tmp_path / "extra.toml"
    extra.write_text('[limits]\nmemory = "1536m"\n')
    return workspace, extra


@pytest.mark.backend("process")
def test_policy_json_is_the_whole_effective_policy_and_its_sources(
    capsys: pytest.CaptureFixture[str], layered: tuple[pathlib.Path, pathlib.Path]
) -> None:
    workspace, extra = layered
    status, out, _err = _policy(
        capsys,
        "--backend",
        "process",
        "--json",
        "--workspace",
        str(workspace),
        "--config",
        str(extra),
        "--network",
        "allowlist",
        "--allow-domain",
        "pypi.org",
        "--allow-unix-socket",
        "/run/agent.sock",
        "--cpu-time",
        "90s",
        "--env",
        f"API_TOKEN={SECRET_VALUE}",
        "--pass-env",
        "HOME",
        "--host-processes",
        "visible",
        "--",
        "echo",
        "hi",
    )
    assert status == 0, out
    assert SECRET_VALUE not in out
    shown = json.loads(out)
    # What `policy --json` printed before is still there.
    assert {"backend", "sections", "warnings"} <= set(shown)
    assert shown["backend"] == "process"
    assert "rlimits" in shown["sections"]
    assert shown["command"] == ["echo", "hi"]
    assert shown["stand_in"] is False
    policy = shown["policy"]
    assert policy["workspace"] == str(workspace)
    assert policy["enforcement"] == "strict"
    assert policy["host_processes"] == "visible"
    assert ".git/hooks" in policy["filesystem"]["protected"]
    assert "~/.ssh" in policy["filesystem"]["deny_read"]
    assert policy["network"] == {
        "mode": "allowlist",
        "allow": ["pypi.org"],
        "deny": [],
        "allow_unix_sockets": ["/run/agent.sock"],
    }
    # Limits as a person writes them (and as a file takes them back).
    assert policy["limits"] == {
        "timeout": "30",
        "cpu_time": "90",
        "memory": "1536m",
        "max_processes": 512,
        "max_open_files": 1024,
        "max_file_size": "1g",
        "max_output": "4m",
    }
    environment = policy["environment"]
    assert environment["set"] == ["API_TOKEN"]
    assert "not shown" in environment["set_values"]
    assert environment["pass"] == ["HOME"]
    assert "PATH" in environment["allow"]
    sources = shown["sources"]
    assert sources["files"] == [DEFAULTS_FILE, str(workspace / ".mechasandbox.toml"), str(extra)]
    assert sources["command_line"] is True
    assert any("pool_size ignored" in warning for warning in sources["warnings"])
    # The process backend cannot give this strict policy: the plan says a run is refused.
    assert any("a run would be refused" in warning for warning in shown["warnings"])


@pytest.mark.backend("bubblewrap")
def test_policy_without_a_command_plans_a_stand_in_and_prints_the_policy(
    capsys: pytest.CaptureFixture[str], layered: tuple[pathlib.Path, pathlib.Path]
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("bubblewrap is Linux-only")
    workspace, extra = layered
    status, out, _err = _policy(
        capsys,
        "--backend",
        "bubblewrap",
        "--workspace",
        str(workspace),
        "--config",
        str(extra),
        "--env",
        f"API_TOKEN={SECRET_VALUE}",
    )
    if "is unavailable" in out:
        pytest.skip("bubblewrap is unavailable here")
    assert status == 0, out
    assert SECRET_VALUE not in out
    lines = out.splitlines()
    assert lines[0] == "# plan for a stand-in command: true (no command given)"
    assert lines[1] == "# backend: bubblewrap"
    assert "## bwrap" in lines
    assert lines[lines.index("## bwrap") + 1].endswith(" -- true")
    for expected in (
        "# effective policy",
        "timeout: 30",
        "memory: 1536m",
        "max_file_size: 1g",
        "mode: none",
        "## enforcement",
        "strict",
        "## host_processes",
        "hidden",
        "set: API_TOKEN (names only: the values are not shown, they may hold tokens)",
        "# sources (lowest layer first)",
    ):
        assert expected in lines, expected
    sources = lines[lines.index("# sources (lowest layer first)") + 1 :]
    assert sources[:4] == [
        DEFAULTS_FILE,
        str(workspace / ".mechasandbox.toml"),
        str(extra),
        "command-line options",
    ]
    assert any(line.startswith("# ignored: ") and "pool_size" in line for line in sources)


def test_policy_of_seatbelt_without_a_command_prints_its_profile(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """The profile is compiled anywhere; on another platform the plan says a run would
    fail, and why."""
    status, out, _err = _policy(capsys, "--backend", "seatbelt", "--workspace", str(tmp_path))
    assert status == 0, out
    assert "## sbpl\n(version 1)\n" in out
    assert "# plan for a stand-in command: true (no command given)" in out
    if sys.platform != "darwin":
        assert "# warning: a run would fail: " in out and "needs macOS" in out
    assert "# note: sandbox-exec is deprecated by Apple" in out  # information, no gap
    assert "# warning: sandbox-exec is deprecated" not in out


def test_run_without_a_command_is_still_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    assert main(["run", "--workspace", str(tmp_path)]) == 125
    assert "no command given" in capsys.readouterr().err


# Help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["policy", "--help"], ["doctor", "--help"]]
)
def test_help_prints_usage_and_exits_0(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mechasandbox", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: mechasandbox")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("verb", ["run", "policy", "doctor"])
def test_every_option_has_a_help_text(verb: str) -> None:
    parser = build_parser(verb)
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = verbs.choices[verb]._actions
    assert len(options) > 1
    assert [a.dest for a in options if not a.help] == []


# Warnings and notes -------------------------------------------------------------------------


def _docker_available(runner: HelperProcessRunner) -> None:
    from mechasandbox.backends.oci import DockerBackend

    require_available(DockerBackend(runner=runner, image=TEST_IMAGE))


@pytest.mark.backend("docker")
def test_docker_facts_are_notes_not_warnings(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, runner: HelperProcessRunner
) -> None:
    _docker_available(runner)
    argv = ["run", "--backend", "docker", "--image", TEST_IMAGE, "--workspace", str(tmp_path)]
    assert main([*argv, "--json", "--", "true"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["warnings"] == [], shown
    assert any(note.startswith("docker ") and TEST_IMAGE in note for note in shown["notes"])
    # On stderr only when asked.
    assert main([*argv, "--", "true"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main([*argv, "--verbose", "--", "true"]) == 0
    err = capsys.readouterr().err
    assert "mechasandbox: note: docker " in err and TEST_IMAGE in err
    assert "mechasandbox: warning:" not in err


@pytest.mark.backend("docker")
@pytest.mark.slow
def test_the_warm_pool_is_a_note(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, runner: HelperProcessRunner
) -> None:
    _docker_available(runner)
    config = tmp_path / "pool.toml"
    config.write_text("[backend]\npool_size = 1\n")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    status = main(
        [
            "run",
            "--backend",
            "docker",
            "--image",
            TEST_IMAGE,
            "--config",
            str(config),
            "--workspace",
            str(workspace),
            "--json",
            "--",
            "true",
        ]
    )
    shown = json.loads(capsys.readouterr().out)
    assert status == 0, shown
    assert not [w for w in shown["warnings"] if "warm pool" in w], shown
    assert any(note.startswith("warm pool: 1 container(s)") for note in shown["notes"]), shown


@pytest.mark.backend("process")
def test_gaps_stay_warnings(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    """What `process` does not enforce is a warning of every best-effort run."""
    argv = ["run", "--backend", "process", "--best-effort", "--workspace", str(tmp_path)]
    assert main([*argv, "--json", "--", "true"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["notes"] == []
    assert any("not enforced by process: filesystem-read" in w for w in shown["warnings"])


# doctor -------------------------------------------------------------------------------------


def test_doctor_says_what_none_does_without_claiming_a_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "none: backend 'none': commands run UNCONFINED" in out
    assert "ran UNCONFINED" not in out
    assert main(["doctor", "--json"]) == 0
    backends = json.loads(capsys.readouterr().out)["backends"]
    assert all("notes" in entry for entry in backends if entry["available"])


@pytest.mark.slow
def test_doctor_verify_reports_unclaimed_protections_as_not_claimed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every available backend is attacked (`process` among them, everywhere): a FAILED is
    a claimed protection that did not hold, which `process` has none of here."""
    assert main(["doctor", "--verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    process = [line for line in lines if line.startswith("verify process: ")]
    assert any(": not claimed (pid-isolation: " in line for line in process), process
    assert any(line.endswith("read a host API key from the environment: held") for line in process)
    assert not any(line.endswith(": FAILED") for line in process), process
    tally = process[-1]
    assert re.fullmatch(r"verify process: \d+ held, 0 FAILED, \d+ not claimed", tally), tally
