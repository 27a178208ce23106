"""Running without an event loop, for one-shot synchronous callers such as the CLI.

Starting an event loop costs a short-lived process more than the run it serves: importing
asyncio and anyio's backend takes tens of milliseconds. `BlockingHelperRunner` waits for
its runs in the calling thread (`selectors`) instead of awaiting, so that a backend's whole
`run` coroutine finishes without ever suspending, and `complete` runs such a coroutine to
its end without a loop. The spawn helper, its whole-tree kill and its teardown when the
host goes away are the same as for `HelperProcessRunner`; only the waiting differs.

Only for callers that own the thread: inside an event loop this runner would stall the
loop for the whole run (and a backend that needs the loop for something else, such as the
allowlist proxy, would never get it). Use `HelperProcessRunner` there.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from returns.result import Failure, Result

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.runner import framing
from mechasandbox.runner.capture import CappedBuffer
from mechasandbox.runner.client import SpawnHelperClient
from mechasandbox.runner.spec import WATCH_INTERVAL_S, ProcessOutcome, SpawnSpec
from mechasandbox.runner.submission import (
    DRAIN_GRACE_S,
    READ_CHUNK,
    Submitted,
    is_last_word,
    outcome_of,
    request_kill,
    submit,
)

T = TypeVar("T")


class SuspendedError(RuntimeError):
    """`complete` was given a coroutine that waited for something only an event loop gives."""


def complete(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end without an event loop.

    For calls that never suspend, such as a backend's `run` whose runner blocks. One that
    suspends anyway is closed at once (its `finally` blocks run, as on cancellation; a run
    socket closing makes the helper kill that run's tree) and `SuspendedError` is raised.
    anyio functions called without a loop raise before they could suspend.
    """
    try:
        coroutine.send(None)
    except StopIteration as finished:
        value: T = finished.value
        return value
    coroutine.close()
    raise SuspendedError("this call needs an event loop (run it with anyio.run)")


def _wait_for_last_word(sock: socket.socket) -> dict[str, Any]:
    while True:
        message, _ = framing.receive(sock)
        if is_last_word(message):
            return message


class _Supervision:
    """One run's wait: output pumped into capped buffers, input fed, the helper's messages
    read, the deadline kept; all from one `select` loop in the calling thread."""

    def __init__(self, spec: SpawnSpec, run: Submitted) -> None:
        self.spec = spec
        self.run = run
        self.out = CappedBuffer(spec.max_output_bytes)
        self.err = CappedBuffer(spec.max_output_bytes)
        self.pending = memoryview(spec.stdin or b"")
        self.last: dict[str, Any] | None = None
        self.timed_out = False
        self.stopped: str | None = None  # the reason `spec.watch` gave, if it did
        self.next_watch = None if spec.watch is None else run.started + WATCH_INTERVAL_S
        self.selector = selectors.DefaultSelector()

    def _stop_feeding(self) -> None:
        if self.run.stdin_w is not None:
            self.selector.unregister(self.run.stdin_w)
            if not self.spec.hold_stdin:  # else it stays open until the run is over
                self.run.close_stdin()

    def _feed(self) -> None:
        fd = self.run.stdin_w
        if fd is None:
            return
        try:
            written = os.write(fd, self.pending)
        except BlockingIOError:
            return
        except BrokenPipeError:
            written = len(self.pending)  # the command stopped reading; not an error of ours
        self.pending = self.pending[written:]
        if not self.pending:
            self._stop_feeding()

    def _pump(self, fd: int, buffer: CappedBuffer) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            buffer.feed(data)
        else:
            self.selector.unregister(fd)

    def _on_message(self) -> None:
        message, _ = framing.receive(self.run.sock)
        if is_last_word(message):
            self.last = message
            self.selector.unregister(self.run.sock)

    def _timeout(self, deadline: float | None, drain_until: float | None) -> float | None:
        now = time.monotonic()
        if self.last is None:
            due = [t for t in (deadline, self.next_watch) if t is not None]
            return max(0.0, min(due) - now) if due else None
        return None if drain_until is None else max(0.0, drain_until - now)

    def _watched(self) -> bool:
        """Calls `spec.watch` when due: True when it gave a reason to stop the run."""
        if self.next_watch is None or self.spec.watch is None:
            return False
        now = time.monotonic()
        if now < self.next_watch:
            return False
        self.next_watch = now + WATCH_INTERVAL_S
        self.stopped = self.spec.watch()
        if self.stopped is None:
            return False
        self.next_watch = None
        return True

    def wait(self) -> dict[str, Any]:
        """Until the helper's last word and EOF on the output (bounded by the grace period
        once the process is gone); a deadline passed asks the helper to kill the tree."""
        run = self.run
        selector = self.selector
        selector.register(run.sock, selectors.EVENT_READ)
        selector.register(run.out_r, selectors.EVENT_READ, self.out)
        selector.register(run.err_r, selectors.EVENT_READ, self.err)
        if run.stdin_w is not None and self.pending:
            selector.register(run.stdin_w, selectors.EVENT_WRITE)
        elif not self.spec.hold_stdin:
            run.close_stdin()
        timeout_s = self.spec.timeout_s
        deadline = None if timeout_s is None else run.started + timeout_s
        drain_until: float | None = None
        while True:
            if self.last is not None:
                if drain_until is None:
                    drain_until = time.monotonic() + DRAIN_GRACE_S
                drained = not {run.out_r, run.err_r} & set(selector.get_map())
                if drained or time.monotonic() >= drain_until:
                    return self.last
            elif deadline is not None and time.monotonic() >= deadline:
                self.timed_out = True
                deadline = self.next_watch = None
                request_kill(run.sock)  # then wait for its last word, however long
            elif self._watched():
                deadline = None
                request_kill(run.sock)
            for key, _events in selector.select(self._timeout(deadline, drain_until)):
                if key.fd == run.sock.fileno():
                    self._on_message()
                elif key.fd == run.stdin_w:
                    self._feed()
                else:
                    self._pump(key.fd, key.data)

    def close(self) -> None:
        self.selector.close()


class BlockingHelperRunner:
    """A `ProcessRunner` whose `run` never suspends: it waits in the calling thread (see the
    module's docstring for where it fits). It asks for no warm children: a one-shot caller
    has no next run to prepare them for."""

    def __init__(self, helper: SpawnHelperClient | None = None, *, prestart: bool = True) -> None:
        """`helper`: a client to share (its helper may already be starting); `prestart`:
        start the helper now, so that its start-up overlaps with the caller's own."""
        self._helper = helper or SpawnHelperClient()
        if prestart:
            self._helper.prestart()

    def close(self) -> None:
        """Kill every run still going and stop the helper."""
        self._helper.close()

    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        return self.run_blocking(spec)

    def run_blocking(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        submitted = submit(self._helper, spec)
        if isinstance(submitted, Failure):
            return Failure(submitted.failure())
        run = submitted.unwrap()
        supervision = _Supervision(spec, run)
        try:
            try:
                last = supervision.wait()
            except BaseException:
                # Interrupted (Ctrl-C) or broken: the tree dies before control goes back.
                # Should this wait be interrupted too, closing the run's socket below
                # still makes the helper kill the tree.
                if supervision.last is None:
                    request_kill(run.sock)
                    _wait_for_last_word(run.sock)
                raise
            return outcome_of(
                spec,
                last,
                supervision.out,
                supervision.err,
                started=run.started,
                timed_out=supervision.timed_out,
                stopped=supervision.stopped,
            )
        finally:
            supervision.close()
            run.close()
