"""One run's supervision without I/O: what both helper runners decide while a run goes on.

The runners differ only in how they wait (`runner`: anyio tasks and cancel scopes;
`blocking`: one `select` loop in the calling thread). Everything else is decided here, from
the events they feed in: output read (or its end), a message from the helper on the run's
socket, the time passing, an interruption (`interrupt`, called by `runner.interruption`).
`Supervision` says until when its driver may wait without calling `tick` (`wake_at`),
whether the helper must be asked to kill the run's tree now (`tick`: the deadline passed,
the spec's `watch` gave a reason, or its `on_output` raised; `interrupt`: the caller is
going away), when the run is over (`done`), and builds the outcome. It passes the output
it keeps on to the spec's `on_output`, and reads and writes no file descriptor and reads no
clock: every time is one of its driver's (anyio's clock, or `time.monotonic`).

No event loop is imported here: the CLI's one-shot path uses it (see `blocking`).
"""

from __future__ import annotations

import errno
import math
import os
from typing import Any

from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.events import OutputEvent
from mechasandbox.domain.result import Usage
from mechasandbox.runner.capture import CappedBuffer
from mechasandbox.runner.spec import WATCH_INTERVAL_S, ProcessOutcome, SpawnSpec

# After the process exits, its leftovers are killed by the helper, so the pipes reach EOF
# at once; this bound only matters if something unexpected still holds a pipe open.
DRAIN_GRACE_S = 2.0
# The output streams, named by their fd in the child.
STDOUT = 1
STDERR = 2


def spawn_failure(spec: SpawnSpec, code: int, stage: str) -> SpawnFailed:
    command = spec.argv[0]
    if stage == "exec" and code == errno.ENOENT:
        return SpawnFailed(command=command, reason="command not found", exit_status=127)
    reason = f"{os.strerror(code)} (while setting up: {stage})"
    if stage == "exec":
        reason = f"not executable: {os.strerror(code)}"
    return SpawnFailed(command=command, reason=reason, exit_status=126)


class Supervision:
    """One run from its submission on, fed with events by a runner (see the module's
    docstring). `now`: the time of the start, in the driver's clock (the deadline counts
    from it)."""

    def __init__(self, spec: SpawnSpec, *, now: float) -> None:
        self.spec = spec
        self.out = CappedBuffer(spec.max_output_bytes)
        self.err = CappedBuffer(spec.max_output_bytes)
        # The helper's last word on the run: `exited` or `failed` (it never exec'd).
        self.last: dict[str, Any] | None = None
        self.killing = False  # the helper was asked to kill the tree (by `tick`)
        self.timed_out = False
        self.stopped: str | None = None  # the reason `spec.watch` gave, if it did
        self.interrupted: int | None = None  # the signal that told the caller to stop
        # What `spec.on_output` raised, if it did: the run is stopped as at its deadline.
        self.sink_failure: Exception | None = None
        self._deadline = math.inf if spec.timeout_s is None else now + spec.timeout_s
        self._next_watch = math.inf if spec.watch is None else now + WATCH_INTERVAL_S
        self._open = {STDOUT, STDERR}  # the streams not at their end yet
        self._drain_until = math.inf

    # --- events -----------------------------------------------------------------------
    def output(self, stream: int, data: bytes) -> None:
        """`data` read from `stream` (`STDOUT` or `STDERR`); b"" is its end. What the cap
        keeps goes to the spec's `on_output` too, at once."""
        if not data:
            self._open.discard(stream)
            return
        kept = (self.out if stream == STDOUT else self.err).feed(data)
        if kept and self.spec.on_output is not None and self.sink_failure is None:
            try:
                self.spec.on_output(OutputEvent("stdout" if stream == STDOUT else "stderr", kept))
            except Exception as error:  # the caller's: raised by `outcome`, once all is over
                self.sink_failure = error

    def message(self, message: dict[str, Any], *, now: float) -> None:
        """A frame from the helper on the run's socket. Its last word (`exited` or `failed`)
        ends the run; the output is then waited for `DRAIN_GRACE_S` at the most. (`started`
        comes before `exited`, and says nothing the outcome needs.)"""
        if self.last is None and message.get("event") in ("exited", "failed"):
            self.last = message
            self._drain_until = now + DRAIN_GRACE_S

    def tick(self, now: float) -> bool:
        """Time passed (call it at `wake_at` at the latest; sooner does no harm): True when
        the helper must be asked to kill the run's tree now, because the deadline passed
        (`timed_out`), the spec's `watch`, called every `WATCH_INTERVAL_S`, gave a reason
        to stop (`stopped`), or its `on_output` raised (`sink_failure`; call `tick` after
        `output` for it: `wake_at` is now then). True once at most: then the last word is
        waited for, however long it takes."""
        if self.last is not None or self.killing:
            return False
        if self.sink_failure is not None:
            pass
        elif now >= self._deadline:
            self.timed_out = True
        elif now >= self._next_watch and self.spec.watch is not None:
            self._next_watch = now + WATCH_INTERVAL_S
            self.stopped = self.spec.watch()
            if self.stopped is None:
                return False
        else:
            return False
        self.killing = True
        return True

    def interrupt(self, signum: int) -> bool:
        """The caller was told to stop by `signum` (see `runner.interruption`): True when
        the helper must be asked to kill the run's tree now, as for `tick` (False once the
        run is over or being killed already: the outcome then says what ended it)."""
        if self.last is not None or self.killing:
            return False
        self.interrupted = signum
        self.killing = True
        return True

    # --- what the driver asks -----------------------------------------------------------
    def wake_at(self) -> float:
        """Until when the driver may wait for a message or output without calling `tick`
        (math.inf: as long as it takes). Once the last word came: until when it may wait
        for the rest of the output."""
        if self.last is not None:
            return self._drain_until
        if self.killing:
            return math.inf
        if self.sink_failure is not None:
            return -math.inf  # now: `tick` asks for the kill
        return min(self._deadline, self._next_watch)

    def done(self, now: float) -> bool:
        """The last word came, and the output reached its end or its grace period ran out."""
        return self.last is not None and (not self._open or now >= self._drain_until)

    def outcome(self, *, duration_s: float) -> Result[ProcessOutcome, SpawnFailed]:
        """The run's outcome, from the last word (which must have come) and the output.
        Raises what `spec.on_output` raised, if it did (the run was stopped for it)."""
        last = self.last
        if last is None:
            raise RuntimeError("the run is not over: the helper has not answered yet")
        if self.sink_failure is not None:
            raise self.sink_failure
        if last.get("event") == "failed":
            return Failure(spawn_failure(self.spec, int(last["errno"]), str(last["stage"])))
        status = int(last["status"])
        return Success(
            ProcessOutcome(
                exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                stdout=self.out.value(),
                stderr=self.err.value(),
                stdout_truncated=self.out.truncated,
                stderr_truncated=self.err.truncated,
                duration_s=duration_s,
                usage=Usage(cpu_s=float(last["cpu_s"]), max_rss_bytes=int(last["max_rss_bytes"])),
                timed_out=self.timed_out,
                stopped=self.stopped,
                interrupted=self.interrupted,
            )
        )
