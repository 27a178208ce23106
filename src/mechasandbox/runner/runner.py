"""The one place that spawns processes: anyio, capped capture, timeouts, whole-tree kill."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence

import anyio
from returns.result import Failure, Result

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.request import StreamedInput
from mechasandbox.runner import framing
from mechasandbox.runner.feed import InputFeed, StdinPipe
from mechasandbox.runner.protocol import PreparesCgroups, ProcessRunner
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec
from mechasandbox.runner.submission import (
    HelpedRunner,
    Submitted,
    request_kill,
    spawn_request,
    submit,
)
from mechasandbox.runner.supervision import STDERR, STDOUT, Supervision

__all__ = ["HelperProcessRunner", "PreparesCgroups", "ProcessRunner", "feed_fifo"]


async def _receive(sock: socket.socket, supervision: Supervision) -> None:
    await anyio.wait_readable(sock)
    message, _ = framing.receive(sock)
    supervision.message(message, now=anyio.current_time())


async def _pump(run: Submitted, fd: int, stream: int, supervision: Supervision) -> None:
    while True:
        await anyio.wait_readable(fd)
        data = run.read(fd)
        if data is not None:
            supervision.output(stream, data)
            if supervision.tick(anyio.current_time()):  # `on_output` raised: stop the run
                request_kill(run.sock)
            if not data:
                return


async def _feed(feed: InputFeed) -> None:
    """Feed a run's stdin (see `feed`) until there is nothing more; the run's end cancels it."""
    while not feed.done:
        if feed.wants_pipe() and feed.pipe.fd is not None:
            await anyio.wait_writable(feed.pipe.fd)
            feed.write_pipe()
        else:
            if feed.polled and feed.source is not None:
                await anyio.wait_readable(feed.source)
            feed.read_source()


async def feed_within(feed: InputFeed, scope: anyio.CancelScope) -> None:
    """Feed `feed` (see `_feed`) until done or until `scope` is cancelled (the run ended)."""
    with scope:
        await _feed(feed)


async def feed_fifo(path: str, stdin: StreamedInput) -> None:
    """Feed `stdin` into the FIFO at `path`, opened for writing once something opened it
    for reading (checked every `FIFO_POLL_S`: a FIFO gives no other sign), until the input
    ends or the caller cancels this (when the run is over). For a process whose input is a
    FIFO it opens rather than its stdin: a container whose stdin is its lifeline (see
    `backends.oci.lifeline`)."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except OSError as error:
            if error.errno != errno.ENXIO:  # not our FIFO any more: nothing to feed
                return
        await anyio.sleep(FIFO_POLL_S)
    pipe = StdinPipe(fd)
    try:
        await _feed(InputFeed(pipe, stdin))
    finally:
        pipe.close()


FIFO_POLL_S = 0.02


async def _until_last_word(run: Submitted, supervision: Supervision) -> None:
    """Wait for the helper's messages, keeping the deadline and the watch: the wait is cut
    at `wake_at` (no task of its own: a run that ends before costs nothing more). Once a
    kill is asked for, its answer is waited for whatever happens to the caller's scope."""
    while supervision.last is None:
        with anyio.CancelScope(deadline=supervision.wake_at(), shield=supervision.killing):
            await _receive(run.sock, supervision)
        if supervision.tick(anyio.current_time()):
            request_kill(run.sock)


class HelperProcessRunner(HelpedRunner):
    """Runs processes through the spawn helper (see `helper` for why)."""

    def prepare_cgroups(
        self, groups: Sequence[tuple[str, ...]], like: SpawnSpec | None = None
    ) -> None:
        self._helper.prepare(groups, spawn_request(like) if like is not None else None)

    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        submitted = submit(self._helper, spec)
        if isinstance(submitted, Failure):
            return Failure(submitted.failure())
        run = submitted.unwrap()
        try:
            return await self._supervise(spec, run)
        finally:
            run.close()

    async def _supervise(
        self, spec: SpawnSpec, run: Submitted
    ) -> Result[ProcessOutcome, SpawnFailed]:
        """Pump the output from submission on; the helper answers once the process is gone
        (`failed` if it never exec'd, else `started` then `exited`)."""
        supervision = Supervision(spec, now=anyio.current_time())
        interruption = self._interruption
        if interruption is not None:
            interruption.enter(supervision, run.sock)
        try:
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(_pump, run, run.out_r, STDOUT, supervision)
                pumps.start_soon(_pump, run, run.err_r, STDERR, supervision)
                feed = InputFeed(run.stdin, spec.stdin)
                feeding = anyio.CancelScope()
                if not feed.done:
                    pumps.start_soon(feed_within, feed, feeding)
                await _until_last_word(run, supervision)
                feeding.cancel()  # what the source still holds is no longer wanted
                # Leave the pumps until EOF, bounded by the grace period.
                pumps.cancel_scope.deadline = supervision.wake_at()
        except BaseException:
            # The caller's scope was cancelled (or something broke): the tree must die
            # before we give control back, whatever happens to the await that follows.
            if supervision.last is None:
                with anyio.CancelScope(shield=True):
                    request_kill(run.sock)
                    while supervision.last is None:
                        await _receive(run.sock, supervision)
            raise
        finally:
            if interruption is not None:
                interruption.leave(supervision)
        return supervision.outcome(duration_s=run.elapsed())
