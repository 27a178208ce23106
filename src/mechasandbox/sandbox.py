"""The facade agent code calls: one backend, one default policy, runs as `FutureResult`s,
their output as it comes (callbacks), or as a stream of events ending in the result."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypedDict, Unpack

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import Backend, HostContext, LaunchPlan, with_notes
from mechasandbox.config.validation import policy_problems
from mechasandbox.domain.errors import BackendUnavailable, ConfigInvalid, SandboxError
from mechasandbox.domain.events import OutputSink, RunEvent
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import (
    RunRequest,
    StreamedInput,
    Terminal,
    argv_problem,
    workspace_problem,
)
from mechasandbox.domain.result import RunResult
from mechasandbox.streaming import OutputRelay, events_of

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from returns.future import FutureResult

    from mechasandbox.backends.session_base import SessionSettings
    from mechasandbox.sandbox_session import Session, SyncSession


class HasFileno(Protocol):
    def fileno(self) -> int: ...


# A command's input: bytes; a descriptor (an int, or an open file: its descriptor, read
# directly, so data the file object buffered already is not seen) streamed to the command
# as it reads (see `StreamedInput`); a pty's slave for all its stdio (see `Terminal`);
# None: /dev/null.
Stdin: TypeAlias = bytes | int | HasFileno | StreamedInput | Terminal | None
# Called with each chunk of output as it comes (`on_stdout`, `on_stderr`).
Chunks: TypeAlias = Callable[[bytes], None]


class StreamOptions(TypedDict, total=False):
    """The options of a streamed run besides its command (`Sandbox.run_async` says what
    each does)."""

    workspace: str | None
    stdin: Stdin
    policy: Policy | None


class RunOptions(StreamOptions, total=False):
    """The options of a run besides its command (`Sandbox.run_async` says what each does)."""

    on_stdout: Chunks | None
    on_stderr: Chunks | None


def _input(stdin: Stdin) -> Result[bytes | StreamedInput | Terminal | None, SandboxError]:
    if isinstance(stdin, Terminal) and not _is_terminal(stdin.fd):
        problem = f"{stdin!r} is not an open terminal (the slave of os.openpty())"
        return Failure(ConfigInvalid(problem=problem, field="stdin"))
    if stdin is None or isinstance(stdin, bytes | StreamedInput | Terminal):
        return Success(stdin)
    try:
        fd = stdin if isinstance(stdin, int) else stdin.fileno()
        os.fstat(fd)
    except (OSError, ValueError, AttributeError, TypeError) as error:
        problem = f"expected bytes, a descriptor or an open file, got {stdin!r}: {error}"
        return Failure(ConfigInvalid(problem=problem, field="stdin"))
    return Success(StreamedInput(fd))


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


@attrs.frozen(kw_only=True)
class Sandbox:
    """Runs commands through `backend` under `policy` unless a call passes its own, in
    `workspace` unless a call names another (None: the current directory of the call).

    Whatever a caller hands in is checked before the backend sees it, and a bad value is a
    `Failure(ConfigInvalid)` naming it, as a configuration file would be told: a string
    for argv, a NUL byte, an empty or NUL-holding workspace, a policy with a relative path
    or an invalid variable (`config.validation`).
    """

    backend: Backend
    policy: Policy = Policy()
    workspace: str | None = None
    # Where a project file chose `backend` (`ResolvedConfig.backend_chosen_by`): said when
    # that backend is unavailable here, since the user did not choose it.
    backend_chosen_by: str | None = None

    def request(
        self,
        argv: Sequence[str],
        *,
        workspace: str | None = None,
        stdin: Stdin = None,
        on_output: OutputSink | None = None,
    ) -> Result[RunRequest, SandboxError]:
        problem = argv_problem(argv)
        if problem is not None:
            return Failure(ConfigInvalid(problem=problem, field="argv"))
        # `""` is not "the default": it is a mistake, said as one.
        where = workspace if workspace is not None else self.workspace
        where = os.getcwd() if where is None else where
        problem = workspace_problem(where)
        if problem is not None:
            return Failure(ConfigInvalid(problem=problem, field="workspace"))
        given = _input(stdin)
        if isinstance(given, Failure):
            return Failure(given.failure())
        try:
            return Success(
                RunRequest(argv=argv, workspace=where, stdin=given.unwrap(), on_output=on_output)
            )
        except (TypeError, ValueError) as error:
            return Failure(ConfigInvalid(problem=str(error), field="argv"))

    def _checked(self, policy: Policy | None) -> Result[Policy, SandboxError]:
        chosen = self.policy if policy is None else policy
        problem = policy_problems(chosen)
        return Success(chosen) if problem is None else Failure(problem)

    def _said_who_chose(self, error: SandboxError) -> SandboxError:
        if self.backend_chosen_by is None or not isinstance(error, BackendUnavailable):
            return error
        return attrs.evolve(
            error,
            reason=f"{error.reason}; the project chose it ({self.backend_chosen_by}), and "
            "a project's choice is never swapped for another backend: choose one with "
            "--backend, or backend.name in your own configuration",
        )

    async def run_async(
        self,
        argv: Sequence[str],
        *,
        workspace: str | None = None,
        stdin: Stdin = None,
        policy: Policy | None = None,
        on_stdout: Chunks | None = None,
        on_stderr: Chunks | None = None,
    ) -> Result[RunResult, SandboxError]:
        """Run `argv`; `on_stdout`/`on_stderr`: called with each chunk of its output as it
        comes (what the output cap keeps), in the runner: they should return quickly, and
        one that raises stops the run (its tree is killed) and its exception propagates."""
        relay = OutputRelay.of_callbacks(on_stdout, on_stderr)
        if relay is None:
            return await self._run(argv, workspace, stdin, policy, None)
        finished = await relay.raised(self._run(argv, workspace, stdin, policy, relay))
        relay.finish(finished)
        return finished

    async def _run(
        self,
        argv: Sequence[str],
        workspace: str | None,
        stdin: Stdin,
        policy: Policy | None,
        on_output: OutputSink | None,
    ) -> Result[RunResult, SandboxError]:
        request = self.request(argv, workspace=workspace, stdin=stdin, on_output=on_output)
        if isinstance(request, Failure):
            return Failure(request.failure())
        checked = self._checked(policy)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        ran = await self.backend.run(request.unwrap(), checked.unwrap())
        return ran.map(lambda result: with_notes(result, self.backend)).alt(self._said_who_chose)

    def run(
        self, argv: Sequence[str], **options: Unpack[RunOptions]
    ) -> FutureResult[RunResult, SandboxError]:
        """The composable form: `sandbox.run([...]).bind(...)`, awaited once at the end.
        `options`: those of `run_async`."""
        from returns.future import FutureResult  # imported by the callers that compose

        return FutureResult(self.run_async(argv, **options))

    def run_sync(
        self, argv: Sequence[str], **options: Unpack[RunOptions]
    ) -> Result[RunResult, SandboxError]:
        """For scripts: runs its own event loop. `options`: those of `run_async`."""
        import anyio  # not at import: the CLI runs most commands without an event loop

        return anyio.run(lambda: self.run_async(argv, **options))

    def stream(
        self, argv: Sequence[str], **options: Unpack[StreamOptions]
    ) -> AsyncGenerator[RunEvent, None]:
        """The run's events as they come (see `domain.events`): its output in chunks, then
        its warnings and violations, and last a `ResultEvent` whose `value` is what
        `run_async` returns. Leaving the loop early is safe: closing the iterator (or its
        collection) stops the run and kills its tree; `contextlib.aclosing` does it at once."""
        workspace, stdin = options.get("workspace"), options.get("stdin")
        policy = options.get("policy")
        return events_of(lambda sink: self._run(argv, workspace, stdin, policy, sink))

    def session(
        self,
        *,
        workspace: str | None = None,
        policy: Policy | None = None,
        settings: SessionSettings | None = None,
    ) -> Session:
        """One sandbox for many commands, as an async context manager (`async with
        sandbox.session() as s: await s.run_async([...])`): its private /tmp, home and
        installed packages persist from command to command; each command gets its own
        timeout, output cap, rlimits and whole-tree kill (see docs/sessions.md).
        `settings`: its idle timeout and maximum lifetime."""
        from mechasandbox.backends.session_base import SessionSettings
        from mechasandbox.sandbox_session import Session

        chosen = SessionSettings() if settings is None else settings
        return Session(self, workspace, (policy, chosen))

    def session_sync(
        self,
        *,
        workspace: str | None = None,
        policy: Policy | None = None,
        settings: SessionSettings | None = None,
    ) -> AbstractContextManager[SyncSession]:
        """`session` for scripts without an event loop: `with sandbox.session_sync() as s:
        s.run([...])`."""
        from mechasandbox.sandbox_session import sync_session

        return sync_session(self.session(workspace=workspace, policy=policy, settings=settings))

    def plan(
        self, argv: Sequence[str], *, workspace: str | None = None, policy: Policy | None = None
    ) -> Result[LaunchPlan, SandboxError]:
        """What the backend would do, without running anything."""
        return (
            self.request(argv, workspace=workspace)
            .bind(
                lambda request: self._checked(policy).bind(
                    lambda checked: self.backend.plan(request, checked, HostContext.current())
                )
            )
            .alt(self._said_who_chose)
        )
