"""The session agent started by the spawn helper, as bubblewrap's and landlock's sessions
start it: a long-lived run of the helper whose stdin is the agent's control socket (see
`submission.submit_with_channel`), until its HELLO; and its end. And the session's
allowlist proxy, started before the sandbox (whose set-up names it)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.session_base import SessionSettings, no_sessions
from mechasandbox.domain.errors import BackendFailed, SandboxError
from mechasandbox.domain.request import RunRequest
from mechasandbox.limits.cgroup import HeldEvents
from mechasandbox.runner import framing
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.session_client import HELLO_TIMEOUT_S, AgentChannel
from mechasandbox.runner.session_protocol import StdioMode, agent_path, agent_speaks
from mechasandbox.runner.spec import SpawnSpec
from mechasandbox.runner.submission import HelpedRunner, Submitted

if TYPE_CHECKING:
    from mechasandbox.backends.session_base import BackendSession
    from mechasandbox.backends.template import Job, SpawningBackend
    from mechasandbox.domain.policy import NetworkPolicy, Policy
    from mechasandbox.limits.cgroup import CgroupEvents, CgroupManager, CgroupRun
    from mechasandbox.network.session import EgressProxy
    from mechasandbox.network.session_proxy import SessionProxy

Setting = TypeVar("Setting")

# How long the sandbox may take to end once its agent was told to (the agent's own tree
# kill is bounded by 2 s; the helper's kill of what is left follows).
END_TIMEOUT_S = 5.0


def session_agent(backend: str, runner: ProcessRunner) -> Result[str, SandboxError]:
    """The agent's host path, if this host has one and `runner` can start it."""
    path = agent_path()
    if path is None or not agent_speaks(path):
        return Failure(no_sessions(backend, "the session agent is not built here (`make shim`)"))
    if not isinstance(runner, HelpedRunner):
        return Failure(no_sessions(backend, "its process runner cannot start a session"))
    return Success(path)


def agent_argv(
    path: str, settings: SessionSettings, *, pid_namespace: bool = False
) -> tuple[str, ...]:
    """The agent's command line: its idle timeout and lifetime, which it enforces;
    `pid_namespace`: the agent is pid 1 or 2 of a pid namespace that is the session's alone
    (bubblewrap, a container), so its tree kill is kill(-1) (never say so elsewhere: there
    kill(-1) would reach the user's own processes; the agent refuses to start when its pid
    says otherwise)."""
    argv = [path, "--pid-namespace"] if pid_namespace else [path]
    if settings.idle_timeout_s is not None:
        argv += ["--idle-ms", str(max(1, round(settings.idle_timeout_s * 1000)))]
    if settings.max_lifetime_s is not None:
        argv += ["--lifetime-ms", str(max(1, round(settings.max_lifetime_s * 1000)))]
    return tuple(argv)


@attrs.define(eq=False)
class AgentProcess:
    """The helper's run that is the session's sandbox (bwrap, or the agent itself)."""

    run: Submitted

    def said(self) -> str:
        """What it wrote on stderr (bwrap's own failure, the agent's)."""
        said = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(self.run.err_r, 65536):
                said += chunk
        return said.decode(errors="replace").strip()

    async def end(self) -> None:
        """Wait (bounded) for it to end once its channel closed, then close its run: what
        is left of its tree dies with the run's socket."""
        sock = self.run.sock
        with anyio.move_on_after(END_TIMEOUT_S):
            while True:
                await anyio.wait_readable(sock)
                try:
                    message, _ = framing.receive(sock)
                except framing.FrameError:
                    break
                if message.get("event") in ("exited", "failed"):
                    break
        self.run.close()


async def start_agent(
    backend: str,
    runner: ProcessRunner,
    spec: SpawnSpec,
    *,
    mode: StdioMode = StdioMode.FDS,
    hello_timeout_s: float = HELLO_TIMEOUT_S,
) -> Result[tuple[AgentChannel, AgentProcess], SandboxError]:
    """Start `spec` (whose command is the agent) and wait for its HELLO. `mode`: FRAMED for
    an agent that speaks on its stdio through a launcher that relays them (an engine CLI
    attached to its container: the channel is then its stdout too)."""
    assert isinstance(runner, HelpedRunner)  # checked by `session_agent`
    host_end, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with inside:
        started = runner.start(spec, inside.fileno(), stdout=mode is StdioMode.FRAMED)
    if isinstance(started, Failure):
        host_end.close()
        return Failure(started.failure())
    process = AgentProcess(started.unwrap())
    channel = AgentChannel.over_socket(host_end, backend=backend, mode=mode)
    hello: Result[object, str] = Failure(f"the agent did not answer in {hello_timeout_s:g} s")
    try:
        with anyio.move_on_after(hello_timeout_s):
            hello = await channel.wait_hello()
    except BaseException:
        # Cancelled while the sandbox started: it goes now, not when the channel is
        # collected (the caller never gets it to close).
        channel.close()
        with anyio.CancelScope(shield=True):
            await process.end()
        raise
    if isinstance(hello, Failure):
        channel.close()
        await process.end()
        reason = f"the session's sandbox did not start: {process.said() or hello.failure()}"
        return Failure(BackendFailed(backend=backend, reason=reason))
    return Success((channel, process))


async def start_session_proxy(
    backend: str, egress: EgressProxy | None, network: NetworkPolicy, *, listen_tcp: bool = False
) -> Result[SessionProxy | None, SandboxError]:
    """The session's allowlist proxy, for its life (None: `egress` is None, the backend's
    `proxy_for` gave none: not allowlist, or best-effort with no network at all)."""
    if egress is None:
        return Success(None)
    from mechasandbox.network.session_proxy import SessionProxy

    try:
        return Success(await SessionProxy.start(egress, network, listen_tcp=listen_tcp))
    except OSError as error:
        return Failure(BackendFailed(backend=backend, reason=f"the allowlist proxy: {error}"))


async def prepared_session(
    backend: SpawningBackend[Any, Setting],
    request: RunRequest,
    policy: Policy,
    *,
    listen_tcp: bool = False,
) -> Result[tuple[Job, Setting, SessionProxy | None], SandboxError]:
    """What a host backend's session starts from, as a one-shot run of `request` (the
    agent as its command) would: the toolchains, `prepare_run` (probe, enforcement, the
    workspace, its git indirections), the run's setting, and the session's proxy in
    allowlist mode (the setting told where it listens). On a failure nothing is left open."""
    from mechasandbox.backends.execute import prepare_run
    from mechasandbox.backends.template import Job

    policy = backend.with_toolchains(request, policy, backend.host)
    prepared = prepare_run(backend, request, policy, backend.git)
    if isinstance(prepared, Failure):
        return Failure(prepared.failure())
    warnings, real, chosen, files = prepared.unwrap()
    opened = backend.open_setting(real, chosen)
    if isinstance(opened, Failure):
        return Failure(opened.failure())
    setting = opened.unwrap()
    egress = backend.proxy_for(chosen)
    proxied = await start_session_proxy(backend.name, egress, chosen.network, listen_tcp=listen_tcp)
    if isinstance(proxied, Failure):
        backend.close_setting(setting, real)
        return Failure(proxied.failure())
    proxy = proxied.unwrap()
    if proxy is not None:
        setting = backend.with_proxy(setting, proxy.running)
    job = Job(
        request=request,
        policy=chosen,
        host=backend.host,
        workspace=real,
        warnings=warnings,
        file_placeholders=files,
    )
    return Success((job, setting, proxy))


@attrs.define(eq=False)
class SessionCounters:
    """A session cgroup's event counters, read after every command through descriptors
    opened at the first read (`HeldEvents`); `close` before the cgroup goes."""

    _held: HeldEvents | None = None

    def read(self, manager: CgroupManager | None, cgroup: CgroupRun | None) -> CgroupEvents | None:
        """The counters now (None: no cgroup, or it cannot be read)."""
        if manager is None or cgroup is None:
            return None
        try:
            if self._held is None:
                self._held = HeldEvents(cgroup)
            return self._held.read()
        except OSError:
            return None

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None


async def with_proxy_closed_on_failure(
    proxy: SessionProxy | None, opening: Awaitable[Result[BackendSession, SandboxError]]
) -> Result[BackendSession, SandboxError]:
    """`opening`'s session, the proxy stopped if it did not open (or was cancelled)."""
    try:
        opened = await opening
    except BaseException:
        if proxy is not None:
            with anyio.CancelScope(shield=True):
                await proxy.aclose()
        raise
    if isinstance(opened, Failure) and proxy is not None:
        await proxy.aclose()
    return opened
