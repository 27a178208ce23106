"""What the probe learns about an engine, and the capabilities a backend claims from it.

The probe itself (`OciBackend._probe_engine`) asks the engine CLI for its info (each
engine parses its own JSON), checks the runtime and the image, and runs the image once to
see what it has (`forwarders`); this module holds what it finds and what follows from it.
"""

from __future__ import annotations

import attrs
from returns.result import Result

from mechasandbox.backends.base import Backend, HostContext, LaunchPlan
from mechasandbox.backends.oci.compiler import EngineTraits, Runtime
from mechasandbox.backends.oci.env_file import ENV_FILE_FD
from mechasandbox.backends.oci.forwarders import allowlist_detail
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult

PROBE_TTL_S = 30.0


@attrs.frozen(kw_only=True)
class EngineInfo:
    """What the probe learnt about the engine."""

    version: str
    runtimes: frozenset[str]
    traits: EngineTraits
    memory: bool = True
    pids: bool = True
    runsc_problem: str | None = None  # why runsc cannot be used, when it is registered
    warnings: tuple[str, ...] = ()  # protections weaker here
    notes: tuple[str, ...] = ()  # information, no gap
    socat: str | None = None  # the image's allowlist forwarder, when the bridge can work
    no_bridge: str = "not probed"  # why there is no allowlist bridge, when `socat` is None
    shell: bool = False  # the image has /bin/sh: its containers can be tied (see `lifeline`)


# What a successful probe gives: the capabilities, the engine's info, the CLI's path.
Probed = tuple[Capabilities, EngineInfo, str]


@attrs.define
class ProbeCache:
    """A backend's last probe, reused for `probe_ttl_s`."""

    at: float = 0.0
    value: Result[Probed, BackendUnavailable] | None = None


def runtime_problem(runtime: Runtime, info: EngineInfo) -> str | None:
    """Why the engine cannot run containers under `runtime` (None: it can)."""
    if runtime is Runtime.RUNSC:
        if "runsc" not in info.runtimes:
            return "gVisor runtime 'runsc' is not registered"
        return info.runsc_problem
    if runtime is not Runtime.DEFAULT and runtime.value not in info.runtimes:
        return f"runtime {runtime.value!r} is not registered"
    return None


_FILESYSTEM_DETAILS = (
    (
        Protection.FILESYSTEM_READ,
        "only the image, the workspace, the policy's readable and writable paths and "
        "a private /tmp are mounted; deny_read paths they show are masked, a home "
        "directory they contain is hidden",
    ),
    (
        Protection.FILESYSTEM_WRITE,
        "read-only root; writable: workspace, the policy's writable paths, a sized "
        "tmpfs /tmp; no setuid/setgid file can be made (seccomp profile)",
    ),
    (
        Protection.PROTECTED_PATHS,
        "read-only self-binds; parents pinned against rename (EBUSY); missing ones "
        "covered by a read-only empty directory (created on the host for the run); "
        "a run whose cover a host process replaces is stopped (50 ms watch)",
    ),
    (Protection.NETWORK_NONE, "--network none: loopback only"),
    (
        Protection.NAMED_UNIX_SOCKETS,
        "own network namespace; no host socket mounted but the named ones, bound "
        "read-only at their real path",
    ),
)
_RUNTIMES = {
    Runtime.DEFAULT: "the engine's default runtime",
    Runtime.RUNC: "runc",
    Runtime.RUNSC: "gVisor (runsc): a user-space kernel between the command and the host",
}
_ALWAYS = frozenset(
    {
        Protection.FILESYSTEM_READ,
        Protection.FILESYSTEM_WRITE,
        Protection.PROTECTED_PATHS,
        Protection.NETWORK_NONE,
        Protection.NAMED_UNIX_SOCKETS,
        Protection.PID_ISOLATION,
        Protection.HOST_PROCESSES_HIDDEN,
        Protection.ENVIRONMENT,
        Protection.TIMEOUT,
        Protection.CPU,
        Protection.OPEN_FILES,
        Protection.FILE_SIZE,
    }
)


def capabilities(
    info: EngineInfo, *, backend: str, kind: str, image: str, runtime: Runtime
) -> Capabilities:
    """What a container run enforces on this engine, with the image `info` describes."""
    enforced = set(_ALWAYS)
    details = [
        *_FILESYSTEM_DETAILS,
        allowlist_detail(info.socat, info.no_bridge),
        (Protection.PID_ISOLATION, f"own PID namespace; runtime: {_RUNTIMES[runtime]}"),
        (Protection.HOST_PROCESSES_HIDDEN, "own PID namespace"),
        (
            Protection.ENVIRONMENT,
            f"only the scrubbed environment, in an env file on descriptor {ENV_FILE_FD} "
            "(never on the CLI's command line)",
        ),
        _teardown_detail(info, image),
        (Protection.CPU, "--ulimit cpu (RLIMIT_CPU per process)"),
        (Protection.OPEN_FILES, "--ulimit nofile"),
        (Protection.FILE_SIZE, "--ulimit fsize"),
    ]
    if info.socat is not None:
        enforced.add(Protection.NETWORK_ALLOWLIST)
    if info.shell:
        enforced.add(Protection.TREE_TEARDOWN)
    if info.memory:
        enforced.add(Protection.MEMORY)
        details.append((Protection.MEMORY, "--memory with --memory-swap equal (cgroup)"))
    else:
        details.append((Protection.MEMORY, "the engine reports no memory cgroup support"))
    if info.pids:
        enforced.add(Protection.PROCESSES)
        details.append((Protection.PROCESSES, "--pids-limit (pids cgroup; forks beyond it fail)"))
    else:
        details.append((Protection.PROCESSES, "the engine reports no pids cgroup support"))
    return Capabilities(
        backend=backend,
        enforced=frozenset(enforced),
        details=tuple(details),
        warnings=info.warnings,
        notes=(*info.notes, f"{kind} {info.version}, image {image}"),
    )


def _teardown_detail(info: EngineInfo, image: str) -> tuple[Protection, str]:
    removed = "the container is force-removed on timeout, cancel, exit"
    if not info.shell:
        return (
            Protection.TREE_TEARDOWN,
            f"{removed}; but image {image!r} has no /bin/sh for the watcher that "
            "ties the container to this process: if this process is killed, the command "
            "runs on until the next run's sweep removes it",
        )
    return (
        Protection.TREE_TEARDOWN,
        f"{removed}; tied to this process: its stdin is a pipe only this process holds, "
        "and a watcher in the container kills everything when it closes (a killed "
        "caller leaves nothing running; the next run removes the stopped container); "
        "the deadline is enforced inside too",
    )


@attrs.frozen(kw_only=True)
class ProbedOnce:
    """`backend` with the probe its run made: a run probes once, within its deadline (with
    a short `probe_ttl_s` a second probe came without one, and could find the engine gone
    after the first found it)."""

    backend: Backend
    found: Result[Capabilities, BackendUnavailable]

    @property
    def name(self) -> str:
        return self.backend.name

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return self.found

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        return self.backend.plan(request, policy, host)

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        return await self.backend.run(request, policy)
