"""The blocking runner (no event loop) against real processes: the same guarantees as the
anyio runner (capture, caps, timeouts, whole-tree kill, typed spawn failures), an
interrupted wait that still kills the tree, a host killed mid-run leaving nothing behind,
and `complete` refusing a coroutine that needs a loop."""

from __future__ import annotations

import os
import resource
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mechasandbox.domain.limits import MIB
from mechasandbox.runner.blocking import BlockingHelperRunner, SuspendedError, complete
from mechasandbox.runner.escapers import ESCAPERS, PeakCounter, escaper_script
from mechasandbox.runner.proctable import alive_with_marker
from mechasandbox.runner.protocol import PreparesCgroups
from mechasandbox.runner.spec import SpawnSpec

ENV = (("PATH", "/usr/local/bin:/usr/bin:/bin"),)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def spec(*argv: str, **changes: Any) -> SpawnSpec:
    return SpawnSpec(argv=argv, env=ENV, cwd="/tmp", **changes)


@pytest.fixture(scope="module")
def blocking() -> Iterator[BlockingHelperRunner]:
    runner = BlockingHelperRunner()
    yield runner
    runner.close()


def test_it_never_suspends_and_reports_like_the_anyio_runner(
    blocking: BlockingHelperRunner,
) -> None:
    finished = complete(blocking.run(spec("sh", "-c", "echo out; echo err >&2; exit 42")))
    outcome = finished.unwrap()
    assert (outcome.exit_code, outcome.signal) == (42, None)
    assert (outcome.stdout, outcome.stderr) == (b"out\n", b"err\n")
    assert not outcome.timed_out
    assert outcome.duration_s > 0


def test_it_asks_for_no_warm_children(blocking: BlockingHelperRunner) -> None:
    assert not isinstance(blocking, PreparesCgroups)


def test_stdin_bigger_than_a_pipe_and_no_stdin(blocking: BlockingHelperRunner) -> None:
    data = secrets.token_bytes(3 * MIB)
    outcome = blocking.run_blocking(spec("cat", stdin=data, max_output_bytes=4 * MIB)).unwrap()
    assert outcome.stdout == data
    assert blocking.run_blocking(spec("cat", stdin=b"")).unwrap().stdout == b""
    assert blocking.run_blocking(spec("cat")).unwrap().stdout == b""  # /dev/null
    stopped = blocking.run_blocking(spec("head", "-c", "1", stdin=data)).unwrap()
    assert (stopped.exit_code, stopped.stdout) == (0, data[:1])  # stopped reading: fine


def test_output_cap_keeps_draining_without_growing_memory(
    blocking: BlockingHelperRunner,
) -> None:
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = blocking.run_blocking(
        spec("sh", "-c", "yes | head -c 300000000", max_output_bytes=1 * MIB)
    ).unwrap()
    assert outcome.exit_code == 0
    assert len(outcome.stdout) == 1 * MIB
    assert outcome.stdout_truncated
    peak_grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert peak_grown_kib * 1024 < 8 * MIB


def test_timeout_kills_tree_including_setsid_children(blocking: BlockingHelperRunner) -> None:
    marker = f"blocking-{secrets.token_hex(4)}"
    script = escaper_script(marker, then="echo ready; wait")
    with PeakCounter(marker) as seen:
        started = time.monotonic()
        outcome = blocking.run_blocking(spec("sh", "-c", script, timeout_s=1.0)).unwrap()
    assert time.monotonic() - started < 3.0
    assert outcome.timed_out
    assert outcome.signal == 9
    assert outcome.stdout == b"ready\n"
    assert seen.peak >= ESCAPERS  # every escaper ran (see PeakCounter)
    time.sleep(0.1)
    assert alive_with_marker(marker) == []


def test_leftovers_die_when_the_command_exits(blocking: BlockingHelperRunner) -> None:
    marker = f"blocking-left-{secrets.token_hex(4)}"
    script = escaper_script(marker, then="sleep 0.3; echo done")
    with PeakCounter(marker) as seen:
        outcome = blocking.run_blocking(spec("sh", "-c", script)).unwrap()
    assert seen.peak >= ESCAPERS  # every escaper ran (see PeakCounter)
    assert outcome.stdout == b"done\n"
    time.sleep(0.1)
    assert alive_with_marker(marker) == []


def test_spawn_failures_are_typed(blocking: BlockingHelperRunner, tmp_path: Path) -> None:
    assert blocking.run_blocking(spec("no-such-command-xyz")).failure().exit_status == 127
    script = tmp_path / "not-executable.sh"
    script.write_text("echo hi\n")
    assert blocking.run_blocking(spec(str(script))).failure().exit_status == 126


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX timers")
def test_an_interrupted_wait_kills_the_tree(blocking: BlockingHelperRunner) -> None:
    """Ctrl-C while the CLI waits: the tree is dead before the interrupt propagates."""
    marker = f"blocking-int-{secrets.token_hex(4)}"

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with PeakCounter(marker) as seen:
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            with pytest.raises(KeyboardInterrupt):
                blocking.run_blocking(spec("sh", "-c", escaper_script(marker), timeout_s=60))
            assert alive_with_marker(marker) == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert seen.peak >= ESCAPERS  # every escaper ran (see PeakCounter)
    assert blocking.run_blocking(spec("true")).unwrap().exit_code == 0  # still usable


def test_a_host_killed_mid_run_leaves_nothing(tmp_path: Path) -> None:
    marker = f"blocking-host-{secrets.token_hex(4)}"
    host = textwrap.dedent(
        f"""
        import os
        from mechasandbox.runner.blocking import BlockingHelperRunner
        from mechasandbox.runner.escapers import escaper_script
        from mechasandbox.runner.spec import SpawnSpec
        script = escaper_script(os.environ["MARKER"], then="echo up; wait")
        BlockingHelperRunner().run_blocking(
            SpawnSpec(argv=("sh", "-c", script), env={ENV!r}, cwd="/tmp", timeout_s=60)
        )
        """
    )
    with PeakCounter(marker) as seen:
        process = subprocess.Popen(
            [sys.executable, "-c", host], env={**os.environ, "PYTHONPATH": SRC, "MARKER": marker}
        )
        deadline = time.monotonic() + 10
        while len(alive_with_marker(marker)) < ESCAPERS and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # seen by the counter too
        process.kill()
        process.wait()
        for _ in range(40):
            if not alive_with_marker(marker):
                break
            time.sleep(0.05)
    assert seen.peak >= ESCAPERS  # every escaper ran (see PeakCounter)
    assert alive_with_marker(marker) == []


class _Suspends:
    """An awaitable that suspends once, as a wait for something only a loop gives does."""

    def __await__(self) -> Generator[str, None, None]:
        yield "waiting for a loop"


def test_complete_runs_a_coroutine_that_never_suspends() -> None:
    async def answer() -> int:
        return 42

    async def fails() -> int:
        raise ValueError("inside")

    assert complete(answer()) == 42
    with pytest.raises(ValueError, match="inside"):
        complete(fails())


def test_complete_refuses_a_coroutine_that_suspends_and_closes_it() -> None:
    cleaned: list[bool] = []

    async def needs_a_loop() -> None:
        try:
            await _Suspends()
        finally:
            cleaned.append(True)

    with pytest.raises(SuspendedError):
        complete(needs_a_loop())
    assert cleaned == [True]


def test_a_held_stdin_reaches_end_of_file_only_with_its_host(
    blocking: BlockingHelperRunner,
) -> None:
    """`hold_stdin`: the input is written, and the pipe stays open while this host lives
    (a lifeline): a reader never sees end-of-file, so the deadline ends it."""
    held = blocking.run_blocking(
        spec("sh", "-c", "cat; echo eof", stdin=b"in\n", hold_stdin=True, timeout_s=1.0)
    ).unwrap()
    assert held.timed_out
    assert held.stdout == b"in\n"
    closed = blocking.run_blocking(spec("sh", "-c", "cat; echo eof", stdin=b"in\n")).unwrap()
    assert closed.stdout == b"in\neof\n"
    empty = blocking.run_blocking(
        spec("sh", "-c", "cat; echo eof", hold_stdin=True, timeout_s=1.0)
    ).unwrap()
    assert empty.timed_out and empty.stdout == b""


def test_complete_names_what_was_awaited_even_when_closing_fails() -> None:
    async def awaits_in_finally() -> None:
        try:
            await _Suspends()
        finally:
            await _Suspends()

    with pytest.raises(SuspendedError, match="waiting for a loop") as refused:
        complete(awaits_in_finally())
    assert isinstance(refused.value.__cause__, RuntimeError)  # "coroutine ignored GeneratorExit"
