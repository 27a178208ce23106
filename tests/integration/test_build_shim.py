"""`mechasandbox build-shim`: the exec shim for an installed package (no Makefile), built
where the runner looks for it and then used by the runner; without a compiler a clear
refusal (125). doctor names the verb when there is no shim."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import anyio
import pytest
from returns.result import Failure

from mechasandbox.cli.main import main
from mechasandbox.runner import native, session_protocol
from mechasandbox.runner.client import SpawnHelperClient
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.session_protocol import AGENT_NAME
from mechasandbox.runner.spec import SpawnSpec
from tests.integration.offering import offers

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the exec shim is Linux only"
)


@pytest.fixture
def shim_target(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Where the runner looks for the shim in this test (`$MECHASANDBOX_EXEC_SHIM`), not yet
    built; a C compiler is needed (CI, which requires the shim, has one)."""
    if shutil.which("cc") is None and not os.environ.get("CC"):
        reason = "no C compiler (cc) to build the exec shim with"
        if os.environ.get("MECHASANDBOX_REQUIRE_SHIM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    target = tmp_path / "lib" / native.SHIM_NAME
    monkeypatch.setenv(native.SHIM_ENV, str(target))
    # the agent is built too: here, not over the checkout's
    monkeypatch.setenv(session_protocol.AGENT_ENV, str(tmp_path / "agent" / AGENT_NAME))
    return target


def test_the_shim_it_builds_is_the_one_the_runner_uses(
    shim_target: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build-shim"]) == 0
    assert f"exec shim built: {shim_target} (protocol {native.PROTOCOL})" in capsys.readouterr().out
    assert native.shim_path() == str(shim_target)
    assert native.speaks_protocol(str(shim_target))
    assert list(shim_target.parent.iterdir()) == [shim_target]  # no partial file left
    # A helper started now starts its warm children from it: after a run, the one waiting
    # for the next is that binary, and the next run is that process.
    runner = HelperProcessRunner(SpawnHelperClient(exec_shim=True))
    try:
        spec = SpawnSpec(argv=("sh", "-c", "echo $$"), env=(("PATH", "/usr/bin:/bin"),), cwd="/tmp")
        anyio.run(runner.run, spec).unwrap()
        (waiting,) = offers(runner._helper, lambda o: o.native, take=False)
        assert os.readlink(f"/proc/{waiting.pid}/exe") == str(shim_target)
        assert int(anyio.run(runner.run, spec).unwrap().stdout) == waiting.pid
    finally:
        runner.close()


def test_without_a_compiler_it_fails_with_125_and_says_why(
    shim_target: pathlib.Path,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CC", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["build-shim"]) == 125
    err = capsys.readouterr().err
    assert "no C compiler found" in err and "Traceback" not in err
    assert not shim_target.exists()


def test_a_failed_build_keeps_the_shim_that_was_there(
    shim_target: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build-shim"]) == 0
    before = shim_target.read_bytes()
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    assert main(["build-shim"]) == 125
    assert "false failed (exit 1)" in capsys.readouterr().err
    assert shim_target.read_bytes() == before
    assert list(shim_target.parent.iterdir()) == [shim_target]


def test_doctor_without_a_shim_names_the_verb_that_builds_it(
    shim_target: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor"]) == 0
    assert "exec shim: none (not built" in (out := capsys.readouterr().out)
    assert "`mechasandbox build-shim`" in out


def test_it_builds_the_session_agent_that_sessions_then_use(
    shim_target: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = tmp_path / "agent" / AGENT_NAME
    assert main(["build-shim"]) == 0
    assert f"session agent built: {agent}" in capsys.readouterr().out
    assert session_protocol.agent_path() == str(agent)
    assert session_protocol.agent_speaks(str(agent))
    assert list(agent.parent.iterdir()) == [agent]
    # statically linked: it needs nothing from a sandbox's file system
    assert (
        b"interp"
        not in subprocess.run(
            ["readelf", "-l", str(agent)], capture_output=True, check=False
        ).stdout.lower()
        or shutil.which("readelf") is None
    )
    # a session started now runs its commands through that binary
    from mechasandbox.backends.linux.landlock import LandlockBackend
    from mechasandbox.domain.policy import Enforcement, Policy
    from mechasandbox.sandbox import Sandbox

    workspace = tmp_path / "ws"
    (workspace / "work").mkdir(parents=True)
    backend = LandlockBackend(runner=HelperProcessRunner())
    sandbox = Sandbox(backend=backend, policy=Policy(enforcement=Enforcement.BEST_EFFORT))
    with sandbox.session_sync(workspace=str(workspace)) as session:
        if isinstance(session.opened, Failure):
            pytest.skip(f"no landlock session here: {session.opened.failure()}")
        # (the agent is not dumpable: its exe link is closed to a command; its argv is not)
        parent = session.run(["sh", "-c", "tr '\\0' '\\n' < /proc/$PPID/cmdline"]).unwrap()
        assert parent.stdout.decode().split("\n")[0] == str(agent)
