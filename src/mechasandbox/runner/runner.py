"""The one place that spawns processes: anyio, capped capture, timeouts, whole-tree kill."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.result import Usage
from mechasandbox.runner import framing
from mechasandbox.runner.capture import CappedBuffer
from mechasandbox.runner.client import HelperUnavailable, SpawnHelperClient
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

# After the process exits, its leftovers are killed by the helper, so the pipes reach EOF
# at once; this bound only matters if something unexpected still holds a pipe open.
_DRAIN_GRACE_S = 2.0
_READ_CHUNK = 256 * 1024


class ProcessRunner(Protocol):
    """Spawns one process per call and reports how it ended. Injected into every backend."""

    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]: ...

    def close(self) -> None: ...


@runtime_checkable
class PreparesCgroups(Protocol):
    """A runner that can start the child of a later run ahead of time, already inside the
    cgroup it will use (joining one can take a kernel grace period, 5-15 ms on cgroup v1).
    Each group: the cgroup.procs files of one run's cgroup (one per v1 hierarchy). A hint:
    a runner may ignore it."""

    def prepare_cgroups(self, groups: Sequence[tuple[str, ...]]) -> None: ...


def _spawn_request(spec: SpawnSpec) -> dict[str, Any]:
    return {
        "argv": list(spec.argv),
        "env": [list(pair) for pair in spec.env],
        "cwd": spec.cwd,
        "umask": spec.umask,
        "rlimits": [[r.resource, r.soft, r.hard] for r in spec.rlimits],
        "cgroup_procs": list(spec.cgroup_procs),
        "hooks": [[h.target, h.argument] for h in spec.hooks],
        "executable": spec.executable,
    }


def _spawn_failure(spec: SpawnSpec, code: int, stage: str) -> SpawnFailed:
    command = spec.argv[0]
    if stage == "exec" and code == errno.ENOENT:
        return SpawnFailed(command=command, reason="command not found", exit_status=127)
    reason = f"{os.strerror(code)} (while setting up: {stage})"
    if stage == "exec":
        reason = f"not executable: {os.strerror(code)}"
    return SpawnFailed(command=command, reason=reason, exit_status=126)


async def _receive(sock: socket.socket) -> dict[str, Any]:
    await anyio.wait_readable(sock)
    message, _ = framing.receive(sock)
    return message


async def _until_end(sock: socket.socket) -> dict[str, Any]:
    """The helper's last word on a run: `exited` or `failed` (`started` comes before
    `exited` and is skipped)."""
    while True:
        message = await _receive(sock)
        if message.get("event") in ("exited", "failed"):
            return message


async def _pump(fd: int, buffer: CappedBuffer) -> None:
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            continue
        if not data:
            return
        buffer.feed(data)


async def _feed(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            await anyio.wait_writable(fd)
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                continue
            except BrokenPipeError:
                return  # the command stopped reading; not an error of ours
            view = view[written:]
    finally:
        os.close(fd)


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

    def prepare_cgroups(self, groups: Sequence[tuple[str, ...]]) -> None:
        self._helper.prepare(groups)

    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        local: list[int] = []
        remote: list[int] = []
        try:
            if spec.stdin is None:
                remote.append(os.open(os.devnull, os.O_RDONLY))
                stdin_w = None
            else:
                stdin_r, stdin_w = os.pipe()
                remote.append(stdin_r)
                local.append(stdin_w)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            remote += [out_w, err_w]
            local += [out_r, err_r]
            for fd in local:
                os.set_blocking(fd, False)
            started = time.monotonic()
            try:
                sock = self._helper.submit(_spawn_request(spec), remote)
            except (HelperUnavailable, framing.FrameError) as error:
                return Failure(SpawnFailed(command=spec.argv[0], reason=str(error)))
            finally:
                for fd in remote:
                    os.close(fd)
                remote.clear()
            if stdin_w is not None:
                local.remove(stdin_w)  # the feeder closes it
            with sock:
                return await self._supervise(spec, sock, stdin_w, out_r, err_r, started)
        finally:
            for fd in local:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _supervise(
        self,
        spec: SpawnSpec,
        sock: socket.socket,
        stdin_w: int | None,
        out_r: int,
        err_r: int,
        started: float,
    ) -> Result[ProcessOutcome, SpawnFailed]:
        """Pump the output from submission on; the helper answers once the process is gone
        (`failed` if it never exec'd, else `started` then `exited`)."""
        out = CappedBuffer(spec.max_output_bytes)
        err = CappedBuffer(spec.max_output_bytes)
        timed_out = False
        exited: dict[str, Any] = {}
        try:
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(_pump, out_r, out)
                pumps.start_soon(_pump, err_r, err)
                if stdin_w is not None:
                    pumps.start_soon(_feed, stdin_w, spec.stdin or b"")
                with anyio.move_on_after(spec.timeout_s) as deadline:
                    exited = await _until_end(sock)
                if deadline.cancelled_caught:
                    timed_out = True
                    exited = await self._kill_and_wait(sock)
                # Leave the pumps until EOF, bounded by the grace period.
                pumps.cancel_scope.deadline = anyio.current_time() + _DRAIN_GRACE_S
        except BaseException:
            # The caller's scope was cancelled (or something broke): the tree must die
            # before we give control back, whatever happens to the await that follows.
            if not exited:
                with anyio.CancelScope(shield=True):
                    await self._kill_and_wait(sock)
            raise
        if exited.get("event") == "failed":
            return Failure(_spawn_failure(spec, int(exited["errno"]), str(exited["stage"])))
        duration = time.monotonic() - started
        status = int(exited["status"])
        return Success(
            ProcessOutcome(
                exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                stdout=out.value(),
                stderr=err.value(),
                stdout_truncated=out.truncated,
                stderr_truncated=err.truncated,
                duration_s=duration,
                usage=Usage(
                    cpu_s=float(exited["cpu_s"]), max_rss_bytes=int(exited["max_rss_bytes"])
                ),
                timed_out=timed_out,
            )
        )

    @staticmethod
    async def _kill_and_wait(sock: socket.socket) -> dict[str, Any]:
        with contextlib.suppress(OSError):
            framing.send(sock, {"op": "kill"})
        with anyio.CancelScope(shield=True):
            message = await _until_end(sock)
        return message
