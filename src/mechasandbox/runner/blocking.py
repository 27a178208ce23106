"""Running without an event loop, for one-shot synchronous callers such as the CLI.

Starting an event loop costs a short-lived process more than the run it serves: importing
asyncio and anyio's backend takes tens of milliseconds. `BlockingHelperRunner` waits for
its runs in the calling thread (`selectors`) instead of awaiting, so that a backend's whole
`run` coroutine finishes without ever suspending, and `complete` runs such a coroutine to
its end without a loop. The spawn helper, its whole-tree kill, its teardown when the host
goes away, and every decision taken during a run (`supervision`) are the same as for
`HelperProcessRunner`; only the waiting differs.

Only for callers that own the thread: inside an event loop this runner would stall the
loop for the whole run (and a backend that needs the loop for something else, such as the
allowlist proxy, would never get it). Use `HelperProcessRunner` there.
"""

from __future__ import annotations

import contextlib
import math
import selectors
import socket
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from returns.result import Failure, Result

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.runner import framing
from mechasandbox.runner.feed import InputFeed
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec
from mechasandbox.runner.submission import HelpedRunner, Submitted, request_kill, submit
from mechasandbox.runner.supervision import STDERR, STDOUT, Supervision

T = TypeVar("T")


class SuspendedError(RuntimeError):
    """`complete` was given a coroutine that waited for something only an event loop gives."""


def complete(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end without an event loop, or raise `SuspendedError`.

    Why this is sound: an event loop acts only when a coroutine suspends, that is when the
    innermost `await` reaches an awaitable that yields to the loop (a future, a sleep, a
    wait for a file descriptor, a lock). Awaiting a coroutine that does not suspend is an
    ordinary call. So when one `send(None)` runs the coroutine to its end, it has done
    exactly what it would have done under any loop, and its value or exception is the one
    a loop would give.

    What the coroutine may await, then: coroutines that await nothing but such coroutines,
    down to a `BlockingHelperRunner.run` (which waits in this thread and returns without
    suspending): a `Sandbox.run_async` on a backend that runs its commands through that
    runner and needs no loop for anything else (`backends.catalog.LOOPLESS`). Not: anything
    of anyio or asyncio that waits (sleeps, locks, task groups, threads, I/O), nor a runner
    that awaits (`HelperProcessRunner`).

    Failing loudly: anyio functions called without a loop raise at once (no async library
    is found), and that error propagates. Anything else that suspends is refused at its
    first suspension: the coroutine is closed then and there (its `finally` blocks run, as
    on cancellation; a run socket closing makes the helper kill that run's tree), and
    `SuspendedError` names what it awaited. It is raised even if closing fails (a `finally`
    that awaits too); that failure is then its `__cause__`.
    """
    try:
        awaited = coroutine.send(None)
    except StopIteration as finished:
        value: T = finished.value
        return value
    error = SuspendedError(
        f"this call needs an event loop (run it with anyio.run): it awaited {awaited!r}"
    )
    try:
        coroutine.close()
    except BaseException as failure:
        raise error from failure
    raise error


def _receive(sock: socket.socket, supervision: Supervision) -> None:
    message, _ = framing.receive(sock)
    supervision.message(message, now=time.monotonic())


def _wait(run: Submitted, supervision: Supervision, selector: selectors.BaseSelector) -> None:
    """Until the run is over (see `Supervision.done`): output pumped, input fed, the helper's
    messages read, the kill the supervision calls for asked; all from one `select` loop."""
    selector.register(run.sock, selectors.EVENT_READ)
    selector.register(run.out_r, selectors.EVENT_READ, STDOUT)
    selector.register(run.err_r, selectors.EVENT_READ, STDERR)
    feed = InputFeed(run.stdin, supervision.spec.stdin)
    feeding: dict[int, int] = {}  # the feed's descriptors watched now, with their events
    while not supervision.done(now := time.monotonic()):
        if supervision.tick(now):
            request_kill(run.sock)  # then wait for its last word, however long
        if feed.wants_source() and not feed.polled:
            feed.read_source()
        _watch_feed(selector, feed, feeding)
        wake_at = supervision.wake_at()
        timeout = None if wake_at == math.inf else max(0.0, wake_at - time.monotonic())
        for key, _events in selector.select(timeout):
            if key.data is _SOURCE:
                feed.read_source()
            elif key.data is _PIPE:
                feed.write_pipe()
            elif key.fd == run.sock.fileno():
                _receive(run.sock, supervision)
                if supervision.last is not None:
                    selector.unregister(run.sock)
            else:
                data = run.read(key.fd)
                if data is not None:
                    supervision.output(key.data, data)
                    if not data:
                        selector.unregister(key.fd)


_SOURCE = "source"
_PIPE = "pipe"


def _watch_feed(selector: selectors.BaseSelector, feed: InputFeed, feeding: dict[int, int]) -> None:
    """Watch the feed's descriptors for what it waits for now, and only those (the pipe
    may be closed meanwhile: it is forgotten without asking the selector)."""
    wanted: dict[int, tuple[int, str]] = {}
    if feed.wants_pipe() and feed.pipe.fd is not None:
        wanted[feed.pipe.fd] = (selectors.EVENT_WRITE, _PIPE)
    elif feed.wants_source() and feed.polled and feed.source is not None:
        wanted[feed.source] = (selectors.EVENT_READ, _SOURCE)
    for fd in [fd for fd in feeding if fd not in wanted]:
        del feeding[fd]
        with contextlib.suppress(KeyError, ValueError, OSError):
            selector.unregister(fd)
    for fd, (events, role) in wanted.items():
        if fd not in feeding:
            selector.register(fd, events, role)
            feeding[fd] = events


class BlockingHelperRunner(HelpedRunner):
    """A `ProcessRunner` whose `run` never suspends: it waits in the calling thread (see the
    module's docstring for where it fits). It asks for no warm children: a one-shot caller
    has no next run to prepare them for."""

    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        return self.run_blocking(spec)

    def run_blocking(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        submitted = submit(self._helper, spec)
        if isinstance(submitted, Failure):
            return Failure(submitted.failure())
        run = submitted.unwrap()
        supervision = Supervision(spec, now=run.started)
        selector = selectors.DefaultSelector()
        interruption = self._interruption
        if interruption is not None:
            interruption.enter(supervision, run.sock)
        try:
            try:
                _wait(run, supervision, selector)
            except BaseException:
                # Interrupted (Ctrl-C) or broken: the tree dies before control goes back.
                # Should this wait be interrupted too, closing the run's socket below
                # still makes the helper kill the tree.
                if supervision.last is None:
                    request_kill(run.sock)
                    while supervision.last is None:
                        _receive(run.sock, supervision)
                raise
            return supervision.outcome(duration_s=run.elapsed())
        finally:
            if interruption is not None:
                interruption.leave(supervision)
            selector.close()
            run.close()
