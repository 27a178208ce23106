"""How `Sandbox` hands a run's events to its caller: callbacks as the output comes
(`OutputRelay`), or an async iterator of every event, the result last (`events_of`).

See `domain.events` for the events. No event loop is imported at module level: the CLI's
one-shot path relays output without one.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from returns.result import Result

from mechasandbox.domain.errors import SandboxError
from mechasandbox.domain.events import (
    OutputEvent,
    OutputSink,
    RunEvent,
    closing_events,
    shown,
)
from mechasandbox.domain.result import RunResult

Chunks = Callable[[bytes], None]
Run = Callable[[OutputSink], Awaitable[Result[RunResult, SandboxError]]]


class OutputRelay:
    """The `on_output` of one run: passes each chunk on to `deliver` as it comes, and counts
    them, so that `finish` can pass on, from the result, the output a backend did not
    stream (one that ignores `RunRequest.on_output` gives all of it at the end). A caller
    then sees every chunk the result holds exactly once, whatever the backend."""

    def __init__(self, deliver: OutputSink) -> None:
        self._deliver = deliver
        self._sent = {"stdout": 0, "stderr": 0}
        # What `deliver` raised: it stopped the run, and is what the caller gets (see
        # `raised`), however the backend passed it on.
        self.failure: Exception | None = None

    @staticmethod
    def of_callbacks(on_stdout: Chunks | None, on_stderr: Chunks | None) -> OutputRelay | None:
        """A relay to `on_stdout`/`on_stderr` (called with each chunk's bytes); None for
        neither."""
        if on_stdout is None and on_stderr is None:
            return None

        def deliver(event: OutputEvent) -> None:
            callback = on_stdout if event.stream == "stdout" else on_stderr
            if callback is not None:
                callback(event.data)

        return OutputRelay(deliver)

    def __call__(self, event: OutputEvent) -> None:
        self._sent[event.stream] += len(event.data)
        try:
            self._deliver(event)
        except Exception as error:
            self.failure = error
            raise

    async def raised(
        self, run: Awaitable[Result[RunResult, SandboxError]]
    ) -> Result[RunResult, SandboxError]:
        """`run`, awaited; should the run fail because `deliver` raised, that exception
        itself, not what a backend wrapped it in (a task group's exception group)."""
        try:
            return await run
        except Exception:
            if self.failure is not None:
                raise self.failure from None
            raise

    def finish(self, value: Result[RunResult, SandboxError]) -> None:
        run = shown(value)
        if run is None:
            return
        for event in (OutputEvent("stdout", run.stdout), OutputEvent("stderr", run.stderr)):
            rest = event.data[self._sent[event.stream] :]
            if rest:
                self(OutputEvent(event.stream, rest))


async def events_of(run: Run) -> AsyncGenerator[RunEvent, None]:
    """The events of `run` (called with the sink its output goes to), the result last.

    The run goes on in a task of its own, not in a task group of this generator: a
    generator suspended at a `yield` inside a cancel scope would leave that scope in its
    consumer's task (anyio cannot tell the consumer's scopes from it then), so a consumer
    could not `break` out of its loop safely. Here it can: closing the generator (the end
    of an `async with contextlib.aclosing(...)`, or its collection) cancels the run, whose
    tree is killed, and waits for that. Events wait in memory for the consumer; the
    output cap bounds them.
    """
    import anyio

    send, receive = anyio.create_memory_object_stream[RunEvent](math.inf)
    stop = anyio.CancelScope()
    ended = anyio.Event()
    failures: list[Exception] = []

    async def produce() -> None:
        try:
            with send, stop:
                relay = OutputRelay(send.send_nowait)
                value = await relay.raised(run(relay))
                relay.finish(value)
                for event in closing_events(value):
                    send.send_nowait(event)
        except Exception as error:  # given to the consumer, whose call this is
            failures.append(error)
        finally:
            ended.set()

    _spawn_detached(produce)
    try:
        with receive:
            async for event in receive:
                yield event
        if failures:
            raise failures[0]
    finally:
        stop.cancel()
        with anyio.CancelScope(shield=True):
            await ended.wait()


_DETACHED: set[Any] = set()  # the asyncio tasks of runs going on (asyncio keeps weak ones)


def _spawn_detached(producer: Callable[[], Awaitable[None]]) -> None:
    """Start `producer` in a task of the event loop's own (see `events_of` for why); anyio
    has no such call, so by the loop anyio runs on: asyncio, or else trio."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import importlib

        trio: Any = importlib.import_module("trio")  # the only other loop anyio runs on
        trio.lowlevel.spawn_system_task(producer)
        return

    async def task() -> None:
        await producer()

    started = loop.create_task(task())
    _DETACHED.add(started)
    started.add_done_callback(_DETACHED.discard)
