"""The `bubblewrap` backend: namespaces, bind mounts, a capability drop and a seccomp filter.

A run is `bwrap <argv compiled from the policy> -- <command>` spawned through the process
runner, so rlimits, the cgroup and whole-tree teardown work as for every other backend.

The pieces: `bwrap_layout` (what the compiler knows of the host), `bwrap_mounts` and
`bwrap_compiler` (the pure compiler: the mounts, then the argv; see there what a sandbox is
made of), `bwrap_hooks` (the seccomp program, the command's environment and the unix-socket
plan, handed to bwrap by the spawn helper), `bwrap_probe` (whether bwrap works here) and
this module (the backend: plan and run).
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import (
    LAUNCHER_ENVIRONMENT,
    HostContext,
    LaunchPlan,
    check_workspace,
    resolve_command,
    scrubbed_environment,
)
from mechasandbox.backends.execute import (
    disarm_after,
    execute_spec,
    prepare_run,
    run_started,
)
from mechasandbox.backends.git_indirections import planned_policy
from mechasandbox.backends.linux.bwrap_compiler import BwrapCommand, compile_bwrap
from mechasandbox.backends.linux.bwrap_hooks import (
    LANDLOCK_SCOPE_ABI,
    command_hooks,
    describe_scope,
    landlock_abi,
    named_sockets_detail,
    seccomp_summary,
    unix_socket_plan,
)
from mechasandbox.backends.linux.bwrap_layout import BwrapFeatures, HostLayout
from mechasandbox.backends.linux.bwrap_mounts import paths_to_survey, protected_parents, under
from mechasandbox.backends.linux.bwrap_probe import probe_bwrap, remembered_probe
from mechasandbox.backends.linux.roots import SYSTEM_ROOTS
from mechasandbox.backends.probe_cache import ProbeCache
from mechasandbox.backends.resources import (
    UMASK,
    default_cgroups,
    describe_cgroups,
    resource_support,
    run_rlimits,
)
from mechasandbox.backends.unix_sockets import NO_NAMED_SOCKETS, find_named_sockets
from mechasandbox.backends.workspace.guards import GuardSet
from mechasandbox.backends.workspace.placeholders import WorkspacePlaceholders
from mechasandbox.backends.workspace.workspace_locks import locked_too_long
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    SandboxError,
    SpawnFailed,
)
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.limits.rlimits import describe
from mechasandbox.network.bridge import (
    BRIDGE_FAILED,
    BRIDGE_PREFIX,
    PROXY_PORT,
    PROXY_SOCKET_PLACEHOLDER,
    PROXY_URL,
    ProxyBridge,
)
from mechasandbox.network.environment import proxy_environment
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

if TYPE_CHECKING:
    from mechasandbox.network.proxy import RunningProxy
    from mechasandbox.network.session import EgressProxy

NAME = "bubblewrap"

# The allowlist bridge (mechasandbox.network.bridge): the run's proxy socket bound in at
# PROXY_SOCKET, socat on the sandbox's own loopback (its network namespace has nothing else).
_FORWARDER_SEARCH = "/usr/local/bin:/usr/bin:/bin"


def _signal_decoded(outcome: ProcessOutcome) -> ProcessOutcome:
    """bwrap's pid-1 reports a command killed by signal N as exit status 128+N (as a shell
    does); turn it back into the signal so that limit classification sees SIGXCPU, SIGKILL."""
    code = outcome.exit_code
    if outcome.signal is None and code is not None and 128 < code <= 128 + signal.NSIG - 1:
        return attrs.evolve(outcome, exit_code=None, signal=code - 128)
    return outcome


_BWRAP_PREFIX = b"bwrap: "


def _describe_launcher_environment(env: Iterable[tuple[str, str]]) -> str:
    return " ".join(f"{name}={value}" for name, value in env) or "none"


def _setup_failure(result: RunResult, command: str) -> SandboxError | None:
    """bwrap's own failures (a mount it could not make, an exec that failed inside) end with
    status 1 and a `bwrap: ` message before the command ever ran; the bridge's, with 125
    and its own prefix."""
    if result.exit_code == BRIDGE_FAILED and result.stderr.startswith(BRIDGE_PREFIX):
        message = result.stderr.decode(errors="replace").strip()
        return BackendFailed(backend=NAME, reason=message)
    if result.exit_code != 1 or not result.stderr.startswith(_BWRAP_PREFIX):
        return None
    message = result.stderr.decode(errors="replace").strip()
    if message.startswith("bwrap: execvp"):
        status = 127 if "No such file" in message else 126
        return SpawnFailed(command=command, reason=message, exit_status=status)
    return BackendFailed(backend=NAME, reason=message)


@functools.cache
def _found(name: str, path: str) -> str:
    """`shutil.which`, remembered once found (each run probes): a program removed later
    makes its run fail, it is never replaced by anything else. A miss raises, and
    `functools.cache` remembers no exception, so a program installed later is found. A
    cache of facts about the host, pure in effect (nothing held, nothing to close), so
    process-wide rather than a backend's state."""
    found = shutil.which(name, path=path)
    if found is None:
        raise LookupError(name)
    return found


def _which(name: str, path: str) -> str | None:
    try:
        return _found(name, path)
    except LookupError:
        return None


# --- the backend ----------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class BubblewrapBackend:
    """Runs each command in a fresh bubblewrap sandbox. `bwrap`: the executable (default:
    found on the host's PATH)."""

    runner: ProcessRunner
    cgroups: CgroupManager | str = attrs.field(factory=default_cgroups)
    host: HostContext = attrs.field(factory=HostContext.current)
    bwrap: str | None = None
    # The allowlist proxy's settings (None: the defaults, made when a run first needs them).
    egress: EgressProxy | None = None
    socat: str | None = None  # the allowlist forwarder (default: found in the system roots)
    # Where a successful probe is remembered across processes (the CLI's per-user cache);
    # None: probe once per process.
    probe_cache: ProbeCache | None = None
    # The placeholders of this process's runs, by workspace (state: its `close` releases
    # the journal, the stash and the workspace lock files). A backend built directly has
    # its own; a composition root passes one it closes at shutdown.
    placeholders: WorkspacePlaceholders = attrs.field(
        factory=WorkspacePlaceholders, eq=False, repr=False
    )

    @property
    def name(self) -> str:
        return NAME

    def _socat(self) -> str | None:
        """socat's real path, if it is inside the read-only system trees the sandbox sees."""
        found = self.socat or _which("socat", _FORWARDER_SEARCH)
        if found is None:
            return None
        real = os.path.realpath(found)
        return real if any(under(real, root) for root in SYSTEM_ROOTS) else None

    def _executable(self) -> str | None:
        if self.bwrap is not None:
            return self.bwrap
        path = dict(self.host.env).get("PATH") or "/usr/local/bin:/usr/bin:/bin"
        return _which("bwrap", path)

    def _features(self) -> BwrapFeatures | str:
        if not self.host.platform.startswith("linux"):
            return "bubblewrap needs Linux namespaces"
        executable = self._executable()
        if executable is None:
            return "bwrap not found on PATH (install the bubblewrap package)"
        if self.probe_cache is not None:
            return remembered_probe(executable, self.probe_cache)
        return probe_bwrap(executable)

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        features = self._features()
        if isinstance(features, str):
            return Failure(BackendUnavailable(backend=NAME, reason=features))
        version = ".".join(map(str, features.version))
        enforced = {
            Protection.FILESYSTEM_READ,
            Protection.FILESYSTEM_WRITE,
            Protection.PROTECTED_PATHS,
            Protection.NETWORK_NONE,
            Protection.PID_ISOLATION,
            Protection.HOST_PROCESSES_HIDDEN,
            Protection.ENVIRONMENT,
            Protection.TIMEOUT,
            Protection.TREE_TEARDOWN,
            Protection.CPU,
            Protection.OPEN_FILES,
            Protection.FILE_SIZE,
        }
        details = [
            (
                Protection.FILESYSTEM_READ,
                f"bwrap {version}: empty root, system trees read-only, home hidden, "
                "deny_read and /etc secrets masked",
            ),
            (
                Protection.FILESYSTEM_WRITE,
                "mount namespace: only the workspace, writable paths and private tmpfs; "
                "kernel settings (/proc/sys...) read-only, kernel information masked",
            ),
            (
                Protection.PROTECTED_PATHS,
                "read-only self-binds; parents pinned against rename; missing paths covered; "
                "a run whose cover a host process replaces is stopped (50 ms watch)",
            ),
            (Protection.NETWORK_NONE, "network namespace with loopback only"),
            self._allowlist_detail(),
            (Protection.PID_ISOLATION, "pid namespace; ptrace denied by seccomp"),
            (Protection.HOST_PROCESSES_HIDDEN, "pid namespace with a fresh /proc"),
            (
                Protection.ENVIRONMENT,
                "scrubbed environment, handed to the command only (bwrap starts with none)",
            ),
            (
                Protection.TREE_TEARDOWN,
                "pid namespace (its init's death kills all), --die-with-parent, subreaper",
            ),
            (Protection.CPU, "RLIMIT_CPU"),
            (Protection.OPEN_FILES, "RLIMIT_NOFILE"),
            (Protection.FILE_SIZE, "RLIMIT_FSIZE"),
        ]
        if self._socat() is not None:
            enforced.add(Protection.NETWORK_ALLOWLIST)
        abi = landlock_abi()
        if abi >= LANDLOCK_SCOPE_ABI:
            enforced.add(Protection.NAMED_UNIX_SOCKETS)
        details.append(named_sockets_detail(abi))
        warnings: list[str] = []
        resources = resource_support(self.cgroups, self.host.uid)
        enforced |= resources.enforced
        details += resources.details
        warnings += resources.warnings
        return Success(
            Capabilities(
                backend=NAME,
                enforced=frozenset(enforced),
                details=tuple(details),
                warnings=tuple(warnings),
            )
        )

    def _allowlist_detail(self) -> tuple[Protection, str]:
        socat = self._socat()
        if socat is None:
            return (
                Protection.NETWORK_ALLOWLIST,
                "needs socat in the system trees (Debian package socat) for the bridge to "
                "the proxy; best-effort runs with no network at all",
            )
        return (
            Protection.NETWORK_ALLOWLIST,
            "network namespace with loopback only; the run's proxy socket bound in and "
            f"{socat} forwarding 127.0.0.1:{PROXY_PORT} to it; no route, no DNS inside",
        )

    def _bridge(self, policy: Policy, socket: str) -> ProxyBridge | None:
        socat = self._socat()
        if policy.network.mode is not NetworkMode.ALLOWLIST or socat is None:
            return None
        return ProxyBridge(socket=socket, socat=socat)

    def _compile(
        self,
        request: RunRequest,
        policy: Policy,
        host: HostContext,
        workspace: str,
        features: BwrapFeatures,
        proxy_socket: str = PROXY_SOCKET_PLACEHOLDER,
    ) -> Result[tuple[BwrapCommand, SpawnSpec], SandboxError]:
        layout = HostLayout.survey(
            paths_to_survey(workspace, policy, host),
            placeholders=self.placeholders.active(workspace),
            hollowness_of=protected_parents(workspace, policy, host),
        )
        bridge = self._bridge(policy, proxy_socket)
        env = scrubbed_environment(policy.environment, dict(host.env))
        if bridge is not None:
            env.update(proxy_environment(PROXY_URL))
        unix = unix_socket_plan(policy, find_named_sockets(policy, host, workspace), landlock_abi())
        compiled: Result[BwrapCommand, SandboxError] = compile_bwrap(
            request,
            policy,
            host,
            workspace=workspace,
            layout=layout,
            features=features,
            bridge=bridge,
            environment=env,
            sockets=unix.sockets,
        )
        rlimits = run_rlimits(policy.limits, self.cgroups)

        def resolved(command: BwrapCommand) -> Result[tuple[BwrapCommand, SpawnSpec], SandboxError]:
            found = resolve_command(request.argv[0], env, workspace)
            if isinstance(found, Failure):
                return Failure(found.failure())
            executable = os.path.realpath(found.unwrap())
            if not command.visible(executable):
                return Failure(
                    SpawnFailed(
                        command=request.argv[0],
                        reason=f"{executable} is not visible inside the sandbox",
                        exit_status=127,
                    )
                )
            spec = SpawnSpec(
                argv=command.argv,
                env=LAUNCHER_ENVIRONMENT,
                cwd=workspace,
                stdin=request.stdin,
                timeout_s=policy.limits.timeout_s,
                max_output_bytes=policy.limits.max_output_bytes,
                umask=UMASK,
                rlimits=rlimits,
                hooks=(*unix.hooks, *command_hooks(command)),
                executable=features.path,
            )
            return Success((command, spec))

        return compiled.bind(resolved)

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        found = self._features()
        features = found if isinstance(found, BwrapFeatures) else BwrapFeatures()
        unavailable = (
            (f"bubblewrap is unavailable here: {found}",) if isinstance(found, str) else ()
        )
        unix = unix_socket_plan(policy, NO_NAMED_SOCKETS, landlock_abi())

        def render(compiled: tuple[BwrapCommand, SpawnSpec]) -> LaunchPlan:
            command, spec = compiled
            cgroup = describe_cgroups(self.cgroups)
            return LaunchPlan(
                backend=NAME,
                sections=(
                    ("bwrap", shlex.join(command.argv)),
                    ("environment", command.describe_environment()),
                    ("bwrap's own environment", _describe_launcher_environment(spec.env)),
                    ("seccomp (fd 3)", seccomp_summary(unix.allowed)),
                    ("landlock", describe_scope(unix)),
                    ("placeholders", "\n".join(command.placeholders) or "none"),
                    ("umask", f"{spec.umask:04o}"),
                    ("rlimits", describe(spec.rlimits)),
                    ("cgroup", cgroup),
                ),
                warnings=unavailable + command.warnings,
            )

        workspace: Result[str, SandboxError] = check_workspace(request)
        return workspace.bind(
            lambda path: self._compile(
                request, planned_policy(policy, path, host), host, path, features
            )
        ).map(render)

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        prepared = prepare_run(self, request, policy)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        warnings, workspace, policy = prepared.unwrap()
        features = self._features()
        if isinstance(features, str):  # probed fine a moment ago; cached, so not reached
            return Failure(BackendUnavailable(backend=NAME, reason=features))

        async def body(proxy: RunningProxy | None) -> Result[RunResult, SandboxError]:
            socket = str(proxy.socket_path) if proxy is not None else PROXY_SOCKET_PLACEHOLDER
            if not self.placeholders.enter(workspace):
                return Failure(BackendFailed(backend=NAME, reason=locked_too_long("run")))
            try:
                compiled = self._compile(request, policy, self.host, workspace, features, socket)
                if isinstance(compiled, Failure):
                    return Failure(compiled.failure())
                command, spec = compiled.unwrap()
                self.placeholders.created(workspace, command.placeholders)
                self.placeholders.make(workspace, command.placeholders)
                guards = GuardSet(
                    command.guards + tuple((p, "write") for p in command.placeholders)
                )
                try:
                    result = await execute_spec(
                        NAME,
                        self.runner,
                        attrs.evolve(spec, watch=guards.watcher()),
                        policy,
                        warnings=warnings + command.warnings,
                        cgroups=self.cgroups,
                        adjust=_signal_decoded,
                    )
                    late = guards.warnings()  # lost since the watcher's last look
                finally:
                    guards.close()
            finally:
                # After the guards' last look: taking the placeholders out changes their entries.
                self.placeholders.leave(workspace)
            if isinstance(result, Success):
                failed = _setup_failure(result.unwrap(), request.argv[0])
                if failed is not None:
                    return Failure(failed)
                if late:
                    value = result.unwrap()
                    return Success(attrs.evolve(value, warnings=value.warnings + late))
            return result

        started = run_started()
        if self._bridge(policy, PROXY_SOCKET_PLACEHOLDER) is None:
            # no bridge: best-effort allowlist runs with no network
            return disarm_after(await body(None), workspace, policy, started)
        # The proxy (and with it asyncio) is imported only by runs that need it.
        from mechasandbox.network.session import EgressProxy, run_with_proxy

        proxied = await run_with_proxy(self.egress or EgressProxy(), policy.network, body)
        return disarm_after(proxied, workspace, policy, started)
