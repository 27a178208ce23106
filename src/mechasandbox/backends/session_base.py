"""Sessions: one sandbox for many commands (see docs/sessions.md). What every backend's
sessions are, and how a backend opens one.

A backend with sessions has `open_session(workspace, policy, settings)`; it returns a
`BackendSession`: one sandbox, set up once under `policy` for `workspace`, whose private
/tmp, home and installed packages persist from command to command, while each command gets
its own timeout, output cap, rlimits and whole-tree kill, and a command's failure never
ends the session. A backend without sessions answers `no_sessions`: a typed failure, never
a quiet fall back to one-shot runs (that would lose the state the caller relies on).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs
from returns.result import Failure, Result

from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.limits import MAX_TIMEOUT_S, Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult


def _positive_or_none(_instance: object, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number of seconds, got {value!r}")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise ValueError(f"{attribute.name} must be in (0, {MAX_TIMEOUT_S:g}], got {value!r}")


@attrs.frozen(kw_only=True)
class SessionSettings:
    """How long a session may live. `idle_timeout_s`: it ends after this long without a
    command running; `max_lifetime_s`: it ends this long after it started, killing a command
    under way (None: no such bound; the caller's death always ends it). Both are enforced
    by the agent inside the sandbox, so they hold whatever the caller does."""

    idle_timeout_s: float | None = attrs.field(default=900.0, validator=_positive_or_none)
    max_lifetime_s: float | None = attrs.field(default=8 * 3600.0, validator=_positive_or_none)


class BackendSession(Protocol):
    """One sandbox that runs commands one at a time (a second `run` waits for the first).

    `run` returns what a one-shot run of the same request under the session's policy
    returns (the same typed `Result`s, classified by `backends.outcome`), and streams its
    output to `request.on_output`; `limits`: this command's (None: the policy's) timeout,
    output cap and rlimits; the session's cgroup (memory, processes) stays the policy's.
    After `aclose` (or once the session ended on its own: idle, lifetime) `run` is a
    `BackendFailed` saying why."""

    @property
    def name(self) -> str:
        """The backend's name (as in `RunResult.backend`)."""
        ...

    @property
    def workspace(self) -> str:
        """The workspace's real path: every request of the session names it."""
        ...

    @property
    def warnings(self) -> tuple[str, ...]:
        """The protections weaker than the policy asked (best-effort), said once here and
        repeated on every result."""
        ...

    async def run(
        self, request: RunRequest, *, limits: Limits | None = None
    ) -> Result[RunResult, SandboxError]: ...

    async def aclose(self) -> None:
        """End the session: the command under way (if any) and the whole sandbox are killed
        and waited for; its state is gone. Idempotent."""
        ...


@runtime_checkable
class SessionBackend(Protocol):
    """A backend that opens sessions."""

    @property
    def name(self) -> str: ...

    async def open_session(
        self, workspace: str, policy: Policy, settings: SessionSettings
    ) -> Result[BackendSession, SandboxError]: ...


def no_sessions(backend: str, why: str = "it has no sessions") -> BackendUnavailable:
    """What a backend without sessions answers (see the module's docstring)."""
    return BackendUnavailable(
        backend=backend,
        reason=f"no session on {backend}: {why}; docs/sessions.md lists the backends "
        "that have them (or run each command on its own)",
    )


async def open_session(
    backend: object, workspace: str, policy: Policy, settings: SessionSettings
) -> Result[BackendSession, SandboxError]:
    """`backend.open_session(...)`, or `no_sessions` for a backend that has none."""
    if isinstance(backend, SessionBackend):
        return await backend.open_session(workspace, policy, settings)
    return Failure(no_sessions(str(getattr(backend, "name", backend))))
