"""The docker engine goes away or hangs during a run: a private dockerd of the test's own
(see `private_engine`), killed, stopped or frozen while a real container runs on it. The
shared engine is never touched."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.oci import DockerBackend
from mechasandbox.domain import BackendUnavailable, EngineLost, RunRequest, Timeout
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.oci_contract import TEST_IMAGE, failed, ok, policy
from tests.backends.private_engine import PrivateEngine, private_engine

pytestmark = [pytest.mark.backend("docker"), pytest.mark.anyio, pytest.mark.slow]

# Counts in the workspace while it runs, so that the host can see whether it still runs.
_TICKING = "echo started; i=0; while :; do i=$((i+1)); echo $i > ticks; sleep 0.1; done"


@pytest.fixture(name="engine")
def _engine() -> Iterator[PrivateEngine]:
    with private_engine() as engine:
        yield engine


def _backend(
    runner: HelperProcessRunner, engine: PrivateEngine, **options: object
) -> DockerBackend:
    backend = DockerBackend(runner=runner, image=TEST_IMAGE, host=engine.host(), **options)  # type: ignore[arg-type]
    probed = backend.probe()
    assert isinstance(probed, Success), probed
    return backend


def _when_ticking(workspace: Path, act: object) -> threading.Thread:
    def wait_then_act() -> None:
        end = time.monotonic() + 60
        while not (workspace / "ticks").exists() and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.3)
        act()  # type: ignore[operator]

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def _still_ticking(workspace: Path) -> bool:
    before = (workspace / "ticks").read_text()
    time.sleep(1.0)
    return (workspace / "ticks").read_text() != before


async def test_an_engine_killed_mid_run_is_engine_lost_and_the_command_stopped(
    runner: HelperProcessRunner, engine: PrivateEngine, tmp_path: Path
) -> None:
    """`kill -9` of dockerd: the answer was `backend_failed` within 0.09 s while the
    command ran on to its end (its shim outlives the engine), the output so far was
    dropped, and the container was left. Now: `engine_lost` with the output so far, the
    command no longer runs when the answer comes, and the container is removed once the
    engine is back, by the next run."""
    backend = _backend(runner, engine)
    request = RunRequest(argv=["sh", "-c", _TICKING], workspace=str(tmp_path))
    thread = _when_ticking(tmp_path, lambda: engine.signal(signal.SIGKILL))
    began = time.monotonic()
    error = failed(await backend.run(request, policy(timeout_s=60.0)))
    answered = time.monotonic() - began
    thread.join()
    assert isinstance(error, EngineLost), error
    assert error.partial.stdout.startswith(b"started\n"), error
    assert "killed from this host" in error.reason, error.reason
    assert answered < 20, answered
    assert not _still_ticking(tmp_path)

    engine.wait_gone()
    engine.start()
    assert len(engine.containers()) == 1  # the engine's record of it
    after = RunRequest(argv=["true"], workspace=str(tmp_path))
    assert ok(await backend.run(after, policy())).exit_code == 0
    assert engine.containers() == []
    backend.state.close()


async def test_an_engine_stopped_mid_run_is_engine_lost_not_the_commands_status(
    runner: HelperProcessRunner, engine: PrivateEngine, tmp_path: Path
) -> None:
    """SIGTERM to dockerd: it kills the containers still running when it stops, and the
    CLI reported that as the command's own status (a signal). It is `engine_lost`."""
    backend = _backend(runner, engine)
    request = RunRequest(argv=["sh", "-c", _TICKING], workspace=str(tmp_path))
    thread = _when_ticking(tmp_path, lambda: engine.signal(signal.SIGTERM))
    error = failed(await backend.run(request, policy(timeout_s=60.0)))
    thread.join()
    assert isinstance(error, EngineLost), error
    assert error.partial.stdout.startswith(b"started\n"), error
    assert not _still_ticking(tmp_path)
    backend.state.close()


async def test_a_hung_engine_answers_within_the_timeout_and_a_few_seconds(
    runner: HelperProcessRunner, engine: PrivateEngine, tmp_path: Path
) -> None:
    """SIGSTOP of dockerd mid-run with a 5 s timeout: the answer came after 488 s (four
    removal attempts of 60 s CLI calls). Every engine call of the run now shares its
    deadline: the answer comes within the timeout plus `ENGINE_GRACE_S` (5 s) and a local
    kill, as a typed error, and the command no longer runs."""
    backend = _backend(runner, engine)
    request = RunRequest(argv=["sh", "-c", _TICKING], workspace=str(tmp_path))
    thread = _when_ticking(tmp_path, lambda: engine.signal(signal.SIGSTOP))
    began = time.monotonic()
    outcome = await backend.run(request, policy(timeout_s=5.0))
    answered = time.monotonic() - began
    thread.join()
    assert answered < 5.0 + 5.0 + 3.0, answered
    error = failed(outcome)
    assert isinstance(error, EngineLost | Timeout), error
    assert error.partial.stdout.startswith(b"started\n"), error
    assert not _still_ticking(tmp_path)
    engine.signal(signal.SIGCONT)
    backend.state.close()


async def test_a_hung_engine_at_the_probe_is_a_typed_answer_in_time(
    runner: HelperProcessRunner, engine: PrivateEngine, tmp_path: Path
) -> None:
    """The probe found the engine (cached), then the engine hung, and the cache expired:
    the run probed again and crashed (`UnwrapFailedError`), or waited for the probe's own
    20 s timeouts. It is `backend_unavailable`, within the run's timeout and a few
    seconds."""
    backend = _backend(runner, engine, probe_ttl_s=0.0)
    engine.signal(signal.SIGSTOP)
    request = RunRequest(argv=["true"], workspace=str(tmp_path))
    began = time.monotonic()
    try:
        with anyio.fail_after(60):
            outcome = await backend.run(request, policy(timeout_s=3.0))
    finally:
        engine.signal(signal.SIGCONT)
    assert time.monotonic() - began < 3.0 + 5.0 + 2.0
    assert isinstance(outcome, Failure)
    assert isinstance(outcome.failure(), BackendUnavailable), outcome
    backend.state.close()
