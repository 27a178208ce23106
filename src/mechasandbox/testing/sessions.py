"""The backend contract suite run inside sessions: `InSession` is a `Backend` whose runs
go to sessions of another backend, so `BackendContract` tests a session as it tests a
one-shot run::

    class TestMySessions(BackendContract):
        @pytest.fixture
        def backend(self, sandbox_runner):
            with InSession(MyBackend(runner=sandbox_runner)) as in_session:
                yield in_session

One session per workspace and policy (limits aside: each run's limits are that command's),
opened on the first run there and kept until `close`, so a test's commands share one
sandbox (its /tmp, its home), as an agent's do. The sessions live on an event loop of their
own (a portal thread): the suite calls `anyio.run` once per command.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from types import TracebackType

import attrs
from anyio.from_thread import BlockingPortal, start_blocking_portal
from returns.result import Failure, Result

from mechasandbox.backends.base import Backend, HostContext, LaunchPlan
from mechasandbox.backends.session_base import BackendSession, SessionSettings, open_session
from mechasandbox.domain.capabilities import Capabilities
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult


class InSession:
    """`backend`'s runs, each inside a session (see the module's docstring)."""

    def __init__(self, backend: Backend, settings: SessionSettings | None = None) -> None:
        self.backend = backend
        self.settings = settings or SessionSettings()
        self.sessions: dict[tuple[str, Policy], BackendSession] = {}
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()

    @property
    def name(self) -> str:
        return self.backend.name

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return self.backend.probe()

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        return self.backend.plan(request, policy, host)

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        return self._portal.call(self._run, request, policy)

    async def _run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        key = (os.path.realpath(request.workspace), attrs.evolve(policy, limits=Limits()))
        session = self.sessions.get(key)
        if session is None:
            opened = await open_session(self.backend, request.workspace, policy, self.settings)
            if isinstance(opened, Failure):
                return Failure(opened.failure())
            session = self.sessions[key] = opened.unwrap()
        return await session.run(request, limits=policy.limits)

    def session_of(self, workspace: str) -> BackendSession:
        """The (one) session open in `workspace`."""
        (found,) = [s for (where, _), s in self.sessions.items() if where == workspace]
        return found

    def close(self) -> None:
        try:
            for session in self.sessions.values():
                self._portal.call(session.aclose)
            self.sessions.clear()
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> InSession:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
