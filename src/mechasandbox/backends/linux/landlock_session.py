"""Landlock sessions: a confined, long-lived agent that forks each command.

The agent is started by the spawn helper as a one-shot landlock run of the same policy would
start its command, with the policy's `isolate` applied to it before its exec (every
capability dropped, no_new_privs, the seccomp filter): so the agent, and every command it
forks, holds no capability and passes the filter (both inherit). Each command is then set up
by the one-shot run's own records (`native`) but for `isolate`, which it inherits whole from
the agent (see `_start`): `restrict_self`, the policy's Landlock domain with its rules
expanded for that command (what the host carved out, protected paths, is read anew each
time: the expansion is made again whenever a carved directory's stamp changed, see
`landlock_listings`) and its scopes (ABI 6: no signal out of the domain, so none to the
agent; no abstract unix socket out of it). The agent itself is in no Landlock domain (its
binary, beside this package, is not a path the policy grants); it is not dumpable, so a
command can neither trace it nor open its descriptors, and a command's domain keeps it from
tracing anything outside. The session keeps one private TMPDIR and
HOME, and one cgroup, for its life.

Allowlist networking: the session's proxy (one for its life, `SessionProxy`) listens on
loopback TCP with its token, as a run's does; every command's Landlock domain grants TCP
connect to its port only and the seccomp filter (the agent's, inherited) allows only IPv4
TCP sockets.

Not yet: a terminal.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.agent_process import (
    AgentProcess,
    SessionCounters,
    agent_argv,
    prepared_session,
    session_agent,
    start_agent,
    with_proxy_closed_on_failure,
)
from mechasandbox.backends.agent_session import AgentSession
from mechasandbox.backends.execute import disarm_after
from mechasandbox.backends.linux.landlock_compiler import LandlockRuleset
from mechasandbox.backends.linux.landlock_listings import RememberedExpansion
from mechasandbox.backends.linux.landlock_rules import RESTRICT_TARGET
from mechasandbox.backends.resources import run_rlimits
from mechasandbox.backends.session_base import BackendSession, SessionSettings
from mechasandbox.backends.template import Job, explain_refusals
from mechasandbox.domain.errors import BackendFailed, ConfigInvalid, SandboxError
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest, Terminal
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupEvents, CgroupManager, CgroupRun
from mechasandbox.runner.spec import ChildHook, SpawnSpec

if TYPE_CHECKING:
    from mechasandbox.backends.linux.landlock import LandlockBackend, LandlockSetting
    from mechasandbox.network.session_proxy import SessionProxy

NAME = "landlock"


@attrs.define(eq=False)
class LandlockSessionSandbox:
    """A running session's agent and what it holds (see `agent_session.SessionSandbox`)."""

    backend: LandlockBackend
    job: Job
    setting: LandlockSetting
    ruleset: LandlockRuleset
    hooks: tuple[ChildHook, ...]
    manager: CgroupManager | None
    cgroup: CgroupRun | None = None
    process: AgentProcess | None = None
    events: SessionCounters = attrs.field(factory=SessionCounters)
    # The rules' expansion, kept while the carved directories are unchanged.
    expansion: RememberedExpansion = attrs.field(factory=RememberedExpansion)
    _closed: bool = False

    def command_spec(self, request: RunRequest, limits: Limits) -> Result[SpawnSpec, SandboxError]:
        if isinstance(request.stdin, Terminal):
            problem = "a session gives its commands no terminal: run it on its own"
            return Failure(ConfigInvalid(problem=problem, field="stdin"))
        return Success(
            SpawnSpec(
                argv=request.argv,
                env=self.ruleset.env,
                cwd=self.job.workspace,
                stdin=request.stdin,
                on_output=request.on_output,
                timeout_s=limits.timeout_s,
                max_output_bytes=limits.max_output_bytes,
                umask=self.job.policy.filesystem.umask,
                rlimits=run_rlimits(limits, self.backend.cgroups),
                hooks=tuple(self._expanded(hook) for hook in self.hooks),
                executable=request.argv[0],
            )
        )

    def _expanded(self, hook: ChildHook) -> ChildHook:
        """The Landlock hook with its rules expanded for this command, here, by the
        session's remembered expansion (an unchanged workspace is not listed again); the
        records carry the same pairs a fresh expansion makes (see `rule_pairs`)."""
        if hook.target != RESTRICT_TARGET:
            return hook
        try:
            pairs = self.expansion(hook.argument["rules"])
        except OSError:
            return hook  # expanded by the records' encoding, which fails the command
        return attrs.evolve(hook, argument={**hook.argument, "expanded": pairs})

    def counters(self) -> CgroupEvents | None:
        return self.events.read(self.manager, self.cgroup)

    def finished(
        self, result: Result[RunResult, SandboxError], since_ns: int
    ) -> Result[RunResult, SandboxError]:
        job, backend = self.job, self.backend
        result = disarm_after(result, job.workspace, job.policy, since_ns, backend.git)
        return explain_refusals(
            result, lambda: backend.refusal_view(job, self.setting), job.policy, job.host
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.process is not None:
                await self.process.end()
        finally:
            self.events.close()
            if self.manager is not None and self.cgroup is not None:
                with contextlib.suppress(OSError):
                    self.manager.destroy(self.cgroup)
            self.backend.close_setting(self.setting, self.job.workspace)


async def open_landlock_session(
    backend: LandlockBackend, workspace: str, policy: Policy, settings: SessionSettings
) -> Result[BackendSession, SandboxError]:
    """Start the agent as a one-shot run's command would start (its isolation applied; the
    session's proxy in allowlist mode), and wait for its HELLO."""
    found = session_agent(NAME, backend.runner)
    if isinstance(found, Failure):
        return Failure(found.failure())
    agent = found.unwrap()
    request = RunRequest(argv=agent_argv(agent, settings), workspace=workspace)
    # (its proxy on loopback TCP, as a one-shot landlock run reaches it)
    prepared = await prepared_session(backend, request, policy, listen_tcp=True)
    if isinstance(prepared, Failure):
        return Failure(prepared.failure())
    job, setting, proxy = prepared.unwrap()
    return await with_proxy_closed_on_failure(
        proxy, _start(backend, job, setting, agent, settings, proxy)
    )


async def _start(
    backend: LandlockBackend,
    job: Job,
    setting: LandlockSetting,
    agent: str,
    settings: SessionSettings,
    proxy: SessionProxy | None,
) -> Result[BackendSession, SandboxError]:
    real, chosen = job.workspace, job.policy
    compiled = backend.compile(job, setting, agent=agent)
    if isinstance(compiled, Failure):
        backend.close_setting(setting, real)
        return Failure(compiled.failure())
    launch = compiled.unwrap()
    manager = launch.cgroups if isinstance(launch.cgroups, CgroupManager) else None
    # A command's own set-up: what the agent was not given before its exec. The ahead hook
    # (`isolate`: capabilities and their bounding set dropped, no_new_privs, the seccomp
    # filter) is not repeated: a fork keeps all of it and exec cannot undo it (a filter
    # cannot be removed, no_new_privs not cleared; with no_new_privs an exec gains no
    # capability the agent lacks), so running it again only stacked a second copy of the
    # same filter on every system call of the command (0.2 ms a command).
    sandbox = LandlockSessionSandbox(
        backend=backend,
        job=job,
        setting=setting,
        ruleset=launch.compiled,
        hooks=tuple(hook for hook in launch.spec.hooks if not hook.ahead),
        manager=manager,
    )
    # The agent: isolated (the ahead hook), no rlimits (each command has its own), no
    # Landlock domain of its own (see the module's docstring).
    spec = attrs.evolve(
        launch.spec,
        timeout_s=None,
        stdin=None,
        on_output=None,
        rlimits=(),
        hooks=tuple(hook for hook in launch.spec.hooks if hook.ahead),
    )
    if manager is not None:
        try:
            sandbox.cgroup = manager.create(chosen.limits)
        except OSError as error:
            await sandbox.aclose()
            return Failure(BackendFailed(backend=NAME, reason=f"cgroup: {error}"))
        spec = attrs.evolve(spec, cgroup_procs=spec.cgroup_procs + sandbox.cgroup.procs_files)
    started = await start_agent(NAME, backend.runner, spec)
    if isinstance(started, Failure):
        await sandbox.aclose()
        return Failure(started.failure())
    channel, sandbox.process = started.unwrap()
    return Success(
        AgentSession(
            name=NAME,
            workspace=real,
            policy=chosen,
            channel=channel,
            sandbox=sandbox,
            settings=settings,
            warnings=job.warnings + launch.warnings,
            proxy=proxy,
        )
    )
