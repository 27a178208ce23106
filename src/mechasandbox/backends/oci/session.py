"""Docker and podman sessions: one container for many commands, the session agent its process.

The container is the one a one-shot run of the same policy gets, from the same compiler
(`compile_container_args`: `--network none`, read-only root, private /tmp, every capability
dropped, no-new-privileges, our seccomp profile, the user, the workspace and protection
mounts, memory/pids/cpu limits, ulimits, the runtime), except its process: the static
session agent (`runner/shim/session_agent.c`), bound read-only at `AGENT_PATH` (it needs
nothing from the image). The agent is PID 1, a child subreaper: it forks each command on
request, set up by the one-shot exec shim's records (its environment, directory, umask,
rlimits, exec), and kills what the command leaves when it ends. So a command costs a fork
and an exec inside, not an engine `exec` (50-60 ms); the container's cgroup limits hold for
the whole session (the policy's memory and process limits are the session's, as on
bubblewrap), its seccomp profile too (inherited).

The channel: the engine CLI's attached stdio (`ENGINE run --interactive`, its stdin and
stdout the host's end of a socket pair, started by the spawn helper): frames on the
agent's stdin and stdout (`--pipes`, `StdioMode.FRAMED`: the command's output and input
travel as frames, since no descriptor crosses the engine).

Not under gVisor (`GVISOR_NO_SESSIONS`): runsc's procfs ignores PR_SET_DUMPABLE, so a command
can open its PID 1's descriptors (`/proc/1/fd/1`) and write the channel: a well-formed
EXITED makes the host take the command for ended while it runs on, past the disarm that
follows it, free to arm a repository of the workspace for the host's git (and every later
result is the one before). A session under gVisor is refused with that reason; a one-shot
gVisor run ends with its container.

Podman's CLI runs in a spawn helper of the session's own (see `open_oci_session`).

Allowlist networking: the session's proxy (one for its life, `SessionProxy`) listens on a
unix socket mounted read-only into the container at its creation, where a one-shot run's
is (`PROXY_SOCKET`), the proxy variables are in every command's environment, and each
command is started behind the one-shot run's bridge (`bridge_argv`: the image's socat on
the container's loopback, then the command). Per command, because the agent's tree kill
after a command (kill(-1) in the container's pid namespace) kills a forwarder started
once too; so a command that kills its forwarder, or listens on its port itself, leaves
nothing for the next one. Where the image offers no forwarder (no socat; gVisor) the
one-shot run's rule holds: a strict policy is refused (`prepare_run`: the capabilities
say why), a best-effort one has no network at all, with a warning.

The caller's death ends it: the socket's host end closes, so the CLI's stdin ends, the
engine closes the agent's, and the agent kills the command under way and exits (PID 1:
the container stops); the spawn helper, which outlives the caller, kills the CLI and runs
`ENGINE rm --force` (`SpawnSpec.on_host_loss`), and a later process's sweep removes what an
engine that did not answer kept. No command can hold the channel open: the agent closes it
in every child before its set-up and is not dumpable (no /proc/1/fd for a command without
capabilities).
"""

from __future__ import annotations

import contextlib
import json

import anyio
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.agent_process import (
    AgentProcess,
    agent_argv,
    session_agent,
    start_agent,
    start_session_proxy,
    with_proxy_closed_on_failure,
)
from mechasandbox.backends.agent_session import AgentSession
from mechasandbox.backends.execute import disarm_after
from mechasandbox.backends.oci import forwarders, protection
from mechasandbox.backends.oci.cli import EngineCli, gone, remote_engine
from mechasandbox.backends.oci.compiler import (
    AGENT_PATH,
    ContainerRun,
    Runtime,
    SessionAgent,
    command_environment,
    compile_container_args,
)
from mechasandbox.backends.oci.engine import OciBackend
from mechasandbox.backends.oci.engine_api import EngineApi
from mechasandbox.backends.session_base import BackendSession, SessionSettings, no_sessions
from mechasandbox.backends.workspace.guards import GuardSet, describe_lost
from mechasandbox.backends.workspace.workspace_locks import locked_too_long
from mechasandbox.domain.errors import BackendFailed, ConfigInvalid, SandboxError
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest, Terminal
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupEvents, ProcessCgroup
from mechasandbox.limits.rlimits import rlimits_for
from mechasandbox.network.bridge import PROXY_SOCKET_PLACEHOLDER, ProxyBridge, bridge_argv
from mechasandbox.network.session_proxy import SessionProxy
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.session_protocol import StdioMode
from mechasandbox.runner.spec import SpawnSpec

# The engine creates and starts the container before the agent can answer: its own time.
HELLO_TIMEOUT_S = 60.0
GVISOR_NO_SESSIONS = (
    "not under gVisor (runsc): its /proc lets a command write the session agent's channel "
    "(/proc/1/fd: runsc ignores PR_SET_DUMPABLE), so a command could say it ended while it "
    "runs on past the disarm that follows it"
)
# Where the image names no PATH (docker's default for a container).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@attrs.define(eq=False)
class OciSessionSandbox:
    """A session's container and what it holds (see `agent_session.SessionSandbox`)."""

    backend: OciBackend
    cli: EngineCli
    api: EngineApi | None
    run: ContainerRun
    policy: Policy
    environment: tuple[tuple[str, str], ...]
    guards: GuardSet
    placeholders: tuple[str, ...]
    cgroup: ProcessCgroup | None = None
    process: AgentProcess | None = None
    launcher: HelperProcessRunner | None = None  # podman's: a spawn helper of its own
    # It holds its placeholders and counts among the live containers (else: its pool does).
    registered: bool = True
    # In allowlist mode: the forwarder each command is started behind (None: no network).
    bridge: ProxyBridge | None = None
    # Its container is gone (after `aclose`: else it is still registered, see there).
    removed: bool = False
    _closed: bool = False
    # The command under way (its bridge's failure names it); commands come one at a time.
    _command: str = ""

    def command_spec(self, request: RunRequest, limits: Limits) -> Result[SpawnSpec, SandboxError]:
        if isinstance(request.stdin, Terminal):
            problem = "a session gives its commands no terminal: run it on its own"
            return Failure(ConfigInvalid(problem=problem, field="stdin"))
        lost = self.guards.lost()
        if lost:
            # Replaced on the host between commands: its cover is off for every command
            # from now on, and the watcher's first look could come after a quick one ended.
            reason = f"stopped: {describe_lost(lost)}"
            return Failure(BackendFailed(backend=self.backend.name, reason=reason))
        self._command = request.argv[0]
        argv = request.argv
        if self.bridge is not None:
            argv = tuple(bridge_argv(self.bridge, argv))
        return Success(
            SpawnSpec(
                argv=argv,
                env=self.environment,
                cwd=self.run.workspace,
                stdin=request.stdin,
                on_output=request.on_output,
                timeout_s=limits.timeout_s,
                max_output_bytes=limits.max_output_bytes,
                umask=self.policy.filesystem.umask,
                # Memory and processes are the container's cgroup's, for the session.
                rlimits=rlimits_for(limits, memory_by_rlimit=False, processes_by_rlimit=False),
                executable=argv[0],
                watch=self.guards.watcher(),
            )
        )

    def counters(self) -> CgroupEvents | None:
        if self.cgroup is None:
            return None
        try:
            return self.cgroup.events()
        except OSError:
            return None

    def finished(
        self, result: Result[RunResult, SandboxError], started_ns: int
    ) -> Result[RunResult, SandboxError]:
        lost = self.guards.lost()
        late = self.guards.warnings(lost)
        if isinstance(result, Success):
            value = result.unwrap()
            failed = None
            if self.bridge is not None:
                failed = forwarders.bridge_failure(
                    value, self._command, backend=self.backend.name, image=self.backend.image
                )
            if failed is not None:
                result = Failure(failed)
            elif late:
                result = Success(attrs.evolve(value, warnings=value.warnings + late))
        # A path whose guard was lost is the commands' to write: what is below it is looked at.
        exposed = [path for path, _ in lost]
        return disarm_after(
            result, self.run.workspace, self.policy, started_ns, self.backend.git, exposed=exposed
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                if self.process is not None:
                    await self.process.end()
            finally:
                if self.launcher is not None:
                    self.launcher.close()
                removed = await _remove(self.backend, self.cli, self.api, self.run.name)
                self.removed = removed
                self.guards.close()
                if removed and self.registered:
                    self.backend.state.live.discard(self.run.name)
                    self.backend.state.placeholders.release(self.run.workspace, self.placeholders)
                # Otherwise it stays registered: `close`, the exit handler or a sweep removes it.


async def _remove(backend: OciBackend, cli: EngineCli, api: EngineApi | None, name: str) -> bool:
    if api is not None and await api.remove(name):
        return True
    return gone(await cli.run(*backend._remove_args(name)))


async def _image_path(backend: OciBackend, cli: EngineCli, api: EngineApi | None) -> str:
    """The image's PATH (a command's environment names the variables it gets: none comes
    from the image through the agent, which is not the engine's `exec`)."""
    env: object = None
    if api is not None:
        answer = await api.image(backend.image)
        env = answer.get("Config", {}).get("Env") if isinstance(answer, dict) else None
    else:
        found = await cli.run("image", "inspect", "--format", "{{json .Config.Env}}", backend.image)
        if isinstance(found, Success) and found.unwrap().exit_code == 0:
            with contextlib.suppress(ValueError):
                env = json.loads(found.unwrap().stdout)
    for entry in env if isinstance(env, list) else ():
        if isinstance(entry, str) and entry.startswith("PATH="):
            return entry[len("PATH=") :]
    return DEFAULT_PATH


async def _pid(cli: EngineCli, api: EngineApi | None, name: str) -> int | None:
    if api is not None:
        state = await api.state(name)
    else:
        state = await cli.state(name)
    pid = state.get("Pid") if isinstance(state, dict) else None
    return pid if isinstance(pid, int) and pid > 0 else None


async def open_oci_session(
    backend: OciBackend, workspace: str, policy: Policy, settings: SessionSettings
) -> Result[BackendSession, SandboxError]:
    """Start the session's container as a one-shot run of `policy` in `workspace` would be,
    with the agent as its process (and the session's proxy in allowlist mode), and wait
    for the agent's HELLO."""
    if backend.runtime is Runtime.RUNSC:
        return Failure(no_sessions(backend.name, GVISOR_NO_SESSIONS))
    found = session_agent(backend.name, backend.runner)
    if isinstance(found, Failure):
        return Failure(found.failure())
    engine = backend._engine()
    if isinstance(engine, Failure):
        return Failure(engine.failure())
    prepared = backend._prepare(
        RunRequest(argv=(AGENT_PATH,), workspace=workspace), policy, probed=backend
    )
    if isinstance(prepared, Failure):
        return Failure(prepared.failure())
    ready = prepared.unwrap()
    run = backend._container_run(
        ready.workspace,
        ready.policy,
        layout=ready.layout,
        mounts=ready.mounts,
        file_placeholders=ready.file_placeholders,
    )
    _caps, info, executable = engine.unwrap()
    cli = backend._cli(executable)
    api = await backend.state.apis.get(cli, podman=backend.kind == "podman")
    # As a one-shot run: no forwarder in the image, no proxy (a strict policy was refused
    # above; a best-effort one has no network at all).
    bridged = forwarders.bridge_for(info.socat, ready.policy, PROXY_SOCKET_PLACEHOLDER)
    egress = None if bridged is None else backend.egress
    proxied = await start_session_proxy(backend.name, egress, ready.policy.network)
    if isinstance(proxied, Failure):
        return Failure(proxied.failure())
    proxy = proxied.unwrap()
    bridge = None
    if proxy is not None:
        bridge = forwarders.bridge_for(info.socat, ready.policy, str(proxy.running.socket_path))
    started = start_oci_session(
        backend,
        run,
        ready.policy,
        settings,
        warnings=ready.warnings,
        api=api,
        proxy=proxy,
        bridge=bridge,
    )
    return await with_proxy_closed_on_failure(proxy, started)


async def start_oci_session(
    backend: OciBackend,
    run: ContainerRun,
    policy: Policy,
    settings: SessionSettings,
    *,
    warnings: tuple[str, ...],
    api: EngineApi | None,
    registered: bool = True,
    proxy: SessionProxy | None = None,
    bridge: ProxyBridge | None = None,
) -> Result[AgentSession, SandboxError]:
    """Start `run` (a prepared policy's container) with the agent as its process and wait
    for its HELLO. `api`: the engine's, for its lifecycle calls (None: the CLI's);
    `registered`: the session holds the run's placeholders and counts it among the live
    containers itself (False: its caller does, the warm pool, before and after it);
    `proxy` and `bridge` (allowlist mode): the session's proxy, which the session ends with
    itself once it started, and the forwarder to it (the proxy's socket is mounted)."""
    name = backend.name
    if backend.runtime is Runtime.RUNSC:
        return Failure(no_sessions(name, GVISOR_NO_SESSIONS))
    found = session_agent(name, backend.runner)
    if isinstance(found, Failure):
        return Failure(found.failure())
    engine = backend._engine()
    if isinstance(engine, Failure):
        return Failure(engine.failure())
    _caps, info, executable = engine.unwrap()
    # The container's pid namespace is the session's alone: what a command leaves is
    # killed with kill(-1), which no fork outruns (see the agent's `kill_namespace`).
    arguments = ("--pipes", *agent_argv(AGENT_PATH, settings, pid_namespace=True)[1:])
    request = RunRequest(argv=(AGENT_PATH, *arguments), workspace=run.workspace)
    cli = backend._cli(executable)
    env = command_environment(policy, backend.host, bridge=bridge)
    env.setdefault("PATH", await _image_path(backend, cli, api))
    run = attrs.evolve(run, agent=SessionAgent(host_path=found.unwrap(), arguments=arguments))
    placeholders = protection.placeholder_paths(run)
    if registered:
        if not backend.state.placeholders.hold(run.workspace, placeholders, run.file_placeholders):
            return Failure(BackendFailed(backend=name, reason=locked_too_long("container")))
        backend.state.live.add(run.name, cli)
    sandbox = OciSessionSandbox(
        backend=backend,
        cli=cli,
        api=api,
        run=run,
        policy=policy,
        environment=tuple(sorted(env.items())),
        guards=protection.guards(run),
        placeholders=placeholders,
        registered=registered,
        bridge=bridge,
    )
    args = compile_container_args(
        request,
        policy,
        backend.host,
        backend.image,
        backend.runtime,
        info.traits,
        run=run,
        cpus=backend.cpus,
        bridge=bridge,
    )
    removal = (cli.executable, *backend._remove_args(run.name, info.traits))
    spec = attrs.evolve(cli.spec(args, timeout_s=None), on_host_loss=removal)
    launcher = backend.runner
    if backend.kind == "podman":
        # podman daemonizes conmon out of the CLI's session; the spawn helper kills such a
        # stray whenever one of its runs ends: the session's CLI gets a helper of its own,
        # where no other run ends while it lives.
        launcher = sandbox.launcher = HelperProcessRunner()
    try:
        started = await start_agent(
            name, launcher, spec, mode=StdioMode.FRAMED, hello_timeout_s=HELLO_TIMEOUT_S
        )
        if isinstance(started, Failure):
            await sandbox.aclose()
            return Failure(started.failure())
        channel, sandbox.process = started.unwrap()
        if not remote_engine(backend.host):
            pid = await _pid(cli, api, run.name)
            sandbox.cgroup = ProcessCgroup.of(pid) if pid is not None else None
    except BaseException:
        # Cancelled while it started: the container goes now (its caller never gets the
        # session to close), with the agent's channel.
        with anyio.CancelScope(shield=True):
            await sandbox.aclose()
        raise
    return Success(
        AgentSession(
            name=name,
            workspace=run.workspace,
            policy=policy,
            channel=channel,
            sandbox=sandbox,
            settings=settings,
            warnings=warnings,
            proxy=proxy,
        )
    )
