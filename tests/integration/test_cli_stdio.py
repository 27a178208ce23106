"""`mechasandbox run`'s stdio on real sandboxes: the caller's stdin passed through (`--stdin
none|inherit|FILE`; a terminal never inherited by default, never handed over), output
printed as it comes on the loop-free and the event-loop path, `--jsonl`, the cap."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import pty
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from returns.result import Success

from mechasandbox.backends.base import Backend
from mechasandbox.cli.live import JsonLines
from mechasandbox.domain.result import RunResult
from mechasandbox.runner.proctable import alive_with_marker
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")

SRC = str(pathlib.Path(__file__).resolve().parents[2] / "src")
TEST_IMAGE = os.environ.get("MECHASANDBOX_TEST_IMAGE", "mechasandbox-test:busybox")
OPTIONS = {
    "bubblewrap": ("--backend", "bubblewrap"),
    "landlock": ("--backend", "landlock", "--host-processes", "visible"),
    "process": ("--backend", "process", "--best-effort"),
    "docker": ("--backend", "docker", "--image", TEST_IMAGE),
}
# The event loop's path: an allowlist run needs the proxy (see `cli.oneshot`).
WITH_LOOP = ("--network", "allowlist", "--allow-domain", "example.com")


@pytest.fixture(params=sorted(OPTIONS))
def backend(request: pytest.FixtureRequest, runner: HelperProcessRunner) -> tuple[str, ...]:
    """The options that choose a backend available here (each in turn)."""
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
    from mechasandbox.backends.linux.landlock import LandlockBackend
    from mechasandbox.backends.oci import DockerBackend
    from mechasandbox.backends.process import ProcessBackend

    name: str = request.param
    if name == "docker" and shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    makers: dict[str, Callable[[], Backend]] = {
        "bubblewrap": lambda: BubblewrapBackend(runner=runner),
        "landlock": lambda: LandlockBackend(runner=runner),
        "process": lambda: ProcessBackend(runner=runner),
        "docker": lambda: DockerBackend(runner=runner, image=TEST_IMAGE),
    }
    require_available(makers[name]())
    return OPTIONS[name]


@pytest.fixture
def workspace(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "mechasandbox", *argv]


def cli(
    workspace: pathlib.Path, *argv: str, given: bytes | None = None, stdin: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`argv` run by the CLI in `workspace`, `given` as its input (or `stdin`)."""
    return subprocess.run(
        command(*argv),
        input=given,
        stdin=stdin,
        capture_output=True,
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
        check=False,
    )


def test_piped_stdin_reaches_the_command(backend: tuple[str, ...], workspace: pathlib.Path) -> None:
    counted = cli(workspace, "run", *backend, "--", "wc", "-c", given=b"abc\n")
    assert (counted.returncode, counted.stdout.strip()) == (0, b"4"), counted.stderr
    echoed = cli(workspace, "run", *backend, "--", "cat", given=b"hi\n")
    assert echoed.stdout == b"hi\n"


def test_stdin_that_never_ends_does_not_hold_the_run(
    backend: tuple[str, ...], workspace: pathlib.Path
) -> None:
    """`sleep 100 | mechasandbox run -- true` ends with `true`."""
    started = time.monotonic()
    with subprocess.Popen(
        command("run", *backend, "--", "true"),
        stdin=subprocess.PIPE,  # held open, never written
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": SRC},
    ) as proc:
        status = proc.wait(timeout=30)
        assert proc.stdin is not None
        proc.stdin.close()
    assert status == 0
    assert time.monotonic() - started < 20.0


def test_stdin_none_and_file(
    workspace: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    given = tmp_path_factory.mktemp("given") / "input.txt"
    given.write_bytes(b"from the file\n")
    none = cli(workspace, "run", "--stdin", "none", "--", "wc", "-c", given=b"ignored\n")
    assert none.stdout.strip() == b"0"
    read = cli(workspace, "run", "--stdin", str(given), "--", "cat", given=b"ignored\n")
    assert read.stdout == b"from the file\n"
    missing = cli(workspace, "run", "--stdin", str(given) + ".absent", "--", "cat")
    assert missing.returncode == 125
    assert b"--stdin: cannot read" in missing.stderr
    as_json = cli(workspace, "run", "--json", "--stdin", str(given) + ".absent", "--", "cat")
    assert json.loads(as_json.stdout)["error"]["kind"] == "config_invalid"


def test_a_terminal_is_not_read_unless_asked_and_never_handed_over(
    workspace: pathlib.Path,
) -> None:
    """On a terminal the default is no input (a command does not wait for typing); asked
    for (`--stdin inherit`), what is typed goes through a pipe: the command never gets the
    terminal itself (TIOCSTI)."""
    try:
        controller, terminal = pty.openpty()
    except OSError as error:  # devpts mounted with ptmxmode=000: only root gets a pty
        pytest.skip(f"no pseudo-terminal for this user here: {error}")
    try:
        default = cli(workspace, "run", "--", "wc", "-c", stdin=terminal)
        assert default.stdout.strip() == b"0"
        os.write(controller, b"typed\n\x04")  # a line, then end-of-file
        script = "if [ -t 0 ]; then echo terminal; else echo pipe; fi; cat"
        asked = cli(
            workspace, "run", "--stdin", "inherit", "--", "sh", "-c", script, stdin=terminal
        )
        assert asked.stdout == b"pipe\ntyped\n", asked.stderr
    finally:
        os.close(controller)
        os.close(terminal)
    usage = " ".join(cli(workspace, "run", "--help").stdout.decode().split())
    assert "none when stdin is a terminal" in usage


@pytest.mark.parametrize("path", ["loop-free", "event-loop"])
def test_output_is_printed_as_it_comes(workspace: pathlib.Path, path: str) -> None:
    """A line the command writes before a two-second pause is printed before it ends."""
    options = WITH_LOOP if path == "event-loop" else ()
    script = "for i in 1 2 3; do echo $i; sleep 1; done"
    with subprocess.Popen(
        command("run", *options, "--", "sh", "-c", script),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": SRC},
    ) as proc:
        assert proc.stdout is not None
        lines = [(proc.stdout.readline(), time.monotonic()) for _ in range(3)]
        proc.wait(timeout=30)
        ended = time.monotonic()
    assert [line for line, _ in lines] == [b"1\n", b"2\n", b"3\n"]
    assert ended - lines[0][1] > 1.5
    assert lines[1][1] - lines[0][1] > 0.5


def test_jsonl_prints_events_as_they_come_and_the_result_last(
    workspace: pathlib.Path,
) -> None:
    script = "echo first; sleep 2; echo second >&2"
    with subprocess.Popen(
        command("run", "--jsonl", "--", "sh", "-c", script),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": SRC},
    ) as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        first_at = time.monotonic()
        rest = [json.loads(line) for line in proc.stdout]
        ended = time.monotonic()
        assert proc.wait(timeout=30) == 0
    assert first == {"event": "stdout", "data": "first\n"}
    assert ended - first_at > 1.5
    assert rest[0] == {"event": "stderr", "data": "second\n"}
    result = rest[-1]
    assert result["event"] == "result"
    assert (result["stdout"], result["stderr"], result["exit_code"]) == (
        "first\n",
        "second\n",
        0,
    )
    assert all(event["event"] == "warning" for event in rest[1:-1])


def test_the_output_cap_applies_live_and_is_reported(workspace: pathlib.Path) -> None:
    capped = cli(workspace, "run", "--max-output", "1000", "--", "sh", "-c", "yes | head -c 50000")
    assert capped.stdout == b"y\n" * 500
    assert b"output truncated at --max-output" in capped.stderr
    lines = cli(
        workspace, "run", "--jsonl", "--max-output", "1000", "--", "sh", "-c", "yes | head -c 50000"
    ).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert "".join(e["data"] for e in events if e["event"] == "stdout") == "y\n" * 500
    assert events[-1]["stdout_truncated"] is True


def test_a_reader_that_goes_away_stops_the_run(workspace: pathlib.Path) -> None:
    """`mechasandbox run -- yes | head`: the run stops as a pipeline's command would."""
    marker = f"reader-{secrets.token_hex(4)}"
    started = time.monotonic()
    with subprocess.Popen(
        command("run", "--", "sh", "-c", f"yes; : {marker}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": SRC},
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.read(10) == b"y\n" * 5
        proc.stdout.close()
        status = proc.wait(timeout=30)
    assert status == 141
    assert time.monotonic() - started < 20.0
    time.sleep(0.2)
    assert alive_with_marker(marker) == []


def test_json_and_jsonl_exclude_each_other(workspace: pathlib.Path) -> None:
    both = cli(workspace, "run", "--json", "--jsonl", "--", "true")
    assert both.returncode == 125
    assert json.loads(both.stdout)["error"]["kind"] == "config_invalid"


def test_jsonl_keeps_a_character_split_between_chunks_whole_and_every_byte(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    """The text of the chunks joins into whole characters (invalid bytes replaced); where a
    chunk's text is not its bytes, `data_b64` holds them: the output is exact."""
    chunks = ["é".encode()[:1], "é".encode()[1:] + b"\xff", b"plain\n"]
    lines = JsonLines()
    for chunk in chunks:
        lines.stdout(chunk)
    status = lines.finish(
        Success(RunResult(backend="bubblewrap", exit_code=3, signal=None)), backend="bubblewrap"
    )
    events = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    assert status == 3
    output = [event for event in events if event["event"] == "stdout"]
    assert "".join(event["data"] for event in output) == "é\ufffdplain\n"
    exact = b"".join(
        base64.b64decode(event["data_b64"]) if "data_b64" in event else event["data"].encode()
        for event in output
    )
    assert exact == b"".join(chunks)
    assert "data_b64" not in output[-1]
    assert events[-1]["event"] == "result"
