"""Bubblewrap sessions: one bwrap sandbox for many commands, the session agent inside it.

The sandbox is the one a one-shot run of the same policy gets: the same compiler, mounts,
namespaces, seccomp program (bwrap's `--seccomp`, inherited by the agent and every command),
capability drop, placeholders and guards, and one cgroup with the policy's memory and process
limits for the session's life. What differs: bwrap's command is the agent
(`runner/shim/session_agent.c`, static, bound read-only at `SESSION_AGENT`), started by the
spawn helper like any run, with its control socket as stdin. Each command then costs a fork
and an exec inside: the agent sets it up with the records of its spawn (`native`: chdir,
umask, rlimits, its environment, the exec), plus Landlock's signal scope where the kernel
has it (ABI 6), so that no command can signal the agent or anything outside its own domain;
the agent is not dumpable (no ptrace, no /proc/PID/fd) and bwrap's seccomp refuses ptrace
anyway. The guards of the protected paths are watched during each command, the new
repositories a command made are disarmed after it, its refusals explained, as after a run.

Allowlist networking: the session's proxy (one for its life, `SessionProxy`) listens on a
unix socket bound in at `PROXY_SOCKET` as for a run, and each command is started behind
the run's own bridge (`bridge_argv`: socat on the sandbox's loopback, then the command):
per command, because the agent's tree kill after a command kills every process of the
sandbox but bwrap's pid 1 and itself, a forwarder started once included. Each command's
forwarder is its own and dies with it.

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
from mechasandbox.backends.linux.bwrap_compiler import SESSION_AGENT, BwrapCommand
from mechasandbox.backends.linux.bwrap_hooks import LANDLOCK_SCOPE_ABI
from mechasandbox.backends.linux.landlock_rules import SCOPE_TARGET
from mechasandbox.backends.resources import run_rlimits
from mechasandbox.backends.session_base import BackendSession, SessionSettings
from mechasandbox.backends.template import Job, explain_refusals
from mechasandbox.backends.workspace.guards import GuardSet, describe_lost
from mechasandbox.domain.errors import BackendFailed, ConfigInvalid, SandboxError, SpawnFailed
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest, Terminal
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupEvents, CgroupManager, CgroupRun
from mechasandbox.network.bridge import BRIDGE_FAILED, BRIDGE_PREFIX, ProxyBridge, bridge_argv
from mechasandbox.runner.spec import ChildHook, SpawnSpec

if TYPE_CHECKING:
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend, BwrapSetting
    from mechasandbox.network.session_proxy import SessionProxy

NAME = "bubblewrap"
# Landlock's signal scope (ABI 6, include/uapi/linux/landlock.h).
SCOPE_SIGNAL = 1 << 1
# What each command is started by in allowlist mode (`bridge_argv`'s shell).
BRIDGE_SHELL = "/bin/sh"


def command_scope(abi: int) -> tuple[ChildHook, ...]:
    """Each command's own Landlock domain, scoping signals (none without ABI 6)."""
    if abi < LANDLOCK_SCOPE_ABI:
        return ()
    return (ChildHook(target=SCOPE_TARGET, argument={"abi": abi, "scoped": SCOPE_SIGNAL}),)


@attrs.define(eq=False)
class BwrapSessionSandbox:
    """A running session's bwrap and what it holds (see `agent_session.SessionSandbox`)."""

    backend: BubblewrapBackend
    job: Job
    setting: BwrapSetting
    command: BwrapCommand
    guards: GuardSet
    manager: CgroupManager | None
    cgroup: CgroupRun | None
    scope: tuple[ChildHook, ...]
    bridge: ProxyBridge | None = None
    process: AgentProcess | None = None
    events: SessionCounters = attrs.field(factory=SessionCounters)
    _closed: bool = False

    def command_spec(self, request: RunRequest, limits: Limits) -> Result[SpawnSpec, SandboxError]:
        if isinstance(request.stdin, Terminal):
            problem = "a session gives its commands no terminal: run it on its own"
            return Failure(ConfigInvalid(problem=problem, field="stdin"))
        lost = self.guards.lost()
        if lost:
            # Replaced on the host between commands: its cover is off for every command
            # from now on, and the watcher's first look could come after a quick one ended.
            reason = f"stopped: {describe_lost(lost)}"
            return Failure(BackendFailed(backend=NAME, reason=reason))
        policy = self.job.policy
        argv, executable = request.argv, request.argv[0]
        if self.bridge is not None:
            argv, executable = tuple(bridge_argv(self.bridge, argv)), BRIDGE_SHELL
        return Success(
            SpawnSpec(
                argv=argv,
                env=self.command.environment,
                cwd=self.job.workspace,
                stdin=request.stdin,
                on_output=request.on_output,
                timeout_s=limits.timeout_s,
                max_output_bytes=limits.max_output_bytes,
                umask=policy.filesystem.umask,
                rlimits=run_rlimits(limits, self.backend.cgroups),
                hooks=self.scope,
                executable=executable,
                watch=self.guards.watcher(),
            )
        )

    def counters(self) -> CgroupEvents | None:
        return self.events.read(self.manager, self.cgroup)

    def finished(
        self, result: Result[RunResult, SandboxError], since_ns: int
    ) -> Result[RunResult, SandboxError]:
        job, backend = self.job, self.backend
        lost = self.guards.lost()
        late = self.guards.warnings(lost)
        if isinstance(result, Success):
            value = result.unwrap()
            failed = None if self.bridge is None else bridge_failure(value)
            if failed is not None:
                result = Failure(failed)
            elif late:
                result = Success(attrs.evolve(value, warnings=value.warnings + late))
        # The placeholders are the session's own, empty and covered read-only inside while
        # their guards hold: nothing the commands do can make a repository in one. A path
        # whose guard was lost is the commands' to write: what is below it is looked at.
        replaced = {path for path, _ in lost}
        covered = {path for path in self.command.placeholders if path not in replaced}
        result = disarm_after(
            result, job.workspace, job.policy, since_ns, backend.git, skip=covered, exposed=replaced
        )
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
            self.guards.close()
            self.events.close()
            if self.manager is not None and self.cgroup is not None:
                with contextlib.suppress(OSError):
                    self.manager.destroy(self.cgroup)
            self.backend.close_setting(self.setting, self.job.workspace)


async def open_bwrap_session(
    backend: BubblewrapBackend, workspace: str, policy: Policy, settings: SessionSettings
) -> Result[BackendSession, SandboxError]:
    """Set the sandbox up as a one-shot run of `policy` in `workspace` would be, with the
    agent as its command (and the session's proxy in allowlist mode), and wait for the
    agent's HELLO."""
    found = session_agent(NAME, backend.runner)
    if isinstance(found, Failure):
        return Failure(found.failure())
    agent = found.unwrap()
    # bwrap always unshares the pid namespace: its pid 1, the agent pid 2
    argv = agent_argv(SESSION_AGENT, settings, pid_namespace=True)
    request = RunRequest(argv=argv, workspace=workspace)
    prepared = await prepared_session(backend, request, policy)
    if isinstance(prepared, Failure):
        return Failure(prepared.failure())
    job, setting, proxy = prepared.unwrap()
    return await with_proxy_closed_on_failure(
        proxy, _start(backend, job, setting, agent, settings, proxy)
    )


async def _start(
    backend: BubblewrapBackend,
    job: Job,
    setting: BwrapSetting,
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
    command, _unix = launch.compiled
    backend.placeholders.created(real, command.placeholders, job.file_placeholders)
    backend.placeholders.make(real, command.placeholders)
    manager = launch.cgroups if isinstance(launch.cgroups, CgroupManager) else None
    sandbox = BwrapSessionSandbox(
        backend=backend,
        job=job,
        setting=setting,
        command=command,
        guards=GuardSet(command.guards + tuple((p, "write") for p in command.placeholders)),
        manager=manager,
        cgroup=None,
        scope=command_scope(setting.features.landlock_abi),
        bridge=None if proxy is None else backend.proxy_bridge(chosen, setting.proxy_socket),
    )
    # bwrap and the agent under no rlimits: each command has its own (its CPU time is
    # its own, and what it makes the agent do counts toward no limit of the agent's)
    spec = attrs.evolve(launch.spec, timeout_s=None, stdin=None, on_output=None, rlimits=())
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


def bridge_failure(result: RunResult) -> SandboxError | None:
    """A command's bridge that failed before the command ran: the forwarder did not start
    (BRIDGE_FAILED), or the command could not be executed (the bridge's shell says so,
    with status 126 or 127), as a one-shot run's bwrap would have said."""
    said = result.stderr
    if not said.startswith(BRIDGE_PREFIX):
        return None
    message = said.decode(errors="replace").strip()
    if result.exit_code == BRIDGE_FAILED:
        return BackendFailed(backend=NAME, reason=message)
    first = said.splitlines()[0]
    if result.exit_code in (126, 127) and b": exec: " in first:
        # dash: "mechasandbox-bridge: LINE: exec: COMMAND: WHY"
        named, _, why = first.split(b": exec: ", 1)[1].rpartition(b": ")
        return SpawnFailed(
            command=named.decode(errors="replace"),
            reason=why.decode(errors="replace"),
            exit_status=result.exit_code,
        )
    return None
