"""The caller's wait for one command on a node: a one-shot run's task or a session's
command on its actor. Both are Ray generators that yield `NodeStarted`, then `NodeOutput`
batches, then `NodeFinished`; this takes them as they come, in a thread of its own, and
keeps the caller's deadline: once the node took the command, its timeout + grace. Past it
the command is stopped (`stop`: the task cancelled with `force`, the session's actor
killed) without waiting for the node, and the outcome is a `Timeout` with what arrived; a
node that died is a `NodeLost` with what arrived."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio.from_thread
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.cluster.wire import NodeFinished, NodeOutput, NodeStarted
from mechasandbox.domain.errors import (
    BackendFailed,
    Interrupted,
    NodeLost,
    SandboxError,
    Timeout,
)
from mechasandbox.domain.events import OutputEvent, OutputSink
from mechasandbox.domain.result import RunResult

DEFAULT_GRACE_S = 10.0
# The longest wait for the node without looking at the caller's signals (a ready message
# ends a wait at once).
_STEP_S = 0.25
NOT_PLACED = "(not yet placed)"


@attrs.define
class Submission:
    """One command handed to the cluster (`launch` makes its Ray generator) and waited for.
    `stop`: what ends it from the caller's side (given the generator); `backend`: the
    node's backend, for the partial result; `grace_s`: None for the default."""

    launch: Callable[[], Any]
    stop: Callable[[Any], None]
    backend: str
    timeout_s: float | None
    grace_s: float | None
    sink: OutputSink | None
    node: str = NOT_PLACED
    stdout: list[bytes] = attrs.field(factory=list)
    stderr: list[bytes] = attrs.field(factory=list)
    generator: Any = None
    timed_out: threading.Event = attrs.field(factory=threading.Event)
    deadline: float | None = None  # time.monotonic() of the caller's deadline
    interrupted: int | None = None  # the signal that told the caller to stop
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def cancel(self) -> None:
        with self.lock:
            if self.generator is not None:
                self.stop(self.generator)

    def interrupt(self, signum: int) -> None:
        """The caller was told to stop: the command is stopped (from a thread of its own:
        this may run in a signal handler), and it ends as `Interrupted`."""
        self.interrupted = signum
        threading.Thread(target=self.cancel, daemon=True).start()

    def _remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def _expire(self) -> None:
        """The deadline passed: the command is stopped, and not waited for (a node that
        hangs answers neither the command nor the stop; Ray's own calls on it may wait
        until the node is declared dead, minutes later)."""
        self.timed_out.set()
        threading.Thread(target=self.cancel, daemon=True).start()

    def _get(self, reference: Any) -> object | None:
        """A message, within the deadline (None: it did not come in time): an item can be
        ready yet held by a node that no longer answers."""
        import ray
        import ray.exceptions as failures

        try:
            message: object = ray.get(reference, timeout=self._remaining())
        except failures.GetTimeoutError:
            self._expire()
            return None
        return message

    def _limit_s(self) -> float | None:
        """How long after the node took the command the caller waits for its end."""
        if self.timeout_s is None:
            return None
        return self.timeout_s + (DEFAULT_GRACE_S if self.grace_s is None else self.grace_s)

    def partial(self) -> RunResult:
        return RunResult(
            backend=self.backend,
            exit_code=None,
            signal=None,
            stdout=b"".join(self.stdout),
            stderr=b"".join(self.stderr),
            node=self.node if self.node != NOT_PLACED else None,
        )

    def _output(self, events: tuple[OutputEvent, ...]) -> None:
        for event in events:
            (self.stdout if event.stream == "stdout" else self.stderr).append(event.data)
            if self.sink is not None:
                anyio.from_thread.run_sync(self.sink, event)

    def wait(self) -> Result[NodeFinished, SandboxError]:
        """Launch, then take the node's messages as they come (see the module)."""
        import ray
        import ray.exceptions as failures

        with self.lock:
            self.generator = self.launch()
        self.deadline = None
        try:
            while True:
                remaining = self._remaining()
                step = _STEP_S if remaining is None else min(remaining, _STEP_S)
                ready, _ = ray.wait([self.generator], timeout=step)
                if self.interrupted is not None:  # not waiting on the node to confirm
                    return Failure(self.lost(InterruptedError()))
                if not ready:
                    if remaining is not None and remaining <= step:
                        self._expire()
                        return Failure(self.lost(TimeoutError()))
                    continue
                try:
                    reference = next(self.generator)
                except StopIteration:
                    break
                message = self._get(reference)
                if message is None:
                    return Failure(self.lost(TimeoutError()))
                if isinstance(message, NodeOutput):
                    self._output(message.events)
                elif isinstance(message, NodeFinished):
                    return Success(message)
                elif isinstance(message, NodeStarted):  # the node's timeout runs from now
                    self.node = message.node_id
                    limit = self._limit_s()
                    self.deadline = None if limit is None else time.monotonic() + limit
        except (failures.TaskCancelledError, failures.RayError) as error:
            return Failure(self.lost(error))
        return Failure(BackendFailed(backend="ray", reason="the node ended without a result"))

    def lost(self, error: BaseException) -> SandboxError:
        import ray.exceptions as failures

        if self.interrupted is not None:
            return Interrupted(signal=self.interrupted, partial=self.partial())
        if self.timed_out.is_set():
            return Timeout(timeout_s=self.timeout_s or 0.0, partial=self.partial())
        if isinstance(error, failures.RayTaskError) and not isinstance(
            error, failures.TaskCancelledError
        ):
            reason = f"the node's side failed: {error.cause!r}"
            return BackendFailed(backend="ray", reason=reason)
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return NodeLost(node=self.node, reason=reason, partial=self.partial())
