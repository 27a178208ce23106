"""The CLI contract (docs/cli.md): JSON object, exit statuses, bad input without tracebacks."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import pytest

import mechasandbox
from mechasandbox.cli.main import main
from mechasandbox.runner import native
from tests.conftest import require_exec_shim

UNAVAILABLE_HERE = "seatbelt" if sys.platform.startswith("linux") else "bubblewrap"

JSON_KEYS = {
    "backend",
    "exit_code",
    "signal",
    "stdout",
    "stderr",
    "stdout_b64",
    "stderr_b64",
    "stdout_truncated",
    "stderr_truncated",
    "duration_s",
    "usage",
    "violations",
    "warnings",
    "error",
}


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    status = main(list(argv))
    out = capsys.readouterr().out
    return status, json.loads(out)


def run_json(
    capsys: pytest.CaptureFixture[str], workspace: pathlib.Path, *command: str
) -> tuple[int, dict[str, object]]:
    """`run --backend process --best-effort --json` in `workspace`."""
    return cli(
        capsys,
        "run",
        "--backend",
        "process",
        "--best-effort",
        "--json",
        "--workspace",
        str(workspace),
        "--",
        *command,
    )


def test_run_json_object(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    status, obj = run_json(capsys, tmp_path, "sh", "-c", "echo hi; exit 3")
    assert status == 3
    assert set(obj) == JSON_KEYS
    assert obj["stdout"] == "hi\n"
    assert obj["exit_code"] == 3
    assert obj["error"] is None
    assert obj["backend"] == "process"
    assert obj["warnings"]


def test_timeout_exit_124_and_no_leftovers(tmp_path: pathlib.Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechasandbox",
            "run",
            "--backend",
            "process",
            "--best-effort",
            "--json",
            "--timeout",
            "1",
            "--workspace",
            str(tmp_path),
            "--",
            "sh",
            "-c",
            "sleep 30 & sleep 30 & wait",
        ],
        capture_output=True,
        check=False,
    )
    assert time.monotonic() - started < 3.0
    assert proc.returncode == 124
    obj = json.loads(proc.stdout)
    assert obj["error"]["kind"] == "timeout"
    time.sleep(0.1)
    ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True, check=True)
    assert not [
        l for l in ps.stdout.splitlines() if l.endswith("sleep 30") and not l.startswith("Z")
    ]


def test_signal_exit_status(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    status, obj = run_json(capsys, tmp_path, "sh", "-c", "kill -KILL $$")
    assert status == 128 + 9
    assert obj["signal"] == 9
    assert obj["exit_code"] is None


def test_strict_refusal_is_125(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    status, obj = cli(
        capsys, "run", "--backend", "process", "--json", "--workspace", str(tmp_path), "--", "true"
    )
    assert status == 125
    assert obj["error"]["kind"] == "policy_unsupported"  # type: ignore[index]
    assert "filesystem-read" in obj["error"]["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("argv", "kind", "status", "mentions"),
    [
        (["--memory", "5zz"], "config_invalid", 125, "--memory"),
        (["--timeout", "-1"], "config_invalid", 125, "--timeout"),
        (["--max-processes", "0"], "config_invalid", 125, "--max-processes"),
        (["--memory", "999999g"], "config_invalid", 125, "memory"),
        (["--backend", "nosuch"], "config_invalid", 125, "nosuch"),
        (["--env", "NOEQUALS"], "config_invalid", 125, "--env"),
        (["--backend", UNAVAILABLE_HERE], "backend_unavailable", 125, UNAVAILABLE_HERE),
    ],
)
def test_bad_input(
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    argv: list[str],
    kind: str | None,
    status: int,
    mentions: str | None,
) -> None:
    code, obj = cli(capsys, "run", "--json", "--workspace", str(tmp_path), *argv, "--", "true")
    assert code == status
    error = obj["error"]
    assert isinstance(error, dict)
    if kind:
        assert error["kind"] == kind
    if mentions:
        assert mentions in error["message"]


def test_missing_workspace_and_command(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    code, obj = cli(
        capsys,
        "run",
        "--backend",
        "process",
        "--best-effort",
        "--json",
        "--workspace",
        str(tmp_path / "nope"),
        "--",
        "true",
    )
    assert code == 125
    assert obj["error"]["kind"] == "config_invalid"  # type: ignore[index]
    code, obj = run_json(capsys, tmp_path, "no-such-command-xyz")
    assert code == 127
    assert obj["error"]["kind"] == "spawn_failed"  # type: ignore[index]


def test_max_output(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    code, obj = cli(
        capsys,
        "run",
        "--backend",
        "process",
        "--best-effort",
        "--json",
        "--max-output",
        "1m",
        "--workspace",
        str(tmp_path),
        "--",
        "sh",
        "-c",
        "yes | head -c 300000000",
    )
    assert code == 0
    assert len(obj["stdout"]) == 1024 * 1024  # type: ignore[arg-type]
    assert obj["stdout_truncated"] is True


def test_no_traceback_on_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mechasandbox", "run", "--bogus"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 125
    assert "Traceback" not in proc.stderr
    assert "--bogus" in proc.stderr


def test_doctor_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [entry["name"] for entry in data["backends"]]
    assert "process" in names and "none" in names
    process = next(e for e in data["backends"] if e["name"] == "process")
    assert process["available"] is True
    assert process["enforces"]["filesystem-read"] is False
    if sys.platform.startswith("linux"):
        assert data["exec_shim"] == native.shim_path()


def test_doctor_names_the_exec_shim_or_its_absence(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the exec shim is Linux only")
    path = require_exec_shim()
    assert main(["doctor"]) == 0
    assert f"exec shim: {path}\n" in capsys.readouterr().out
    monkeypatch.setenv(native.SHIM_ENV, "off")
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exec_shim"] is None


def test_policy_prints_the_plan(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    assert (
        main(
            [
                "policy",
                "--backend",
                "process",
                "--memory",
                "1g",
                "--workspace",
                str(tmp_path),
                "--",
                "echo",
                "hi",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "RLIMIT_NOFILE" in out
    assert "# backend: process" in out


def test_project_file_may_not_widen(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    (tmp_path / ".mechasandbox.toml").write_text('[limits]\nmemory = "64g"\n')
    code, obj = run_json(capsys, tmp_path, "true")
    assert code == 125
    error = obj["error"]
    assert isinstance(error, dict)
    assert error["kind"] == "config_invalid"
    assert ".mechasandbox.toml" in error["message"]
    assert "limits.memory" in error["message"]


def test_project_file_may_narrow(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    (tmp_path / ".mechasandbox.toml").write_text('[limits]\ntimeout = "1s"\n')
    code, obj = run_json(capsys, tmp_path, "sleep", "5")
    assert code == 124
    assert obj["error"]["kind"] == "timeout"  # type: ignore[index]


def test_config_file_errors_name_file_and_field(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[network]\nmood = 'none'\n")
    code, obj = cli(
        capsys, "run", "--json", "--config", str(bad), "--workspace", str(tmp_path), "--", "true"
    )
    assert code == 125
    message = obj["error"]["message"]  # type: ignore[index]
    assert "bad.toml" in message
    assert "network.mood" in message


def test_host_processes_option_lets_landlock_run(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("landlock is Linux-only")
    code, obj = cli(
        capsys, "run", "--backend", "landlock", "--json", "--workspace", str(tmp_path), "--", "true"
    )
    if obj["error"] and obj["error"]["kind"] == "backend_unavailable":  # type: ignore[index]
        pytest.skip("landlock unavailable here")
    assert code == 125
    assert "--host-processes visible" in obj["error"]["message"]  # type: ignore[index]
    code, obj = cli(
        capsys,
        "run",
        "--backend",
        "landlock",
        "--host-processes",
        "visible",
        "--json",
        "--workspace",
        str(tmp_path),
        "--",
        "true",
    )
    assert code == 0, obj
    assert obj["backend"] == "landlock"


def test_allow_unix_socket_option(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    status = main(
        ["policy", "--workspace", str(tmp_path), "--allow-unix-socket", "rel.sock", "--", "true"]
    )
    assert status == 125
    assert "--allow-unix-socket: 'rel.sock' is relative" in capsys.readouterr().err
    if not sys.platform.startswith("linux"):
        return
    status = main(
        [
            "policy",
            "--backend",
            "bubblewrap",
            "--network",
            "full",
            "--workspace",
            str(tmp_path),
            "--allow-unix-socket",
            "/run/user/0/agent.sock",
            "--",
            "true",
        ]
    )
    shown = capsys.readouterr().out
    assert status == 0, shown
    from mechasandbox.backends.linux.bwrap_hooks import LANDLOCK_SCOPE_ABI, landlock_abi

    scoped = landlock_abi() >= LANDLOCK_SCOPE_ABI
    assert ("scope on bwrap: abstract unix sockets" in shown) is scoped, shown


def test_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mechasandbox", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        f"mechasandbox {mechasandbox.__version__}\n",
        "",
    )
