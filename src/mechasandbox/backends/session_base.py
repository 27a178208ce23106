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
from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import BackendUnavailable, ConfigInvalid, SandboxError
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
    output cap and rlimits, which may only narrow the policy's (`command_limits`); the
    session's cgroup (memory, processes) stays the policy's.
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

    @property
    def ended(self) -> str | None:
        """Why the session is over (closed, or ended on its own: idle timeout, lifetime,
        fail closed, its sandbox gone), as its later runs say; None while it is open. A
        holder such as the CLI's supervisor watches it to end with the session."""
        ...

    async def run(
        self, request: RunRequest, *, limits: Limits | None = None
    ) -> Result[RunResult, SandboxError]: ...

    async def aclose(self) -> None:
        """End the session: the command under way (if any) and the whole sandbox are killed
        and waited for; its state is gone. Idempotent."""
        ...


@runtime_checkable
class ExportingSession(Protocol):
    """A session whose commands work on a copy of the workspace elsewhere (the `ray`
    backend's, on its node): nothing reaches the caller's workspace until `export`, which
    brings what changed since the last export (as a one-shot run's changes come back) and
    returns the warnings of what was not written. A local session works in the workspace
    itself and has nothing to export."""

    async def export(self) -> Result[tuple[str, ...], SandboxError]: ...


@runtime_checkable
class SessionBackend(Protocol):
    """A backend that opens sessions."""

    @property
    def name(self) -> str: ...

    async def open_session(
        self, workspace: str, policy: Policy, settings: SessionSettings
    ) -> Result[BackendSession, SandboxError]: ...


# What `doctor` and `policy` say of sessions (docs/sessions.md has the whole story).
KEPT_BETWEEN_COMMANDS = (
    "the private /tmp (landlock: TMPDIR) and home, and what was installed there",
    "the sandbox's mounts, namespaces, seccomp filter and protected-path covers",
    "one cgroup: the policy's memory and process limits are the session's",
)
EACH_COMMAND_GETS = (
    "the one-shot run's records: stdio, every other descriptor closed, directory, umask, "
    "environment, hooks, exec",
    "its own timeout, output cap and rlimits, within the session's policy (session run: "
    "run's limit options)",
    "a whole-tree kill when it ends; processes that survive it end the session",
    "its own typed result; repositories it made disarmed, refusals explained",
)


def describe(backend: object) -> dict[str, Any]:
    """Whether `backend` opens sessions here, and what a session keeps and gives: for
    `doctor` and `policy`. The agent's presence is said for the backends that need it."""
    from mechasandbox.runner.session_protocol import agent_path, agent_speaks

    path = agent_path()
    agent = path if path is not None and agent_speaks(path) else None
    supported = isinstance(backend, SessionBackend)
    return {
        "supported": supported,
        "agent": agent,
        "kept": list(KEPT_BETWEEN_COMMANDS),
        "per_command": list(EACH_COMMAND_GETS),
    }


def command_limits(limits: Limits | None, session: Limits) -> Result[Limits, SandboxError]:
    """A command's own limits (None: the session's), which may only narrow the session's
    policy: a value above the policy's, or none where the policy has one, is a
    `ConfigInvalid` naming the field (`limits.cpu_time`), on every backend alike. The
    policy given when the session opened bounds everything run in it, as a project file may
    only narrow the user's policy (and the session's agent runs under no command's limits,
    so that what a command makes it do counts toward none: see docs/sessions.md)."""
    if limits is None:
        return Success(session)
    from mechasandbox.config.validation import LIMIT_RULES

    problems = []
    for rule in LIMIT_RULES:
        bound: float | None = getattr(session, rule.attribute)
        asked: float | None = getattr(limits, rule.attribute)
        if bound is None or asked == bound:
            continue
        if asked is None or asked > bound:
            shown = "no limit" if asked is None else rule.show(asked)
            problem = (
                f"a command's {rule.key} may only narrow the session's ({rule.show(bound)}), "
                f"not {shown}: open the session with a policy that allows it"
            )
            problems.append(ConfigInvalid(problem=problem, field=f"limits.{rule.key}"))
    if problems:
        return Failure(ConfigInvalid.together(problems))
    return Success(limits)


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
