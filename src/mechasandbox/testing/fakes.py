"""Fakes for testing code that *calls* a backend or a runner (never for testing backends)."""

from __future__ import annotations

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable, SandboxError, SpawnFailed
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult, Usage
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec


@attrs.define
class FakeRunner:
    """Records every spec and answers with a fixed outcome."""

    stdout: bytes = b""
    exit_code: int = 0
    specs: list[SpawnSpec] = attrs.Factory(list)

    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        self.specs.append(spec)
        return Success(
            ProcessOutcome(
                exit_code=self.exit_code,
                signal=None,
                stdout=self.stdout,
                stderr=b"",
                stdout_truncated=False,
                stderr_truncated=False,
                duration_s=0.0,
                usage=Usage(),
            )
        )

    def close(self) -> None:
        """Nothing to stop."""


@attrs.define
class ScriptedBackend:
    """A backend double: answers each run with `results` in order and records requests."""

    results: list[Result[RunResult, SandboxError]] = attrs.Factory(list)
    requests: list[tuple[RunRequest, Policy]] = attrs.Factory(list)
    backend_name: str = "scripted"

    @property
    def name(self) -> str:
        return self.backend_name

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return Success(Capabilities(backend=self.name, enforced=frozenset(Protection)))

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        return Success(LaunchPlan(backend=self.name, sections=(("argv", " ".join(request.argv)),)))

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        self.requests.append((request, policy))
        if not self.results:
            return Failure(BackendUnavailable(backend=self.name, reason="no scripted result left"))
        return self.results.pop(0)
