"""The caller goes away (docs/failure-semantics.md): SIGINT or SIGTERM to the CLI stops the
run and answers `interrupted` with the output so far, on the loop-free path and on the
event loop's; real sandboxes, real signals to a real CLI process."""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import signal
import socket
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


def start_cli(
    workspace: pathlib.Path, *options: str, token: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
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
        env=env,
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


# --- SIGKILL: what is left is swept by the next start ---------------------------------------

# The next start: a backend that uses none of what the killed ones left.
NEXT_START = (sys.executable, "-m", "mechasandbox", "run", "--backend", "process", "--best-effort")


def cgroups_of(pid: int) -> list[str]:
    """The pooled cgroups named after `pid` (see `limits.cgroup`), in every hierarchy."""
    found = []
    for root, directories, _files in os.walk("/sys/fs/cgroup"):
        found += [
            os.path.join(root, d) for d in directories if d.startswith(f"mechasandbox-p{pid}-")
        ]
        directories[:] = [d for d in directories if not d.startswith("mechasandbox-")]
    return found


def test_what_a_killed_cli_leaves_is_swept_by_the_next_start(tmp_path: pathlib.Path) -> None:
    """SIGKILL a CLI in the middle of a bubblewrap run (placeholders for the missing
    protected paths, their journal, pooled cgroups) and one in the middle of a landlock run
    (its private tmp dir): the trees die with their helpers, and the next `mechasandbox run`,
    on a backend that uses none of these, leaves nothing of them."""
    require_backend("bubblewrap")
    require_backend("landlock")
    temp, state = tmp_path / "tmp", tmp_path / "state"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "XDG_STATE_HOME": str(state)}
    clis, tokens, workspaces = [], [], []
    for backend, options in (PATHS["bubblewrap"], PATHS["landlock"]):
        workspace = tmp_path / f"ws-{backend}"
        workspace.mkdir()
        tokens.append(f"msb-killed-{secrets.token_hex(4)}")
        clis.append(start_cli(workspace, "--backend", backend, *options, token=tokens[-1], env=env))
        workspaces.append(workspace)
    for cli, token in zip(clis, tokens, strict=True):  # both at once: each started alive
        cli.kill()
        cli.communicate()
        assert_tree_gone(token)
    # What they left, which the next start must remove.
    assert (workspaces[0] / ".envrc").is_dir()  # a placeholder
    assert list((state / "mechasandbox" / "placeholders").glob("*.paths"))  # its journal
    assert [p.name for p in temp.iterdir() if p.name.startswith("mechasandbox-landlock-")]
    assert cgroups_of(clis[0].pid)

    done = subprocess.run(
        [*NEXT_START, "--workspace", str(tmp_path), "--", "true"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()

    for workspace in workspaces:  # exactly as the commands left them
        assert sorted(p.name for p in workspace.iterdir()) == ["out"]
        assert [p.name for p in (workspace / "out").iterdir()] == ["started"]
    assert not list((state / "mechasandbox" / "placeholders").glob("*.paths"))
    assert not list((state / "mechasandbox" / "placeholders").glob("*.stash"))
    assert list(temp.iterdir()) == []
    for cli in clis:
        assert cgroups_of(cli.pid) == []


def test_what_a_killed_docker_cli_leaves_is_swept_by_the_next_start(
    tmp_path: pathlib.Path,
) -> None:
    """The container backends' temp dirs (the read-only empty directory, the seccomp
    profile, the command's input) of a CLI killed mid-run go at the next start; the
    container itself goes with the helper (it runs the engine's `rm --force`)."""
    require_backend("docker")
    temp, state = tmp_path / "tmp", tmp_path / "state"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "XDG_STATE_HOME": str(state)}
    workspace = tmp_path / "ws"
    workspace.mkdir()
    token = f"msb-killed-{secrets.token_hex(4)}"
    cli = start_cli(workspace, "--backend", "docker", *PATHS["docker"][1], token=token, env=env)
    cli.kill()
    cli.communicate()
    assert_tree_gone(token)
    left = sorted(p.name.split("-")[1] for p in temp.iterdir())
    assert "empty" in left and "seccomp" in left
    owner = f"mechasandbox.owner={socket.gethostname()}:{cli.pid}"

    def containers() -> str:
        listed = subprocess.run(
            ["docker", "ps", "--all", "--quiet", "--filter", f"label={owner}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return listed.stdout.strip()

    deadline = time.monotonic() + 30
    while containers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not containers()

    done = subprocess.run(
        [*NEXT_START, "--workspace", str(tmp_path), "--", "true"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert list(temp.iterdir()) == []
    assert sorted(p.name for p in workspace.iterdir()) == ["out"]
    assert not list((state / "mechasandbox" / "placeholders").glob("*.paths"))
