"""Sessions through the facade: `Sandbox.session(...)` (see docs/sessions.md).

    async with sandbox.session(workspace=".") as session:
        await session.run_async(["pip", "install", "-e", "."])
        result = await session.run_async(["pytest", "-q"])

    with sandbox.session_sync(workspace=".") as session:   # scripts: no event loop
        session.run(["make"])

One sandbox for the session (see `backends.session_base`); each run returns what
`Sandbox.run_async` returns for it, with the same options (stdin, `on_stdout`/`on_stderr`,
`stream`), and its own limits if given. Errors are values here too: a session that could not
be opened is a `Session` whose `opened` is the failure, and every run returns it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, TypedDict, Unpack

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import with_notes
from mechasandbox.backends.session_base import (
    BackendSession,
    ExportingSession,
    SessionSettings,
    open_session,
)
from mechasandbox.domain.errors import BackendFailed, SandboxError
from mechasandbox.domain.events import OutputSink, RunEvent
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.result import RunResult
from mechasandbox.streaming import OutputRelay, events_of

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal
    from returns.future import FutureResult

    from mechasandbox.sandbox import Chunks, Sandbox, Stdin


class SessionRunOptions(TypedDict, total=False):
    """The options of a command in a session besides its argv (`Session.run_async` says
    what each does)."""

    stdin: Stdin
    limits: Limits | None
    on_stdout: Chunks | None
    on_stderr: Chunks | None


class Session:
    """A session opened by `Sandbox.session`: an async context manager that opens it on
    entry and ends it (its sandbox killed, its state gone) on exit."""

    def __init__(
        self,
        sandbox: Sandbox,
        workspace: str | None,
        policy_settings: tuple[Policy | None, SessionSettings],
    ) -> None:
        self._sandbox = sandbox
        self._workspace = workspace
        self._policy, self._settings = policy_settings
        self.opened: Result[BackendSession, SandboxError] = Failure(
            BackendFailed(backend=sandbox.backend.name, reason="the session is not open yet")
        )

    async def open(self) -> Result[BackendSession, SandboxError]:
        """Open the session (what `async with` does)."""
        sandbox = self._sandbox
        where = sandbox.request(["true"], workspace=self._workspace)
        checked = sandbox.checked_policy(self._policy)
        if isinstance(where, Failure):
            self.opened = Failure(where.failure())
        elif isinstance(checked, Failure):
            self.opened = Failure(checked.failure())
        else:
            opened = await open_session(
                sandbox.backend, where.unwrap().workspace, checked.unwrap(), self._settings
            )
            self.opened = opened.alt(sandbox.said_who_chose)
        return self.opened

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if isinstance(self.opened, Success):
            await self.opened.unwrap().aclose()

    @property
    def warnings(self) -> tuple[str, ...]:
        """The policy's gaps on this backend (best-effort), repeated on every result."""
        return self.opened.map(lambda s: s.warnings).value_or(())

    async def run_async(
        self,
        argv: Sequence[str],
        *,
        stdin: Stdin = None,
        limits: Limits | None = None,
        on_stdout: Chunks | None = None,
        on_stderr: Chunks | None = None,
    ) -> Result[RunResult, SandboxError]:
        """Run `argv` in the session (as `Sandbox.run_async`); `limits`: this command's
        (None: the policy's) timeout, output cap and rlimits."""
        relay = OutputRelay.of_callbacks(on_stdout, on_stderr)
        if relay is None:
            return await self._run(argv, stdin, limits, None)
        finished = await relay.raised(self._run(argv, stdin, limits, relay))
        relay.finish(finished)
        return finished

    async def _run(
        self,
        argv: Sequence[str],
        stdin: Stdin,
        limits: Limits | None,
        on_output: OutputSink | None,
    ) -> Result[RunResult, SandboxError]:
        if isinstance(self.opened, Failure):
            return Failure(self.opened.failure())
        session = self.opened.unwrap()
        request = self._sandbox.request(
            argv, workspace=session.workspace, stdin=stdin, on_output=on_output
        )
        if isinstance(request, Failure):
            return Failure(request.failure())
        ran = await session.run(request.unwrap(), limits=limits)
        return ran.map(lambda result: with_notes(result, self._sandbox.backend))

    def run(
        self, argv: Sequence[str], **options: Unpack[SessionRunOptions]
    ) -> FutureResult[RunResult, SandboxError]:
        """The composable form of `run_async` (the same options)."""
        from returns.future import FutureResult

        return FutureResult(self.run_async(argv, **options))

    async def export(self) -> Result[tuple[str, ...], SandboxError]:
        """Bring the session's changes into the caller's workspace, for a backend whose
        session works on a copy of it (`ray`: see docs/ray.md); the warnings of what was
        not written. A local session works in the workspace itself: nothing to bring."""
        if isinstance(self.opened, Failure):
            return Failure(self.opened.failure())
        session = self.opened.unwrap()
        if isinstance(session, ExportingSession):
            return await session.export()
        return Success(())

    def stream(
        self, argv: Sequence[str], *, stdin: Stdin = None, limits: Limits | None = None
    ) -> AsyncGenerator[RunEvent, None]:
        """The run's events as they come (as `Sandbox.stream`)."""
        return events_of(lambda sink: self._run(argv, stdin, limits, sink))


@attrs.define
class SyncSession:
    """`Session` for code without an event loop (`Sandbox.session_sync`): each call runs
    on the session's own loop, in a thread of its own."""

    _session: Session
    _portal: BlockingPortal

    @property
    def opened(self) -> Result[BackendSession, SandboxError]:
        return self._session.opened

    def run(
        self, argv: Sequence[str], **options: Unpack[SessionRunOptions]
    ) -> Result[RunResult, SandboxError]:
        """`Session.run_async`, waited for (the same options)."""
        session = self._session
        return self._portal.call(lambda: session.run_async(argv, **options))

    def export(self) -> Result[tuple[str, ...], SandboxError]:
        """`Session.export`."""
        return self._portal.call(self._session.export)


@contextmanager
def sync_session(session: Session) -> Iterator[SyncSession]:
    """Open `session` on a loop of its own for the `with` block, and end it after."""
    from anyio.from_thread import start_blocking_portal

    with start_blocking_portal() as portal:
        portal.call(session.open)
        try:
            yield SyncSession(session, portal)
        finally:
            portal.call(session.aclose)
