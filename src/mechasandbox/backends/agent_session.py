"""A `BackendSession` whose sandbox holds the session agent (see `runner.session_client`):
what every agent-driven session shares, whatever set the sandbox up.

A backend supplies a `SessionSandbox`: the spawn of one command as the agent must make it
(`command_spec`: argv, environment, directory, umask, rlimits, the hooks that have a native
form, timeout and output cap), the cumulative counters of the session's cgroup, what it does
after each command (`finished`), and its teardown. `AgentSession` serialises the commands,
bounds each one's deadline by what is left of the session's lifetime, takes each command's
share of the cgroup's counters (an OOM kill during a command is that command's), and
classifies the outcome as `execute_spec` does a one-shot run's (`backends.outcome`). In
allowlist mode the session's proxy (`proxy`, one for its life) serves every command, and
each result carries the refusals made while that command ran, as a one-shot run's does.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

import anyio
import attrs
from returns.result import Failure, Result

from mechasandbox.backends.outcome import classify, run_result
from mechasandbox.backends.session_base import SessionSettings, command_limits
from mechasandbox.domain.errors import BackendFailed, ConfigInvalid, SandboxError
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult, Violation
from mechasandbox.limits.cgroup import CgroupEvents
from mechasandbox.network.session import with_violations
from mechasandbox.network.session_proxy import SessionProxy
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
        self, result: Result[RunResult, SandboxError], since_ns: int
    ) -> Result[RunResult, SandboxError]:
        """What follows each command (the repositories made since `since_ns`, the session's
        start, disarmed; its refusals explained)."""
        ...

    async def aclose(self) -> None:
        """Kill and wait for the sandbox, give back what it held (after the channel closed)."""
        ...


# See `AgentSession._deadline`.
LIFETIME_MARGIN_S = 0.25


def _since(after: CgroupEvents | None, before: CgroupEvents | None) -> CgroupEvents | None:
    if after is None or before is None:
        return after
    return CgroupEvents(
        oom_kills=max(0, after.oom_kills - before.oom_kills),
        pids_max_hits=max(0, after.pids_max_hits - before.pids_max_hits),
    )


def _over(channel: AgentChannel) -> bool:
    return channel.ended is not None


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
    # The allowlist proxy the commands talk to (None: not allowlist, or best-effort without
    # one); ended with the session.
    proxy: SessionProxy | None = attrs.field(default=None, repr=False)
    opened_at: float = attrs.field(factory=time.monotonic)
    # The session's start in file system time (whose timestamps are coarse). After each
    # command, every repository made since then is looked at again, not only those the
    # command changed: one made by an earlier command is protected by nothing (the
    # session's protections were set up before it existed), and a later command can arm it
    # without touching its `.git` (a file written into `.git/hooks/`), which a one-shot run
    # could not (its set-up protects the repositories it finds).
    opened_ns: int = attrs.field(factory=lambda: time.time_ns() - 20_000_000)
    _lock: anyio.Lock = attrs.field(factory=anyio.Lock, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _counted: CgroupEvents | None = attrs.field(default=None, init=False)

    @property
    def ended(self) -> str | None:
        """Why the session is over (closed, or ended on its own: idle, lifetime, fail
        closed, the agent gone); None while it runs commands."""
        if self._closed:
            return "the session was closed"
        if self._lock.locked():  # a command runs: its supervision reads the channel
            return self.channel.ended
        return self.channel.ended_between_commands()

    async def run(
        self, request: RunRequest, *, limits: Limits | None = None
    ) -> Result[RunResult, SandboxError]:
        given = request.workspace
        if given != self.workspace and os.path.realpath(given) != self.workspace:
            problem = (
                f"the session's workspace is {self.workspace}, not {request.workspace!r} "
                "(a session has one workspace; open another session for another)"
            )
            return Failure(ConfigInvalid(problem=problem, field="workspace"))
        narrowed = command_limits(limits, self.policy.limits)
        if isinstance(narrowed, Failure):
            return Failure(narrowed.failure())
        chosen = narrowed.unwrap()
        async with self._lock:
            if self._closed or self.channel.ended is not None:
                why = self.channel.ended or "the session was closed"
                return Failure(BackendFailed(backend=self.name, reason=f"session over: {why}"))
            spec = self.sandbox.command_spec(request, chosen)
            if isinstance(spec, Failure):
                return Failure(spec.failure())
            command = attrs.evolve(spec.unwrap(), timeout_s=self._deadline(chosen.timeout_s))
            # Nothing runs in the session's cgroup between commands (the agent waits, every
            # command's tree is dead): the counters after the last command are those before
            # this one, read once per command.
            if self._counted is None:
                self._counted = self.sandbox.counters()
            before = self._counted
            try:
                ran = await self.channel.run(command)
            except BaseException:
                # Cancelled (the caller interrupted): the command's tree is dead (the
                # channel waited for it), and what it made in the workspace is disarmed
                # all the same before the cancellation goes on.
                self._counted = None  # the next command reads them anew
                cancelled = BackendFailed(backend=self.name, reason="cancelled")
                self.sandbox.finished(Failure(cancelled), self.opened_ns)
                with anyio.CancelScope(shield=True):
                    await self._refused()  # its own: never the next command's
                raise
            self._counted = self.sandbox.counters()
            events = _since(self._counted, before)
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

            refused = await self._refused()
            result = self.sandbox.finished(
                with_violations(ran.bind(classified), refused), self.opened_ns
            )
            if _over(self.channel):
                # The session ended during the command (its tree could not be killed, its
                # lifetime passed, the agent died): the sandbox goes now, with whatever is
                # left in it, not when the caller gets round to closing.
                with anyio.CancelScope(shield=True):
                    await self._end()
            return result

    async def _refused(self) -> tuple[Violation, ...]:
        """What the proxy refused during the command that just ended."""
        return () if self.proxy is None else await self.proxy.violations()

    async def _end(self) -> None:
        try:
            await self.sandbox.aclose()
        finally:
            if self.proxy is not None:
                await self.proxy.aclose()

    def _deadline(self, timeout_s: float | None) -> float | None:
        """The command's timeout, cut to what is left of the session's lifetime (the host
        kills it first, so that the agent's own end of the session finds none under way)."""
        lifetime = self.settings.max_lifetime_s
        if lifetime is None:
            return timeout_s
        # `opened_at` is taken after the agent's HELLO, its own clock started before: the
        # host's cut comes first by LIFETIME_MARGIN_S more, so that a busy event loop does
        # not let the agent's end (a closed channel) beat it.
        spent = time.monotonic() - self.opened_at + LIFETIME_MARGIN_S
        left = max(0.001, lifetime - spent)
        return left if timeout_s is None or left < timeout_s else timeout_s

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.channel.close()
        with anyio.CancelScope(shield=True):
            await self._end()
