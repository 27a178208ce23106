"""The caller's side of a session on the `ray` backend: one actor pinned to one node.

`open_ray_session` checks and places the session as a one-shot run is checked and placed
(`RayBackend.prepare`: the same refusals, the same resources asked, so the actor lands only
on a node that enforces the whole policy, and a strict policy no node enforces is refused
before anything is sent), sends the workspace once, and starts a `node_session.
SessionActor` there. A Ray actor never moves: every command of the session runs on that
node, in the session the actor opened under the node's own backend.

Each command is waited for as a one-shot run is (`submission.Submission`: the output as it
comes, the caller's deadline of timeout + grace); its result is the node's unchanged, with
`node` set. Nothing comes back into the caller's workspace until `export`, which brings
what changed on the node since the last export through the same reader as a run's changes
(protected paths never written, no link out, new repositories disarmed). Closing does not
export: what was not exported is gone with the node's directory.

The session is over, for the command under way and every later one, when its actor is gone:
its node lost (`NodeLost`), or killed by the caller, which is how the caller stops a command
(Ray cannot force-cancel one call of an actor): past its timeout + grace (`Timeout`), when
the caller is told to stop (`Interrupted`) or its task is cancelled. Later runs and exports
are `NodeLost` naming why; the caller's workspace is as the last export left it.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.cluster.backend import (
    Prepared,
    as_result,
    marked,
    pack,
    read_input,
    write_back,
)
from mechasandbox.backends.cluster.resources import split_variant
from mechasandbox.backends.cluster.submission import Submission
from mechasandbox.backends.cluster.wire import SessionExport, SessionOpen, SessionOpened
from mechasandbox.backends.execute import run_started
from mechasandbox.backends.git_new_repositories import disarm_new_repositories
from mechasandbox.backends.session_base import BackendSession, SessionSettings
from mechasandbox.domain.errors import (
    BackendFailed,
    ConfigInvalid,
    Interrupted,
    NodeLost,
    SandboxError,
    Timeout,
)
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest, Terminal, terminal_refused
from mechasandbox.domain.result import RunResult

if TYPE_CHECKING:
    from mechasandbox.backends.cluster.backend import RayBackend

# How long the caller waits for the node to pack an export, or to end its session, before
# it takes the node as lost (the actor is killed).
EXPORT_TIMEOUT_S = 120.0
CLOSE_TIMEOUT_S = 15.0


def _kill(actor: Any) -> None:
    import ray

    with contextlib.suppress(Exception):  # already dead: nothing to do
        ray.kill(actor, no_restart=True)


async def open_ray_session(
    backend: RayBackend, prepared: Prepared, policy: Policy, settings: SessionSettings
) -> Result[BackendSession, SandboxError]:
    """See the module's docstring."""
    import ray
    import ray.exceptions as failures

    opened_ns = run_started()
    packed = await anyio.to_thread.run_sync(pack, prepared)
    if isinstance(packed, Failure):
        return Failure(packed.failure())
    archive, left_out = packed.unwrap()
    opening = SessionOpen(
        policy=policy,
        variant=prepared.variant,
        image=backend.image,
        workspace=archive,
        caller_workspace=prepared.workspace,
        max_transfer=prepared.cap,
        settings=settings,
    )
    actor = (
        backend.connection.session_actor()
        .options(
            resources=prepared.resources,
            num_cpus=1,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy=backend.strategy(),
        )
        .remote()
    )
    try:
        answer = await anyio.to_thread.run_sync(
            lambda: ray.get(actor.open.remote(opening)),
            abandon_on_cancel=True,
            limiter=anyio.CapacityLimiter(1),
        )
    except anyio.get_cancelled_exc_class():
        _kill(actor)
        raise
    except failures.RayError as error:
        _kill(actor)
        reason = f"the session's actor did not open: {type(error).__name__}: {error}"
        return Failure(BackendFailed(backend="ray", reason=reason.splitlines()[0]))
    if not isinstance(answer, SessionOpened):
        await anyio.to_thread.run_sync(_closed, actor, True)
        failed: SandboxError = answer
        return Failure(failed)
    return Success(
        RaySession(
            backend=backend,
            prepared=prepared,
            settings=settings,
            actor=actor,
            node=answer.node_id,
            directory=answer.directory,
            warnings=(*left_out, *answer.warnings),
            opened_ns=opened_ns,
        )
    )


def _closed(actor: Any, answering: bool) -> None:
    """The actor's session ended (when it still answers) and the actor killed."""
    import ray

    if answering:
        with contextlib.suppress(Exception):  # lost or hung: killed all the same
            ray.get(actor.close.remote(), timeout=CLOSE_TIMEOUT_S)
    _kill(actor)


@attrs.define(eq=False)
class RaySession:
    """A `BackendSession` on one node (see the module's docstring). `node`: its Ray node id;
    `directory`: the node's copy of the workspace."""

    backend: RayBackend = attrs.field(repr=False)
    prepared: Prepared = attrs.field(repr=False)
    settings: SessionSettings
    actor: Any = attrs.field(repr=False)
    node: str
    directory: str
    warnings: tuple[str, ...]
    opened_ns: int
    _lock: anyio.Lock = attrs.field(factory=anyio.Lock, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _gone: str | None = attrs.field(default=None, init=False)  # why the actor is gone

    @property
    def name(self) -> str:
        return "ray"

    @property
    def workspace(self) -> str:
        return self.prepared.workspace

    @property
    def ended(self) -> str | None:
        if self._closed:
            return "the session was closed"
        return None if self._gone is None else f"its node was lost: {self._gone}"

    def _over(self) -> SandboxError | None:
        if self._closed:
            reason = "session over: the session was closed"
            return BackendFailed(backend=self.name, reason=reason)
        if self._gone is not None:
            partial = RunResult(
                backend=split_variant(self.prepared.variant)[0],
                exit_code=None,
                signal=None,
                node=self.node,
            )
            reason = f"the session's actor is gone ({self._gone})"
            return NodeLost(node=self.node, reason=reason, partial=partial)
        return None

    async def run(
        self, request: RunRequest, *, limits: Limits | None = None
    ) -> Result[RunResult, SandboxError]:
        if os.path.realpath(request.workspace) != self.workspace:
            problem = (
                f"the session's workspace is {self.workspace}, not {request.workspace!r} "
                "(a session has one workspace; open another session for another)"
            )
            return Failure(ConfigInvalid(problem=problem, field="workspace"))
        if isinstance(request.stdin, Terminal):
            return Failure(ConfigInvalid(problem=terminal_refused("ray"), field="stdin"))
        timeout_s = (limits or self.prepared.guarded.limits).timeout_s
        stdin = await anyio.to_thread.run_sync(
            read_input, request.stdin, self.prepared.cap, timeout_s
        )
        if isinstance(stdin, Failure):
            return Failure(stdin.failure())
        async with self._lock:
            if (over := self._over()) is not None:
                return Failure(over)
            argv = tuple(request.argv)
            submitted = Submission(
                launch=lambda: self.actor.run.remote(argv, stdin.unwrap(), limits),
                stop=lambda _: _kill(self.actor),
                backend=split_variant(self.prepared.variant)[0],
                timeout_s=timeout_s,
                grace_s=self.backend.connection.settings.grace,
                sink=request.on_output,
            )
            interruption = self.backend.interruption
            stopping = (
                contextlib.nullcontext()
                if interruption is None
                else interruption.calling(submitted.interrupt)
            )
            try:
                with stopping:
                    ended = await anyio.to_thread.run_sync(
                        submitted.wait, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
                    )
            except anyio.get_cancelled_exc_class():
                self._gone = "the caller cancelled a command, which kills the actor"
                submitted.cancel()
                raise
        if isinstance(ended, Failure):
            error = ended.failure()
            if isinstance(error, NodeLost | Timeout | Interrupted):
                self._gone = (
                    error.reason
                    if isinstance(error, NodeLost)
                    else f"killed by the caller ({error.kind})"
                )
            return ended
        finished = ended.unwrap()
        return as_result(marked(finished, self.warnings))

    async def export(self) -> Result[tuple[str, ...], SandboxError]:
        """Bring what changed in the node's copy since the last export (or the session's
        start) into the caller's workspace; the warnings of what was not written (protected
        paths, links out, disarmed repositories). Waits for the command under way."""
        import ray
        import ray.exceptions as failures

        async with self._lock:
            if (over := self._over()) is not None:
                return Failure(over)

            def asked() -> SessionExport | str:
                try:
                    found: SessionExport = ray.get(
                        self.actor.export.remote(), timeout=EXPORT_TIMEOUT_S
                    )
                except (failures.GetTimeoutError, failures.RayError) as error:
                    _kill(self.actor)
                    said = str(error).splitlines()[0] if str(error) else ""
                    return f"{type(error).__name__}: {said}"
                return found

            exported = await anyio.to_thread.run_sync(asked)
            if isinstance(exported, str):
                self._gone = exported
                over = self._over()
                assert over is not None
                return Failure(over)
            prepared = self.prepared
            written = await anyio.to_thread.run_sync(
                write_back,
                exported.changes,
                exported.refused,
                prepared.workspace,
                prepared.protected,
                prepared.cap,
            )
            if isinstance(written, Failure):
                return written
            disarmed = disarm_new_repositories(
                prepared.workspace,
                prepared.guarded,
                since_ns=self.opened_ns,
                facts=self.backend.git,
            )
            return Success((*written.unwrap(), *disarmed))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_closed, self.actor, self._gone is None)
