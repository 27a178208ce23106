"""A `BackendSession` whose sandbox holds the session agent (see `runner.session_client`):
what every agent-driven session shares, whatever set the sandbox up.

A backend supplies a `SessionSandbox`: the spawn of one command as the agent must make it
(`command_spec`: argv, environment, directory, umask, rlimits, the hooks that have a native
form, timeout and output cap), the cumulative counters of the session's cgroup, what it does
after each command (`finished`), and its teardown. `AgentSession` serialises the commands,
bounds each one's deadline by what is left of the session's lifetime, takes each command's
share of the cgroup's counters (an OOM kill during a command is that command's), and
classifies the outcome as `execute_spec` does a one-shot run's (`backends.outcome`).
"""

from __future__ import annotations

import os
import time
from typing import Protocol

import anyio
import attrs
from returns.result import Failure, Result

from mechasandbox.backends.outcome import classify, run_result
from mechasandbox.backends.session_base import SessionSettings
from mechasandbox.domain.errors import BackendFailed, ConfigInvalid, SandboxError
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupEvents
from mechasandbox.runner.session_client import AgentChannel
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec


class SessionSandbox(Protocol):
    """What a backend's session sandbox does for `AgentSession`."""

    def command_spec(self, request: RunRequest, limits: Limits) -> Result[SpawnSpec, SandboxError]:
        """The spawn the agent makes for `request` (its records: `native`)."""
        ...

    def counters(self) -> CgroupEvents | None:
        """The session cgroup's event counters so far (None: no cgroup)."""
        ...

    def finished(
        self, result: Result[RunResult, SandboxError], started_ns: int
    ) -> Result[RunResult, SandboxError]:
        """What follows each command (repositories it made disarmed, refusals explained)."""
        ...

    async def aclose(self) -> None:
        """Kill and wait for the sandbox, give back what it held (after the channel closed)."""
        ...


def _since(after: CgroupEvents | None, before: CgroupEvents | None) -> CgroupEvents | None:
    if after is None or before is None:
        return after
    return CgroupEvents(
        oom_kills=max(0, after.oom_kills - before.oom_kills),
        pids_max_hits=max(0, after.pids_max_hits - before.pids_max_hits),
    )


@attrs.define(eq=False)
class AgentSession:
    """A session whose commands the agent at the other end of `channel` runs (see the
    module's docstring). `warnings`: the policy's gaps on this backend, repeated on every
    result as a one-shot run repeats them."""

    name: str
    workspace: str
    policy: Policy = attrs.field(repr=False)
    channel: AgentChannel = attrs.field(repr=False)
    sandbox: SessionSandbox = attrs.field(repr=False)
    settings: SessionSettings
    warnings: tuple[str, ...] = ()
    opened_at: float = attrs.field(factory=time.monotonic)
    _lock: anyio.Lock = attrs.field(factory=anyio.Lock, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    async def run(
        self, request: RunRequest, *, limits: Limits | None = None
    ) -> Result[RunResult, SandboxError]:
        if os.path.realpath(request.workspace) != self.workspace:
            problem = (
                f"the session's workspace is {self.workspace}, not {request.workspace!r} "
                "(a session has one workspace; open another session for another)"
            )
            return Failure(ConfigInvalid(problem=problem, field="workspace"))
        chosen = self.policy.limits if limits is None else limits
        async with self._lock:
            if self._closed or self.channel.ended is not None:
                why = self.channel.ended or "the session was closed"
                return Failure(BackendFailed(backend=self.name, reason=f"session over: {why}"))
            spec = self.sandbox.command_spec(request, chosen)
            if isinstance(spec, Failure):
                return Failure(spec.failure())
            command = attrs.evolve(spec.unwrap(), timeout_s=self._deadline(chosen.timeout_s))
            before = self.sandbox.counters()
            started_ns = time.time_ns() - 20_000_000  # file system timestamps are coarse
            ran = await self.channel.run(command)
            events = _since(self.sandbox.counters(), before)
            lifetime_ended = command.timeout_s != chosen.timeout_s

            def classified(raw: ProcessOutcome) -> Result[RunResult, SandboxError]:
                if raw.stopped is not None:  # a watch stopped it: see SpawnSpec
                    reason = f"stopped: {raw.stopped}"
                    return Failure(BackendFailed(backend=self.name, reason=reason))
                if raw.timed_out and lifetime_ended:
                    reason = "the session's maximum lifetime passed during the command"
                    return Failure(BackendFailed(backend=self.name, reason=reason))
                return classify(
                    run_result(self.name, raw, warnings=self.warnings),
                    limits=chosen,
                    timed_out=raw.timed_out,
                    events=events,
                    interrupted=raw.interrupted,
                )

            return self.sandbox.finished(ran.bind(classified), started_ns)

    def _deadline(self, timeout_s: float | None) -> float | None:
        """The command's timeout, cut to what is left of the session's lifetime (the host
        kills it first, so that the agent's own end of the session finds none under way)."""
        lifetime = self.settings.max_lifetime_s
        if lifetime is None:
            return timeout_s
        left = max(0.001, lifetime - (time.monotonic() - self.opened_at))
        return left if timeout_s is None or left < timeout_s else timeout_s

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.channel.close()
        with anyio.CancelScope(shield=True):
            await self.sandbox.aclose()
