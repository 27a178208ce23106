"""The facade agent code calls: one backend, one default policy, runs as `FutureResult`s."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result

from mechasandbox.backends.base import Backend, HostContext, LaunchPlan, with_notes
from mechasandbox.domain.errors import ConfigInvalid, SandboxError
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult

if TYPE_CHECKING:
    from returns.future import FutureResult


@attrs.frozen(kw_only=True)
class Sandbox:
    """Runs commands through `backend` under `policy` unless a call passes its own, in
    `workspace` unless a call names another (None: the current directory of the call)."""

    backend: Backend
    policy: Policy = Policy()
    workspace: str | None = None

    def request(
        self, argv: Sequence[str], *, workspace: str | None = None, stdin: bytes | None = None
    ) -> Result[RunRequest, SandboxError]:
        try:
            return Result.from_value(
                RunRequest(
                    argv=tuple(argv),
                    workspace=workspace or self.workspace or os.getcwd(),
                    stdin=stdin,
                )
            )
        except (TypeError, ValueError) as error:
            return Failure(ConfigInvalid(problem=str(error), field="argv"))

    async def run_async(
        self,
        argv: Sequence[str],
        *,
        workspace: str | None = None,
        stdin: bytes | None = None,
        policy: Policy | None = None,
    ) -> Result[RunResult, SandboxError]:
        request = self.request(argv, workspace=workspace, stdin=stdin)
        if isinstance(request, Failure):
            return Failure(request.failure())
        ran = await self.backend.run(request.unwrap(), policy or self.policy)
        return ran.map(lambda result: with_notes(result, self.backend))

    def run(
        self,
        argv: Sequence[str],
        *,
        workspace: str | None = None,
        stdin: bytes | None = None,
        policy: Policy | None = None,
    ) -> FutureResult[RunResult, SandboxError]:
        """The composable form: `sandbox.run([...]).bind(...)`, awaited once at the end."""
        from returns.future import FutureResult  # imported by the callers that compose

        return FutureResult(self.run_async(argv, workspace=workspace, stdin=stdin, policy=policy))

    def run_sync(
        self,
        argv: Sequence[str],
        *,
        workspace: str | None = None,
        stdin: bytes | None = None,
        policy: Policy | None = None,
    ) -> Result[RunResult, SandboxError]:
        """For scripts: runs its own event loop."""
        import anyio  # not at import: the CLI runs most commands without an event loop

        return anyio.run(
            lambda: self.run_async(argv, workspace=workspace, stdin=stdin, policy=policy)
        )

    def plan(
        self, argv: Sequence[str], *, workspace: str | None = None, policy: Policy | None = None
    ) -> Result[LaunchPlan, SandboxError]:
        """What the backend would do, without running anything."""
        return self.request(argv, workspace=workspace).bind(
            lambda request: self.backend.plan(request, policy or self.policy, HostContext.current())
        )
