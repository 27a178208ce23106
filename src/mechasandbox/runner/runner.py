"""The one place that spawns processes: anyio, capped capture, timeouts, whole-tree kill."""

from __future__ import annotations

import functools
import math
import os
import socket
from collections.abc import Sequence
from typing import Any

import anyio
from returns.result import Failure, Result

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.runner import framing
from mechasandbox.runner.capture import CappedBuffer
from mechasandbox.runner.client import SpawnHelperClient
from mechasandbox.runner.protocol import PreparesCgroups, ProcessRunner
from mechasandbox.runner.spec import WATCH_INTERVAL_S, ProcessOutcome, SpawnSpec
from mechasandbox.runner.submission import (
    DRAIN_GRACE_S,
    READ_CHUNK,
    Submitted,
    is_last_word,
    outcome_of,
    request_kill,
    spawn_request,
    submit,
)

__all__ = ["HelperProcessRunner", "PreparesCgroups", "ProcessRunner"]


async def _receive(sock: socket.socket) -> dict[str, Any]:
    await anyio.wait_readable(sock)
    message, _ = framing.receive(sock)
    return message


async def _until_end(sock: socket.socket) -> dict[str, Any]:
    """The helper's last word on a run (see `is_last_word`)."""
    while True:
        message = await _receive(sock)
        if is_last_word(message):
            return message


async def _pump(fd: int, buffer: CappedBuffer) -> None:
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            continue
        if not data:
            return
        buffer.feed(data)


async def _feed(run: Submitted, data: bytes, *, hold: bool = False) -> None:
    """Write `data`, then close the pipe (`hold`: leave it open until the run is over)."""
    fd = run.stdin_w
    view = memoryview(data)
    try:
        while view and fd is not None:
            await anyio.wait_writable(fd)
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                continue
            except BrokenPipeError:
                return  # the command stopped reading; not an error of ours
            view = view[written:]
    finally:
        if not hold:
            run.close_stdin()


class HelperProcessRunner:
    """Runs processes through the spawn helper (see `helper` for why)."""

    def __init__(self, helper: SpawnHelperClient | None = None, *, prestart: bool = True) -> None:
        """`prestart`: start the spawn helper now, so that its start-up overlaps with the
        host's own (imports, probes, policy compilation) instead of delaying the first run."""
        self._helper = helper or SpawnHelperClient()
        if prestart:
            self._helper.prestart()

    def close(self) -> None:
        """Kill every run still going and stop the helper."""
        self._helper.close()

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
        out = CappedBuffer(spec.max_output_bytes)
        err = CappedBuffer(spec.max_output_bytes)
        timed_out = False
        stopped: str | None = None
        exited: dict[str, Any] = {}
        try:
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(_pump, run.out_r, out)
                pumps.start_soon(_pump, run.err_r, err)
                if run.stdin_w is not None:
                    pumps.start_soon(
                        functools.partial(_feed, hold=spec.hold_stdin), run, spec.stdin or b""
                    )
                exited, timed_out, stopped = await self._until_end_or_stop(spec, run)
                # Leave the pumps until EOF, bounded by the grace period.
                pumps.cancel_scope.deadline = anyio.current_time() + DRAIN_GRACE_S
        except BaseException:
            # The caller's scope was cancelled (or something broke): the tree must die
            # before we give control back, whatever happens to the await that follows.
            if not exited:
                with anyio.CancelScope(shield=True):
                    await self._kill_and_wait(run.sock)
            raise
        return outcome_of(
            spec,
            exited,
            out,
            err,
            started=run.started,
            timed_out=timed_out,
            stopped=stopped,
        )

    async def _until_end_or_stop(
        self, spec: SpawnSpec, run: Submitted
    ) -> tuple[dict[str, Any], bool, str | None]:
        """The helper's last word, (that, timed out, the watch's reason to stop). The wait
        is cut into steps of `WATCH_INTERVAL_S` only when there is a watch (no task of its
        own: a run shorter than a step costs nothing more)."""
        now = anyio.current_time()
        deadline = math.inf if spec.timeout_s is None else now + spec.timeout_s
        while True:
            step_end = deadline
            if spec.watch is not None:
                step_end = min(deadline, anyio.current_time() + WATCH_INTERVAL_S)
            with anyio.CancelScope(deadline=step_end):
                return await _until_end(run.sock), False, None
            if anyio.current_time() >= deadline:  # the step ran out: the deadline, or a look
                return await self._kill_and_wait(run.sock), True, None
            reason = spec.watch() if spec.watch is not None else None
            if reason is not None:
                return await self._kill_and_wait(run.sock), False, reason

    @staticmethod
    async def _kill_and_wait(sock: socket.socket) -> dict[str, Any]:
        request_kill(sock)
        with anyio.CancelScope(shield=True):
            message = await _until_end(sock)
        return message
