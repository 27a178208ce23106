"""Choosing the backend for a policy (`auto`), and the stand-in for one that is missing.
The names and the order live in `catalog`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import Backend, HostContext, LaunchPlan, with_notes
from mechasandbox.domain.capabilities import Capabilities
from mechasandbox.domain.errors import BackendUnavailable, PolicyUnsupported, SandboxError
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult

if TYPE_CHECKING:
    from mechasandbox.backends.session_base import BackendSession, SessionSettings

__all__ = [
    "AutoBackend",
    "MissingBackend",
    "choose",
]


@attrs.frozen(kw_only=True)
class MissingBackend:
    """A backend name this build or host cannot offer; it answers `backend_unavailable`."""

    backend_name: str
    reason: str

    @property
    def name(self) -> str:
        return self.backend_name

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return Failure(BackendUnavailable(backend=self.backend_name, reason=self.reason))

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        return Failure(BackendUnavailable(backend=self.backend_name, reason=self.reason))

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        return Failure(BackendUnavailable(backend=self.backend_name, reason=self.reason))


def choose(candidates: Sequence[Backend], policy: Policy) -> Result[Backend, SandboxError]:
    """The first candidate (strongest first) that is available and enforces `policy`.

    Best-effort policies take the strongest available backend even if it leaves gaps.
    """
    available: list[tuple[Backend, Capabilities]] = []
    reasons: list[str] = []
    for backend in candidates:
        probed = backend.probe()
        if isinstance(probed, Failure):
            reasons.append(f"{backend.name}: {probed.failure().reason}")
            continue
        capabilities = probed.unwrap()
        if not capabilities.missing(policy):
            return Success(backend)
        available.append((backend, capabilities))
    if available:
        strongest, capabilities = available[0]
        if policy.enforcement is Enforcement.BEST_EFFORT:
            return Success(strongest)
        return Failure(PolicyUnsupported(backend="auto", missing=capabilities.missing(policy)))
    return Failure(
        BackendUnavailable(
            backend="auto", reason="no sandbox backend available: " + "; ".join(reasons)
        )
    )


@attrs.frozen(kw_only=True)
class AutoBackend:
    """Picks, per run, the strongest available backend that enforces the run's policy."""

    candidates: tuple[Backend, ...]

    @property
    def name(self) -> str:
        return "auto"

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        for backend in self.candidates:
            probed = backend.probe()
            if isinstance(probed, Success):
                return probed
        return Failure(BackendUnavailable(backend="auto", reason="no sandbox backend available"))

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        return choose(self.candidates, policy).bind(
            lambda backend: backend.plan(request, policy, host)
        )

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        chosen = choose(self.candidates, policy)
        if isinstance(chosen, Failure):
            return Failure(chosen.failure())
        backend = chosen.unwrap()
        ran = await backend.run(request, policy)
        return ran.map(lambda result: with_notes(result, backend))

    async def open_session(
        self, workspace: str, policy: Policy, settings: SessionSettings
    ) -> Result[BackendSession, SandboxError]:
        """A session on the backend a run of `policy` would get (`no_sessions` when that
        one has none: never another, weaker one for the session's sake)."""
        from mechasandbox.backends.session_base import open_session

        chosen = choose(self.candidates, policy)
        if isinstance(chosen, Failure):
            return Failure(chosen.failure())
        return await open_session(chosen.unwrap(), workspace, policy, settings)
