"""`Sandbox`'s streaming API on real sandboxes: `on_stdout`/`on_stderr` called as the output
comes, `stream()` yielding the run's events and its result last, leaving a stream early
stopping the run, a raising callback reaching the caller as itself, and the forms of stdin."""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.base import Backend
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.events import (
    OutputEvent,
    ResultEvent,
    RunEvent,
    ViolationEvent,
    WarningEvent,
)
from mechasandbox.domain.policy import Enforcement, NetworkMode, NetworkPolicy, Policy
from mechasandbox.domain.result import RunResult, Violation
from mechasandbox.runner.proctable import alive_with_marker
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.sandbox import Sandbox
from mechasandbox.testing import ScriptedBackend
from tests.conftest import require_available

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")

BEST_EFFORT = Policy(enforcement=Enforcement.BEST_EFFORT)
# A line, then a pause: what comes before the pause must come before the end.
FIRST_THEN_PAUSE = ["sh", "-c", "echo first; sleep 2; echo second >&2"]


def _bubblewrap(runner: HelperProcessRunner) -> Backend:
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

    return BubblewrapBackend(runner=runner)


def _landlock(runner: HelperProcessRunner) -> Backend:
    from mechasandbox.backends.linux.landlock import LandlockBackend

    return LandlockBackend(runner=runner)


def _process(runner: HelperProcessRunner) -> Backend:
    from mechasandbox.backends.process import ProcessBackend

    return ProcessBackend(runner=runner)


@pytest.fixture(params=[_bubblewrap, _landlock, _process], ids=lambda make: make.__name__[1:])
def sandbox(request: pytest.FixtureRequest, runner: HelperProcessRunner, tmp_path: Path) -> Sandbox:
    make: Callable[[HelperProcessRunner], Backend] = request.param
    backend = make(runner)
    require_available(backend)
    return Sandbox(backend=backend, policy=BEST_EFFORT, workspace=str(tmp_path))


def test_callbacks_see_the_output_as_it_comes(sandbox: Sandbox) -> None:
    seen: list[tuple[float, str, bytes]] = []
    started = time.monotonic()
    result = sandbox.run_sync(
        FIRST_THEN_PAUSE,
        on_stdout=lambda data: seen.append((time.monotonic(), "out", data)),
        on_stderr=lambda data: seen.append((time.monotonic(), "err", data)),
    ).unwrap()
    ended = time.monotonic()
    assert [(name, data) for _, name, data in seen] == [
        ("out", b"first\n"),
        ("err", b"second\n"),
    ]
    assert seen[0][0] - started < 1.0
    assert ended - seen[0][0] > 1.5
    assert (result.stdout, result.stderr) == (b"first\n", b"second\n")


def test_stream_yields_the_output_as_it_comes_then_the_result(sandbox: Sandbox) -> None:
    async def collect() -> list[tuple[float, RunEvent]]:
        return [(time.monotonic(), event) async for event in sandbox.stream(FIRST_THEN_PAUSE)]

    started = time.monotonic()
    timed = anyio.run(collect)
    events = [event for _, event in timed]
    assert events[:2] == [OutputEvent("stdout", b"first\n"), OutputEvent("stderr", b"second\n")]
    last = events[-1]
    assert isinstance(last, ResultEvent)
    assert last.value.unwrap().stdout == b"first\n"
    assert all(isinstance(event, WarningEvent) for event in events[2:-1])
    assert timed[0][0] - started < 1.0
    assert timed[-1][0] - timed[0][0] > 1.5


@pytest.mark.parametrize("closing", ["aclosing", "collected"])
def test_leaving_a_stream_early_stops_the_run(sandbox: Sandbox, closing: str) -> None:
    """`break` out of the loop: closing the iterator (at once with `aclosing`, else when it
    is collected) kills the run's tree; the caller's scopes are left untouched."""
    marker = f"stream-{secrets.token_hex(4)}"
    argv = ["sh", "-c", f"echo ready; sleep 60; : {marker}"]

    async def leave() -> float:
        with anyio.fail_after(30):  # a scope of the caller's around the loop
            if closing == "aclosing":
                async with contextlib.aclosing(sandbox.stream(argv)) as events:
                    async for _event in events:
                        break
            else:
                events = sandbox.stream(argv)
                async for _event in events:
                    break
                del events
                gc.collect()
                await anyio.sleep(0.5)  # the loop closes the collected generator
        return time.monotonic()

    started = time.monotonic()
    left = anyio.run(leave)
    assert left - started < 10.0
    time.sleep(0.2)
    assert alive_with_marker(marker) == []


def test_a_raising_callback_reaches_the_caller_as_itself(
    runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """Even where the backend runs the command inside a task group (the allowlist proxy),
    the caller gets its own exception, not a group, and the run is stopped."""
    backend = _bubblewrap(runner)
    require_available(backend)
    policy = Policy(network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("example.com",)))
    sandbox = Sandbox(backend=backend, policy=policy, workspace=str(tmp_path))
    marker = f"callback-{secrets.token_hex(4)}"

    def refuse(_data: bytes) -> None:
        raise LookupError("not now")

    started = time.monotonic()
    with pytest.raises(LookupError, match="not now"):
        sandbox.run_sync(["sh", "-c", f"echo x; sleep 60; : {marker}"], on_stdout=refuse)
    assert time.monotonic() - started < 10.0
    time.sleep(0.2)
    assert alive_with_marker(marker) == []


def test_stdin_as_bytes_descriptor_or_file(sandbox: Sandbox, tmp_path: Path) -> None:
    given = tmp_path.parent / f"input-{secrets.token_hex(4)}"
    given.write_bytes(b"from a file\n")
    try:
        assert sandbox.run_sync(["cat"], stdin=b"bytes\n").unwrap().stdout == b"bytes\n"
        with given.open("rb") as handle:
            assert sandbox.run_sync(["cat"], stdin=handle).unwrap().stdout == b"from a file\n"
        read_end, write_end = os.pipe()
        os.write(write_end, b"from a pipe\n")
        os.close(write_end)
        try:
            assert sandbox.run_sync(["cat"], stdin=read_end).unwrap().stdout == b"from a pipe\n"
        finally:
            os.close(read_end)
    finally:
        given.unlink()


def test_stdin_that_is_no_input_is_refused(tmp_path: Path) -> None:
    sandbox = Sandbox(backend=ScriptedBackend(), workspace=str(tmp_path))
    not_open = os.sysconf("SC_OPEN_MAX") - 1  # no descriptor of this process
    for wrong in (not_open, "text", object()):
        result = sandbox.run_sync(["cat"], stdin=wrong)  # type: ignore[arg-type]
        assert isinstance(result, Failure)
        assert isinstance(result.failure(), ConfigInvalid)
        assert result.failure().field == "stdin"


def test_a_backend_that_does_not_stream_still_gives_every_event(tmp_path: Path) -> None:
    """A backend that ignores `on_output` (this double): its output comes at the end, then
    the warnings and violations, then the result."""
    violation = Violation(kind="network", detail="example.org refused")
    finished = RunResult(
        backend="scripted",
        exit_code=0,
        signal=None,
        stdout=b"out",
        stderr=b"err",
        warnings=("a gap",),
        violations=(violation,),
    )
    backend = ScriptedBackend(results=[Success(finished), Success(finished)])
    sandbox = Sandbox(backend=backend, workspace=str(tmp_path))

    async def collect() -> list[RunEvent]:
        return [event async for event in sandbox.stream(["true"])]

    assert anyio.run(collect) == [
        OutputEvent("stdout", b"out"),
        OutputEvent("stderr", b"err"),
        WarningEvent("a gap"),
        ViolationEvent(violation),
        ResultEvent(Success(finished)),
    ]
    seen: list[bytes] = []
    sandbox.run_sync(["true"], on_stdout=seen.append, on_stderr=seen.append).unwrap()
    assert seen == [b"out", b"err"]
