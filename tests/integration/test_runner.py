"""The process runner against real processes: capture, timeouts, cancellation, teardown."""

from __future__ import annotations

import os
import resource
import secrets
import sys
import time
from collections.abc import Callable

import anyio
import attrs
import pytest

from mechasandbox.domain.limits import MIB
from mechasandbox.runner.blocking import BlockingHelperRunner
from mechasandbox.runner.escapers import ESCAPERS, PeakCounter, escaper_script
from mechasandbox.runner.proctable import alive_with_marker
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import SpawnSpec

ENV = (("PATH", "/usr/local/bin:/usr/bin:/bin"),)
LINUX_ONLY = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc (Linux only)"
)


@pytest.fixture
def runner(either_runner: HelperProcessRunner) -> HelperProcessRunner:
    """Every test here holds for warm children started from the exec shim and forked ones."""
    return either_runner


def spec(*argv: str, **changes: object) -> SpawnSpec:
    return SpawnSpec(argv=argv, env=ENV, cwd="/tmp", **changes)  # type: ignore[arg-type]


def test_timeout_kills_tree_including_setsid_children(runner: HelperProcessRunner) -> None:
    marker = f"runner-{secrets.token_hex(4)}"
    script = escaper_script(marker, then="echo ready; wait")
    with PeakCounter(marker) as seen:
        started = time.monotonic()
        outcome = anyio.run(runner.run, spec("sh", "-c", script, timeout_s=1.0))
    finished = outcome.unwrap()
    assert time.monotonic() - started < 3.0
    assert finished.timed_out
    assert finished.signal == 9
    assert finished.stdout == b"ready\n"
    assert seen.peak >= ESCAPERS  # every escaper ran (see PeakCounter)
    time.sleep(0.1)
    assert alive_with_marker(marker) == []


def test_cancelling_the_callers_scope_kills_the_tree(runner: HelperProcessRunner) -> None:
    marker = f"cancel-{secrets.token_hex(4)}"

    async def main() -> float:
        started = time.monotonic()
        with anyio.move_on_after(1.0):
            await runner.run(spec("sh", "-c", escaper_script(marker), timeout_s=60))
        return time.monotonic() - started

    with PeakCounter(marker) as seen:
        elapsed = anyio.run(main)
    assert elapsed < 3.0
    assert seen.peak >= ESCAPERS  # every escaper ran (see PeakCounter)
    time.sleep(0.1)
    assert alive_with_marker(marker) == []


def _stop_after(seconds: float, reason: str) -> tuple[list[int], Callable[[], str | None]]:
    """A watch that gives `reason` once `seconds` have passed, counting its calls."""
    calls: list[int] = []
    due = time.monotonic() + seconds

    def watch() -> str | None:
        calls.append(1)
        return reason if time.monotonic() >= due else None

    return calls, watch


@pytest.mark.parametrize("kind", ["async", "blocking"])
def test_a_watch_that_gives_a_reason_stops_the_run(runner: HelperProcessRunner, kind: str) -> None:
    """`SpawnSpec.watch` is called while the process runs; its reason kills the tree as a
    deadline does and comes back as `stopped` (not `timed_out`), in both runners."""
    marker = f"watch-{secrets.token_hex(4)}"
    calls, watch = _stop_after(0.3, "a guard came off")
    stopping = spec("sh", "-c", escaper_script(marker), timeout_s=60, watch=watch)
    with PeakCounter(marker) as seen:
        started = time.monotonic()
        if kind == "async":
            outcome = anyio.run(runner.run, stopping)
        else:
            blocking = BlockingHelperRunner()
            try:
                outcome = blocking.run_blocking(stopping)
            finally:
                blocking.close()
        elapsed = time.monotonic() - started
    finished = outcome.unwrap()
    assert (finished.stopped, finished.timed_out, finished.signal) == ("a guard came off", False, 9)
    assert elapsed < 5.0
    assert len(calls) >= 2  # looked more than once, the first time found nothing
    assert seen.peak >= ESCAPERS  # every escaper ran (see PeakCounter)
    time.sleep(0.1)
    assert alive_with_marker(marker) == []
    quiet = anyio.run(runner.run, spec("sleep", "0.2", watch=lambda: None))
    assert quiet.unwrap().stopped is None and quiet.unwrap().exit_code == 0


def test_leftovers_die_when_the_command_exits(runner: HelperProcessRunner) -> None:
    marker = f"leftover-{secrets.token_hex(4)}"
    script = escaper_script(marker, then="sleep 0.3; echo done")
    with PeakCounter(marker) as seen:
        finished = anyio.run(runner.run, spec("sh", "-c", script)).unwrap()
    assert seen.peak >= ESCAPERS  # every escaper ran (see PeakCounter)
    assert finished.stdout == b"done\n"
    time.sleep(0.1)
    assert alive_with_marker(marker) == []


@LINUX_ONLY
def test_no_zombies_are_left(runner: HelperProcessRunner) -> None:
    marker = f"zombie-{secrets.token_hex(4)}"
    anyio.run(runner.run, spec("sh", "-c", escaper_script(marker), timeout_s=0.5))
    time.sleep(0.2)
    zombies = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) in (runner._helper.pid, os.getpid()):
                zombies.append(entry)
    assert zombies == []


def _rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@LINUX_ONLY
def test_output_cap_keeps_draining_without_growing_memory(runner: HelperProcessRunner) -> None:
    before = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    finished = anyio.run(
        runner.run, spec("sh", "-c", "yes | head -c 300000000", max_output_bytes=1 * MIB)
    ).unwrap()
    elapsed = time.monotonic() - started
    assert finished.exit_code == 0
    assert len(finished.stdout) == 1 * MIB
    assert finished.stdout_truncated
    assert elapsed < 30
    grown = _rss_bytes() - before
    peak_grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown < 8 * MIB
    assert peak_grown_kib * 1024 < 8 * MIB


def test_stdin_and_explicit_environment(runner: HelperProcessRunner) -> None:
    env = (("PATH", "/usr/bin:/bin"), ("ONLY", "this"))
    finished = anyio.run(
        runner.run, SpawnSpec(argv=("sh", "-c", "cat; env"), env=env, cwd="/tmp", stdin=b"in\n")
    ).unwrap()
    lines = finished.stdout.decode().splitlines()
    assert lines[0] == "in"
    assert "ONLY=this" in lines
    assert not any(line.startswith("HOME=") for line in lines)


def test_a_held_stdin_reaches_end_of_file_only_with_its_host(runner: HelperProcessRunner) -> None:
    """`hold_stdin`: the input is written, and the pipe stays open while this host lives
    (the container lifeline): a reader never sees end-of-file, so the deadline ends it."""
    base = SpawnSpec(argv=("sh", "-c", "cat; echo eof"), env=(), cwd="/tmp", stdin=b"in\n")
    held = anyio.run(runner.run, attrs.evolve(base, hold_stdin=True, timeout_s=1.0)).unwrap()
    assert held.timed_out
    assert held.stdout == b"in\n"
    assert anyio.run(runner.run, base).unwrap().stdout == b"in\neof\n"


def test_usage_is_reported(runner: HelperProcessRunner) -> None:
    finished = anyio.run(
        runner.run, spec("sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
    ).unwrap()
    assert finished.usage.cpu_s > 0.05
    assert finished.usage.max_rss_bytes > 100_000


def test_spawn_failures_are_typed(runner: HelperProcessRunner, tmp_path: os.PathLike[str]) -> None:
    missing = anyio.run(runner.run, spec("no-such-command-xyz")).failure()
    assert missing.exit_status == 127
    script = os.path.join(tmp_path, "not-executable.sh")
    with open(script, "w") as handle:
        handle.write("echo hi\n")
    denied = anyio.run(runner.run, spec(script)).failure()
    assert denied.exit_status == 126


def test_closing_the_runner_kills_running_commands() -> None:
    own = HelperProcessRunner()
    marker = f"close-{secrets.token_hex(4)}"

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(own.run, spec("sh", "-c", escaper_script(marker), timeout_s=60))
            await anyio.sleep(0.5)
            assert alive_with_marker(marker)
            own.close()

    anyio.run(main)
    time.sleep(0.2)
    assert alive_with_marker(marker) == []


@pytest.mark.parametrize("exit_code", [0, 1, 42, 255])
def test_exit_codes(runner: HelperProcessRunner, exit_code: int) -> None:
    finished = anyio.run(runner.run, spec("sh", "-c", f"exit {exit_code}")).unwrap()
    assert finished.exit_code == exit_code
