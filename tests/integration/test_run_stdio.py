"""A run's stdio on both helper runners (anyio, and the blocking one of the CLI's one-shot
path): input streamed from a caller's descriptor as the command reads it, never holding the
run's end, and output handed to the spec's sink as it comes, under the cap."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from returns.result import Result

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.events import OutputEvent
from mechasandbox.domain.limits import MIB
from mechasandbox.domain.request import StreamedInput
from mechasandbox.runner.blocking import BlockingHelperRunner, complete
from mechasandbox.runner.proctable import alive_with_marker
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

ENV = (("PATH", "/usr/local/bin:/usr/bin:/bin"),)


def spec(*argv: str, **changes: Any) -> SpawnSpec:
    return SpawnSpec(argv=argv, env=ENV, cwd="/tmp", **changes)


@pytest.fixture(scope="module")
def blocking() -> Iterator[BlockingHelperRunner]:
    runner = BlockingHelperRunner()
    yield runner
    runner.close()


@pytest.fixture(params=["anyio", "blocking"])
def run(
    request: pytest.FixtureRequest, runner: HelperProcessRunner, blocking: BlockingHelperRunner
) -> Any:
    """Runs a spec to its outcome with one runner, then the other."""

    def with_anyio(given: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        return anyio.run(runner.run, given)

    def without_loop(given: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        return complete(blocking.run(given))

    return with_anyio if request.param == "anyio" else without_loop


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe (read end, write end), both closed at the end (the test closes neither)."""
    ends = os.pipe()
    yield ends
    for fd in ends:
        os.close(fd)


def _write_then_close(fd: int, data: bytes) -> threading.Thread:
    def write() -> None:
        with os.fdopen(fd, "wb") as writer:
            writer.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_input_streamed_from_a_pipe_arrives_whole(run: Any) -> None:
    read_end, write_end = os.pipe()
    data = secrets.token_bytes(5 * MIB)
    writer = _write_then_close(write_end, data)
    try:
        outcome = run(spec("cat", stdin=StreamedInput(read_end), max_output_bytes=8 * MIB))
    finally:
        writer.join(5)
        os.close(read_end)
    assert outcome.unwrap().stdout == data


def test_input_is_read_as_the_command_takes_it(run: Any, tmp_path: Path) -> None:
    """Not read whole first: a command that takes ten bytes of a 256 MiB file leaves the
    file's offset near its start (a chunk in the pipe, one waiting)."""
    big = tmp_path / "big"
    with big.open("wb") as handle:
        handle.truncate(256 * MIB)  # sparse: zeros, no disk
    with big.open("rb") as source:
        outcome = run(spec("head", "-c", "10", stdin=StreamedInput(source.fileno())))
        offset = os.lseek(source.fileno(), 0, os.SEEK_CUR)
    assert outcome.unwrap().stdout == b"\0" * 10
    assert offset <= 1 * MIB


def test_a_source_that_never_ends_does_not_hold_the_run(run: Any, pipe: tuple[int, int]) -> None:
    """`sleep 100 | mechasandbox run -- true`: the run ends when its command does; a command
    that reads such an input ends at its deadline."""
    read_end, _held_open = pipe
    started = time.monotonic()
    assert run(spec("true", stdin=StreamedInput(read_end))).unwrap().exit_code == 0
    assert time.monotonic() - started < 2.0
    waited = run(spec("cat", stdin=StreamedInput(read_end), timeout_s=1.0)).unwrap()
    assert waited.timed_out
    assert time.monotonic() - started < 5.0


def test_a_command_that_never_reads_does_not_hold_the_run(run: Any) -> None:
    """An endless source (/dev/zero: read without waiting) and a command that never reads:
    the pipe fills, the feed waits, and the run still ends with the command."""
    with open("/dev/zero", "rb") as zeros:
        started = time.monotonic()
        outcome = run(spec("sleep", "0.3", stdin=StreamedInput(zeros.fileno())))
    assert outcome.unwrap().exit_code == 0
    assert time.monotonic() - started < 3.0


def test_the_callers_descriptor_stays_the_callers(run: Any) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"abc")
    os.close(write_end)
    try:
        outcome = run(spec("wc", "-c", stdin=StreamedInput(read_end)))
        assert outcome.unwrap().stdout.strip() == b"3"
        os.fstat(read_end)  # still open
        assert os.get_blocking(read_end)
    finally:
        os.close(read_end)


def test_output_reaches_the_sink_as_it_comes(run: Any) -> None:
    seen: list[tuple[float, OutputEvent]] = []
    started = time.monotonic()
    script = "echo first; sleep 2; echo second >&2"
    outcome = run(
        spec("sh", "-c", script, on_output=lambda e: seen.append((time.monotonic(), e)))
    ).unwrap()
    ended = time.monotonic()
    assert [event for _, event in seen] == [
        OutputEvent("stdout", b"first\n"),
        OutputEvent("stderr", b"second\n"),
    ]
    first_at = seen[0][0]
    assert first_at - started < 1.0
    assert ended - first_at > 1.5
    assert (outcome.stdout, outcome.stderr) == (b"first\n", b"second\n")


def test_the_sink_gets_what_the_cap_keeps(run: Any) -> None:
    seen: list[bytes] = []
    outcome = run(
        spec(
            "sh",
            "-c",
            "yes | head -c 50000",
            max_output_bytes=1000,
            on_output=lambda e: seen.append(e.data),
        )
    ).unwrap()
    assert b"".join(seen) == outcome.stdout
    assert len(outcome.stdout) == 1000
    assert outcome.stdout_truncated


def test_a_sink_that_raises_stops_the_run_and_is_raised(run: Any) -> None:
    marker = f"sink-{secrets.token_hex(4)}"

    def refuse(_event: OutputEvent) -> None:
        raise LookupError("no room")

    started = time.monotonic()
    with pytest.raises(LookupError, match="no room"):
        run(spec("sh", "-c", f"echo x; sleep 30; : {marker}", on_output=refuse))
    assert time.monotonic() - started < 5.0
    time.sleep(0.2)
    assert alive_with_marker(marker) == []
