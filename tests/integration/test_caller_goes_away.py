"""The caller goes away (docs/failure-semantics.md): SIGINT or SIGTERM to the CLI stops the
run and answers `interrupted` with the output so far, on the loop-free path and on the
event loop's; real sandboxes, real signals to a real CLI process."""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import anyio
import pytest

from mechasandbox.backends.base import Backend
from mechasandbox.containers import Application
from mechasandbox.runner.blocking import BlockingHelperRunner, complete
from mechasandbox.runner.interruption import Interruption
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import SpawnSpec
from tests.backends.oci_contract import TEST_IMAGE
from tests.conftest import require_available

# Writes to both streams, says it started, then runs until killed. `$0` is a token naming
# this run's shell, to find it in the process table afterwards. (In a subdirectory: under
# landlock the workspace's top level takes no new entries.)
SCRIPT = "echo partial-out; echo partial-err >&2; touch out/started; while :; do sleep 1; done"

# (backend, options): the loop-free path (bubblewrap, landlock, process) and the event
# loop's (bubblewrap in allowlist mode, whose proxy needs the loop; docker).
PATHS = {
    "bubblewrap": ("bubblewrap", ()),
    "landlock": ("landlock", ("--host-processes", "visible")),
    "process": ("process", ("--best-effort",)),
    "allowlist": ("bubblewrap", ("--network", "allowlist", "--allow-domain", "example.com")),
    "docker": ("docker", ("--image", TEST_IMAGE)),
}


def require_backend(name: str) -> None:
    app = Application()
    app.config.image.from_value(TEST_IMAGE)
    try:
        backend: Backend = app.backends.named(name)
        require_available(backend)
    finally:
        app.shutdown_resources()


def start_cli(workspace: pathlib.Path, *options: str, token: str) -> subprocess.Popen[bytes]:
    """`mechasandbox run` of SCRIPT in `workspace`, returned once the command has started."""
    (workspace / "out").mkdir(exist_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mechasandbox",
            "run",
            *options,
            "--workspace",
            str(workspace),
            "--",
            "sh",
            "-c",
            SCRIPT,
            token,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workspace,
    )
    deadline = time.monotonic() + 60
    while not (workspace / "out" / "started").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"the command did not start: {out!r} {err!r}")
        time.sleep(0.02)
    return process


def running(token: str) -> list[str]:
    """Processes (not zombies) whose command line holds `token`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in cmdline.split(b"\0") and state != b"Z":
            found.append(cmdline.decode(errors="replace"))
    return found


def assert_tree_gone(token: str) -> None:
    deadline = time.monotonic() + 5
    while running(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(token)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("caught", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_cli_answers_interrupted_with_the_output_so_far(
    tmp_path: pathlib.Path, path: str, caught: signal.Signals
) -> None:
    backend, options = PATHS[path]
    require_backend(backend)
    token = f"msb-interrupt-{secrets.token_hex(4)}"
    cli = start_cli(tmp_path, "--backend", backend, *options, "--json", token=token)
    time.sleep(0.2)  # the output reaches the host
    sent = time.monotonic()
    cli.send_signal(caught)
    out, err = cli.communicate(timeout=60)
    assert time.monotonic() - sent < 15
    assert b"Traceback" not in err, err.decode()
    assert cli.returncode == 128 + caught, err.decode()
    answer = json.loads(out)  # exactly one JSON object, nothing else
    assert answer["error"]["kind"] == "interrupted"
    assert caught.name in answer["error"]["message"]
    assert answer["backend"] == backend
    assert answer["stdout"] == "partial-out\n"
    assert "partial-err" in answer["stderr"]
    assert answer["exit_code"] is None
    assert_tree_gone(token)


@pytest.mark.parametrize("path", ["bubblewrap", "allowlist"])
def test_sigint_without_json_prints_the_output_so_far_and_the_error(
    tmp_path: pathlib.Path, path: str
) -> None:
    backend, options = PATHS[path]
    require_backend(backend)
    token = f"msb-interrupt-{secrets.token_hex(4)}"
    cli = start_cli(tmp_path, "--backend", backend, *options, token=token)
    time.sleep(0.2)
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 130
    assert out == b"partial-out\n"
    assert b"partial-err" in err
    assert b"Traceback" not in err
    assert b"mechasandbox: error: interrupted: interrupted by SIGINT" in err
    assert_tree_gone(token)


# --- the runners' side (`runner.interruption`) ----------------------------------------------

ENV = (("PATH", "/usr/local/bin:/usr/bin:/bin"),)


def _spec(script: str) -> SpawnSpec:
    return SpawnSpec(argv=("sh", "-c", script), env=ENV, cwd="/tmp", timeout_s=30)


def _run(kind: str, runner: HelperProcessRunner | BlockingHelperRunner, spec: SpawnSpec) -> Any:
    if kind == "blocking":
        return complete(runner.run(spec)).unwrap()
    return anyio.run(runner.run, spec).unwrap()


@pytest.mark.parametrize("kind", ["blocking", "anyio"])
def test_an_interruption_stops_the_runs_under_way_with_their_output(kind: str) -> None:
    interruption = Interruption()
    runner_class = BlockingHelperRunner if kind == "blocking" else HelperProcessRunner
    runner = runner_class(interruption=interruption)
    try:
        timer = threading.Timer(0.5, interruption.request, (signal.SIGTERM,))
        timer.start()
        started = time.monotonic()
        outcome = _run(kind, runner, _spec("echo so-far; exec sleep 20"))
        timer.join()
        assert time.monotonic() - started < 5
        assert outcome.interrupted == signal.SIGTERM
        assert outcome.signal == signal.SIGKILL
        assert outcome.stdout == b"so-far\n"
        assert not outcome.timed_out
        assert interruption.signal == signal.SIGTERM
    finally:
        runner.close()


@pytest.mark.parametrize("kind", ["blocking", "anyio"])
def test_between_runs_it_stops_the_next_run_at_once_and_no_later_one(kind: str) -> None:
    """A signal while a backend sets up (no run under way) stops its run as it starts; the
    runs after that (a backend's clean-up) go on as usual."""
    interruption = Interruption()
    runner_class = BlockingHelperRunner if kind == "blocking" else HelperProcessRunner
    runner = runner_class(interruption=interruption)
    try:
        interruption.request(signal.SIGINT)
        started = time.monotonic()
        stopped = _run(kind, runner, _spec("exec sleep 20"))
        assert time.monotonic() - started < 5
        assert stopped.interrupted == signal.SIGINT
        after = _run(kind, runner, _spec("echo cleanup"))
        assert (after.exit_code, after.stdout, after.interrupted) == (0, b"cleanup\n", None)
    finally:
        runner.close()
