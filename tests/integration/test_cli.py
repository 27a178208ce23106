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

JSON_KEYS = {  # docs/cli.md
    "backend",
    "node",
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
    "notes",
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


# --- bad input: every option's value checked as the files' are, named by the option --------
@pytest.mark.parametrize(
    ("argv", "source", "fragment"),
    [
        (["--env", "1X=y"], "--env", "'1X' is not a valid environment variable name"),
        (["--env", "=y"], "--env", "non-empty variable name"),
        (["--allow-read", ""], "--allow-read", "non-empty path"),
        (["--allow-write", ""], "--allow-write", "non-empty path"),
        (["--deny-read", ""], "--deny-read", "non-empty path"),
        (["--deny-write", ""], "--deny-write", "non-empty path"),
        (["--pass-env", ""], "--pass-env", "non-empty variable name"),
        (["--pass-env", "MY-VAR"], "--pass-env", "'MY-VAR' is not a valid"),
        (["--allow-domain", ""], "--allow-domain", "non-empty domain pattern"),
        (["--deny-domain", ""], "--deny-domain", "non-empty domain pattern"),
        (["--allow-unix-socket", ""], "--allow-unix-socket", "non-empty path"),
        (["--image", ""], "--image", "non-empty image name"),
        (["--allow-read", "data"], "--allow-read", "'data' is relative"),
        (["--allow-write", "./out"], "--allow-write", "'./out' is relative"),
        (["--deny-read", "secret"], "--deny-read", "'secret' is relative"),
        (["--deny-write", "../up"], "--deny-write", "'../up' is relative"),
        (["--max-open-files", "2"], "--max-open-files", "2 is below the minimum 16"),
        (["--max-open-files", "15"], "--max-open-files", "15 is below the minimum 16"),
        (["--memory", "5t"], "--memory", "5t is above the maximum 1t"),
        (["--memory", "5120G"], "--memory", "5120G is above the maximum 1t"),
        (["--max-file-size", "2t"], "--max-file-size", "2t is above the maximum 1t"),
        (["--timeout", "30000h"], "--timeout", "30000h is above the maximum 168h"),
        (["--max-output", "unlimited"], "--max-output", "cannot be unlimited"),
        (["--workspace", ""], "workspace", "workspace '' is not an existing directory"),
    ],
)
def test_bad_option_values_are_refused_by_name(
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    argv: list[str],
    source: str,
    fragment: str,
) -> None:
    code, obj = cli(capsys, "run", "--json", "--workspace", str(tmp_path), *argv, "--", "true")
    error = obj["error"]
    assert isinstance(error, dict), obj
    assert (code, error["kind"]) == (125, "config_invalid"), error
    assert error["message"].startswith(f"{source}: "), error
    assert fragment in error["message"], error
    assert "_bytes" not in error["message"]  # the option's name, never the field's


@pytest.mark.parametrize(
    ("argv", "command", "start"),
    [
        ([], ["echo", "a\0b"], "argv: argument 1 holds a NUL byte"),
        (["--env", "A=x\0y"], ["true"], "--env: A: expected a string value without NUL"),
        (["--pass-env", "A\0B"], ["true"], "--pass-env: expected a non-empty variable name"),
        (["--allow-read", "/a\0b"], ["true"], "--allow-read: expected a non-empty path"),
    ],
)
def test_a_nul_byte_is_refused_by_name(
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    argv: list[str],
    command: list[str],
    start: str,
) -> None:
    """No real command line carries a NUL; `main` called in-process (or by a wrapper that
    builds its arguments) can, and it must not reach a backend as "Input/output error"."""
    code, obj = cli(capsys, "run", "--json", "--workspace", str(tmp_path), *argv, "--", *command)
    error = obj["error"]
    assert isinstance(error, dict), obj
    assert (code, error["kind"]) == (125, "config_invalid"), error
    assert error["message"].startswith(start), error


def test_an_empty_workspace_is_not_the_current_directory(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mechasandbox", "run", "--workspace", "", "--", "touch", "made"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 125, proc.stderr
    assert "config_invalid: workspace: workspace '' is not an existing directory" in proc.stderr
    assert not (tmp_path / "made").exists()


def test_limits_may_be_unlimited_on_the_command_line_as_in_files(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    argv = ["policy", "--backend", "process", "--workspace", str(tmp_path)]
    assert main([*argv, "--max-open-files", "unlimited", "--", "true"]) == 0
    assert "RLIMIT_NOFILE" not in capsys.readouterr().out
    assert main([*argv, "--max-open-files", "16", "--", "true"]) == 0
    assert "RLIMIT_NOFILE soft=16 hard=16" in capsys.readouterr().out


def test_the_minimum_of_open_files_starts_every_backend_here(tmp_path: pathlib.Path) -> None:
    """The minimum is what the launchers need: at it, each backend available here runs."""
    ran = []
    for backend, extra in (
        ("bubblewrap", ["--network", "allowlist", "--allow-domain", "example.com"]),
        ("landlock", ["--host-processes", "visible"]),
        ("docker", ["--image", "mechasandbox-test:busybox"]),
        ("podman", ["--image", "mechasandbox-test:busybox"]),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "mechasandbox", "run", "--json", "--backend", backend,
             *extra, "--max-open-files", "16", "--workspace", str(tmp_path), "--", "true"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        error = json.loads(proc.stdout)["error"]
        if error and error["kind"] == "backend_unavailable":
            continue
        assert proc.returncode == 0, (backend, proc.stdout)
        ran.append(backend)
    if not ran:
        pytest.skip("no backend that takes an open-files limit is available here")


DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def _documented_project_json() -> str:
    text = (DOCS / "configuration.md").read_text()
    example = text.split("Example (accepted with the default user policy")[1]
    return example.split("```json\n")[1].split("```")[0]


def test_the_documented_project_json_runs_here(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    code, obj = cli(capsys, "run", "--json", "--workspace", str(tmp_path), "--", "true")
    if code != 0:
        pytest.skip(f"no run without a project file either: {obj['error']}")
    (tmp_path / ".openagents").mkdir()
    (tmp_path / ".openagents" / "project.json").write_text(_documented_project_json())
    code, obj = cli(capsys, "run", "--json", "--workspace", str(tmp_path), "--", "true")
    assert code == 0, obj


def test_a_project_backend_unavailable_here_says_who_chose_it(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    project = tmp_path / ".openagents" / "project.json"
    project.parent.mkdir()
    project.write_text(json.dumps({"sandbox": {"backend": UNAVAILABLE_HERE}}))
    code, obj = cli(capsys, "run", "--json", "--workspace", str(tmp_path), "--", "true")
    error = obj["error"]
    assert isinstance(error, dict)
    assert (code, error["kind"]) == (125, "backend_unavailable")  # closed: no other backend
    assert f"the project chose it ({project}: sandbox.backend)" in error["message"]
    assert "--backend" in error["message"]
    # The user's own choice stands over the project's, and then nothing is said of it.
    code, obj = cli(
        capsys, "run", "--json", "--backend", UNAVAILABLE_HERE, "--workspace", str(tmp_path),
        "--", "true",
    )  # fmt: skip
    assert code == 125
    assert "project" not in obj["error"]["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        (
            ".mechasandbox.toml",
            '[network]\nmode = "full"\n[limits]\nmemory = "64g"\n',
            ["network.mode: would widen", "; limits.memory: would widen the policy: 64g"],
        ),
        (
            ".openagents/project.json",
            json.dumps(
                {
                    "sandbox": {
                        "memoryLimit": "64g",
                        "networkEnabled": False,
                        "limits": {"timeout": "1h"},
                    }
                }
            ),
            ["sandbox.limits.timeout: would widen", "; sandbox.memoryLimit: would widen"],
        ),
        (
            ".openagents/project.json",
            json.dumps({"sandbox": {"memoryLimt": "1g"}}),
            [
                "sandbox.memoryLimt: unknown key; expected one of: enabled, backend, image, "
                "memoryLimit, networkEnabled, ",
                "(did you mean 'memoryLimit'?)",
            ],
        ),
    ],
)
def test_a_project_file_is_told_everything_at_once(
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    name: str,
    content: str,
    fragments: list[str],
) -> None:
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(content)
    code, obj = cli(capsys, "run", "--json", "--workspace", str(tmp_path), "--", "true")
    error = obj["error"]
    assert isinstance(error, dict)
    assert (code, error["kind"]) == (125, "config_invalid")
    assert error["message"].startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in error["message"], error["message"]


@pytest.mark.parametrize("name", ["", "a\0b"])
def test_a_config_option_that_names_no_file(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, name: str
) -> None:
    code, obj = cli(
        capsys, "run", "--json", "--config", name, "--workspace", str(tmp_path), "--", "true"
    )
    error = obj["error"]
    assert isinstance(error, dict)
    assert (code, error["kind"]) == (125, "config_invalid")
    assert error["message"] == (
        f"configuration file: expected a non-empty file name without NUL bytes, got {name!r}"
    )
