"""The `bubblewrap` backend: namespaces, bind mounts, a capability drop and a seccomp filter.

A run is `bwrap <argv compiled from the policy> -- <command>` spawned through the process
runner, so rlimits, the cgroup and whole-tree teardown work as for every other backend.

The pieces: `bwrap_layout` (what the compiler knows of the host), `bwrap_mounts` and
`bwrap_compiler` (the pure compiler: the mounts, then the argv; see there what a sandbox is
made of), `bwrap_hooks` (the seccomp program, the command's environment and the unix-socket
plan, handed to bwrap by the spawn helper), `bwrap_probe` (whether bwrap works here) and
this module (the backend: its capabilities, `compile`, the setting and the `launch` that
surround each run; `plan` and `run` come from `backends.template`).
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
from typing import TYPE_CHECKING, ClassVar

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import (
    LAUNCHER_ENVIRONMENT,
    HostContext,
    LaunchPlan,
    scrubbed_environment,
)
from mechasandbox.backends.capability_table import REFUSALS_NOTE, RLIMITS, RUNNER, CapabilityTable
from mechasandbox.backends.execute import disarm_after, run_started
from mechasandbox.backends.git_facts import GitFacts
from mechasandbox.backends.linux.bwrap_compiler import BwrapCommand, compile_bwrap
from mechasandbox.backends.linux.bwrap_hooks import (
    UnixSocketPlan,
    command_hooks,
    describe_scope,
    named_sockets_row,
    seccomp_summary,
    unix_socket_plan,
)
from mechasandbox.backends.linux.bwrap_layout import BwrapFeatures, HostLayout, PathKind
from mechasandbox.backends.linux.bwrap_mounts import (
    PRIVATE_TMP_DIRS,
    paths_to_survey,
    protected_parents,
    under,
)
from mechasandbox.backends.linux.bwrap_probe import probe_bwrap, remembered_probe
from mechasandbox.backends.linux.roots import SYSTEM_ROOTS
from mechasandbox.backends.lookup import View, resolve_command, with_sandbox_path
from mechasandbox.backends.probe_cache import ProbeCache
from mechasandbox.backends.resources import default_cgroups, resource_support, run_rlimits
from mechasandbox.backends.template import (
    Job,
    Launch,
    SpawningBackend,
    launcher_environment,
    limit_sections,
    spawn_spec,
)
from mechasandbox.backends.unix_sockets import find_named_sockets
from mechasandbox.backends.workspace.guards import GuardSet
from mechasandbox.backends.workspace.placeholders import WorkspacePlaceholders, file_placeholder
from mechasandbox.backends.workspace.workspace_locks import locked_too_long
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    SandboxError,
    SpawnFailed,
)
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.request import RunRequest, Terminal
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupManager
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
from mechasandbox.runner.spec import ProcessOutcome

if TYPE_CHECKING:
    from mechasandbox.backends.refusals import RefusalView
    from mechasandbox.backends.session_base import BackendSession, SessionSettings
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


def terminal_path(request: RunRequest) -> str | None:
    """The host path of the run's pty slave (see `Terminal`), bound in at that path."""
    if not isinstance(request.stdin, Terminal):
        return None
    try:
        return os.ttyname(request.stdin.fd)
    except OSError:
        return None


@functools.cache
def _setsid() -> str | None:
    """util-linux's setsid in a system directory (bound in every sandbox)."""
    return shutil.which("setsid", path="/usr/bin:/bin")


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


def _home_inside(host: HostContext, layout: HostLayout) -> str:
    """The command's HOME: the home directory's real path, where the sandbox has an empty
    tmpfs of its own (see `bwrap_mounts`: writable, gone with the run) with the toolchains
    the policy shows bound read-only at their places; the private /tmp when the host has
    no home directory."""
    home = os.path.normpath(host.home or "/")
    fact = layout.fact(home)
    real, kind = (
        (fact.real or home, fact.real_kind) if fact.kind is PathKind.SYMLINK else (home, fact.kind)
    )
    return real if kind is PathKind.DIRECTORY and real != "/" else "/tmp"


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


@attrs.frozen(kw_only=True)
class BwrapSetting:
    """What a run's compile gets besides the policy: bwrap's features, the run's proxy
    socket; for a plan where bwrap cannot run, why not (the defaults' argv is shown)."""

    features: BwrapFeatures
    proxy_socket: str = PROXY_SOCKET_PLACEHOLDER
    unavailable: str | None = None


BwrapCompiled = tuple[BwrapCommand, UnixSocketPlan]

_BWRAP = (
    RUNNER
    | RLIMITS
    | CapabilityTable(
        enforced={
            Protection.FILESYSTEM_WRITE: "mount namespace: only the workspace, writable paths "
            "and private tmpfs; kernel settings (/proc/sys...) read-only, kernel information "
            "masked",
            Protection.PROTECTED_PATHS: "read-only self-binds; parents pinned against rename; "
            "missing paths covered; a run whose cover a host process replaces is stopped "
            "(50 ms watch)",
            Protection.NETWORK_NONE: "network namespace with loopback only",
            Protection.PID_ISOLATION: "pid namespace; ptrace denied by seccomp",
            Protection.HOST_PROCESSES_HIDDEN: "pid namespace with a fresh /proc",
            Protection.ENVIRONMENT: "scrubbed environment, handed to the command only (bwrap "
            "starts with none)",
            Protection.TREE_TEARDOWN: "pid namespace (its init's death kills all), "
            "--die-with-parent, subreaper",
        },
        notes=(REFUSALS_NOTE,),
    )
)


def _allowlist_row(socat: str | None) -> CapabilityTable:
    if socat is None:
        why = (
            "needs socat in the system trees (Debian package socat) for the bridge to the "
            "proxy; best-effort runs with no network at all"
        )
        return CapabilityTable(gaps={Protection.NETWORK_ALLOWLIST: why})
    how = (
        "network namespace with loopback only; the run's proxy socket bound in and "
        f"{socat} forwarding 127.0.0.1:{PROXY_PORT} to it; no route, no DNS inside"
    )
    return CapabilityTable(enforced={Protection.NETWORK_ALLOWLIST: how})


@functools.lru_cache(maxsize=16)
def _capabilities(
    version: tuple[int, ...], socat: str | None, abi: int, cgroups: CgroupManager | str, uid: int
) -> Capabilities:
    """What bwrap `version` gives here; computed once per set of facts (every run probes)."""
    read = (
        f"bwrap {'.'.join(map(str, version))}: empty root, system trees read-only, home "
        "hidden, deny_read and /etc secrets masked"
    )
    table = (
        _BWRAP
        | CapabilityTable(enforced={Protection.FILESYSTEM_READ: read})
        | _allowlist_row(socat)
        | named_sockets_row(abi)
        | resource_support(cgroups, uid)
    )
    return table.capabilities(NAME)


# --- the backend ----------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class BubblewrapBackend(SpawningBackend[BwrapCompiled, BwrapSetting]):
    """Runs each command in a fresh bubblewrap sandbox. `bwrap`: the executable (default:
    found on the host's PATH)."""

    protects_workspace: ClassVar[bool] = True
    explains_refusals: ClassVar[bool] = True
    hides_home: ClassVar[bool] = True

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
    # What its searches for git indirections read, reused by the next runs (state; a
    # composition root passes one it shares).
    git: GitFacts = attrs.field(factory=GitFacts, eq=False, repr=False)

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
        return Success(
            _capabilities(
                features.version,
                self._socat(),
                features.landlock_abi,
                self.cgroups,
                self.host.uid,
            )
        )

    def proxy_bridge(self, policy: Policy, socket: str) -> ProxyBridge | None:
        """The forwarder to the proxy listening on `socket` in allowlist mode (None: not
        allowlist, or no socat here: best-effort runs with no network)."""
        socat = self._socat()
        if policy.network.mode is not NetworkMode.ALLOWLIST or socat is None:
            return None
        return ProxyBridge(socket=socket, socat=socat)

    def compile(
        self, job: Job, setting: BwrapSetting, *, agent: str | None = None
    ) -> Result[Launch[BwrapCompiled], SandboxError]:
        """`agent`: the host path of a session's agent, which the request's argv starts
        (see `bwrap_session`); the command's environment is then the sessions' commands'."""
        request, policy, host, workspace = job.request, job.policy, job.host, job.workspace
        layout = HostLayout.survey(
            paths_to_survey(workspace, policy, host),
            placeholders=self.placeholders.active(workspace),
            hollowness_of=protected_parents(workspace, policy, host),
        )
        bridge = self.proxy_bridge(policy, setting.proxy_socket)
        env = scrubbed_environment(policy.environment, dict(host.env))
        env.setdefault("HOME", _home_inside(host, layout))
        if bridge is not None:
            env.update(proxy_environment(PROXY_URL))
        sockets = find_named_sockets(policy, host, workspace)
        unix = unix_socket_plan(policy, sockets, setting.features.landlock_abi)
        compiled: Result[BwrapCommand, SandboxError] = compile_bwrap(
            request,
            policy,
            host,
            workspace=workspace,
            layout=layout,
            features=setting.features,
            bridge=bridge,
            environment=env,
            sockets=unix.sockets,
            file_placeholders=job.file_placeholders,
            terminal=terminal_path(request),
            setsid=_setsid() if isinstance(request.stdin, Terminal) else None,
            agent=agent,
        )
        rlimits = run_rlimits(policy.limits, self.cgroups)

        def launched(command: BwrapCommand) -> Launch[BwrapCompiled]:
            spec = spawn_spec(
                job,
                terminal_session=False,  # made inside (see `terminal_command`)
                argv=command.argv,
                env=LAUNCHER_ENVIRONMENT,
                executable=setting.features.path,
                rlimits=rlimits,
                hooks=(*unix.hooks, *command_hooks(command)),
            )
            return Launch(
                spec=spec,
                compiled=(command, unix),
                warnings=command.warnings,
                cgroups=self.cgroups,
                adjust=_signal_decoded,
            )

        def resolved(command: BwrapCommand) -> Result[Launch[BwrapCompiled], SandboxError]:
            # Looked up, and PATH handed on, as the sandbox's mounts show the host.
            view = View(visible=command.visible, host=host, deny_read=policy.filesystem.deny_read)
            shown = with_sandbox_path(env, view)
            found: Result[str, SandboxError] = (
                resolve_command(request.argv[0], env, workspace, view)
                if agent is None
                else Success(agent)  # each command is looked up inside, by the agent
            )
            return found.map(
                lambda _path: launched(
                    attrs.evolve(command, environment=tuple(sorted(shown.items())))
                )
            )

        return compiled.bind(resolved)

    def plan_setting(self, policy: Policy) -> BwrapSetting:
        found = self._features()
        if isinstance(found, str):
            return BwrapSetting(features=BwrapFeatures(), unavailable=found)
        return BwrapSetting(features=found)

    def describe(
        self, job: Job, launch: Launch[BwrapCompiled], setting: BwrapSetting
    ) -> LaunchPlan:
        command, unix = launch.compiled
        unavailable = () if setting.unavailable is None else (setting.unavailable,)
        return LaunchPlan(
            backend=NAME,
            sections=(
                ("bwrap", shlex.join(command.argv)),
                ("environment", command.describe_environment()),
                ("bwrap's own environment", launcher_environment(launch.spec)),
                ("seccomp (fd 3)", seccomp_summary(unix.allowed)),
                ("landlock", describe_scope(unix)),
                ("placeholders", _placeholders(command.placeholders)),
                *limit_sections(launch.spec, launch.cgroups),
            ),
            warnings=tuple(f"bubblewrap is unavailable here: {why}" for why in unavailable)
            + launch.warnings,
        )

    def open_setting(self, workspace: str, policy: Policy) -> Result[BwrapSetting, SandboxError]:
        features = self._features()
        if isinstance(features, str):  # probed fine a moment ago; cached, so not reached
            return Failure(BackendUnavailable(backend=NAME, reason=features))
        if not self.placeholders.enter(workspace):
            return Failure(BackendFailed(backend=NAME, reason=locked_too_long("run")))
        return Success(BwrapSetting(features=features))

    def close_setting(self, setting: BwrapSetting, workspace: str) -> None:
        self.placeholders.leave(workspace)

    async def open_session(
        self, workspace: str, policy: Policy, settings: SessionSettings
    ) -> Result[BackendSession, SandboxError]:
        """One bwrap sandbox for many commands (see `bwrap_session`)."""
        from mechasandbox.backends.linux.bwrap_session import open_bwrap_session

        return await open_bwrap_session(self, workspace, policy, settings)

    def refusal_view(self, job: Job, setting: BwrapSetting) -> RefusalView:
        from mechasandbox.backends.refusals import refusal_view

        return refusal_view(
            NAME,
            job.policy,
            job.host,
            job.workspace,
            system=SYSTEM_ROOTS,
            scratch=(*PRIVATE_TMP_DIRS, job.host.home),
            cover="an empty read-only directory",
        )

    def proxy_for(self, policy: Policy) -> EgressProxy | None:
        if self.proxy_bridge(policy, PROXY_SOCKET_PLACEHOLDER) is None:
            return None  # no bridge: best-effort allowlist runs with no network
        from mechasandbox.network.session import EgressProxy

        return self.egress or EgressProxy()

    def with_proxy(self, setting: BwrapSetting, proxy: RunningProxy) -> BwrapSetting:
        return attrs.evolve(setting, proxy_socket=str(proxy.socket_path))

    async def launch(
        self, job: Job, launch: Launch[BwrapCompiled], setting: BwrapSetting
    ) -> Result[RunResult, SandboxError]:
        """The placeholders made and the guards watching while the command runs; the
        placeholders come out when the setting closes, after the guards' last look (taking
        them out changes their entries)."""
        command, _unix = launch.compiled
        self.placeholders.created(job.workspace, command.placeholders, job.file_placeholders)
        self.placeholders.make(job.workspace, command.placeholders)
        guards = GuardSet(command.guards + tuple((p, "write") for p in command.placeholders))
        watched = attrs.evolve(launch, spec=attrs.evolve(launch.spec, watch=guards.watcher()))
        started = run_started()
        try:
            result = await super().launch(job, watched, setting)
            lost = guards.lost()
            late = guards.warnings(lost)  # lost since the watcher's last look
        finally:
            guards.close()
        if lost and self.protects_workspace:
            # Their covers came off during the run, before the watcher stopped it: what
            # the command made below them is looked at as if nothing protected it.
            exposed = [path for path, _ in lost]
            result = disarm_after(
                result, job.workspace, job.policy, started, self.git, exposed=exposed
            )
        return result.bind(lambda finished: _checked(finished, job.request.argv[0], late))


def _placeholders(paths: tuple[str, ...]) -> str:
    """The covers of missing protected paths, as the command sees them."""
    if not paths:
        return "none"
    shown = [
        f"{path} (empty read-only directory)"
        if (content := file_placeholder(path)) is None
        else f"{path} (read-only file holding {content!r})"
        for path in paths
    ]
    seen = (
        "missing protected paths cannot be created: each is covered for the run, and the "
        "command sees the cover (`ls -a` lists it; `cat .env` says 'Is a directory'). A "
        "mount needs an entry to cover, and bwrap has no way to keep a name absent"
    )
    return "\n".join((seen, *shown))


def _checked(
    result: RunResult, command: str, late: tuple[str, ...]
) -> Result[RunResult, SandboxError]:
    """A run bwrap (or the bridge) could not set up is its failure; the guards' late
    warnings on the others."""
    failed = _setup_failure(result, command)
    if failed is not None:
        return Failure(failed)
    return Success(attrs.evolve(result, warnings=result.warnings + late) if late else result)
