"""The `seatbelt` backend: `/usr/bin/sandbox-exec` with a profile compiled from the policy.

What it enforces: reads and writes confined to the system trees, the workspace, a private
per-run TMPDIR and the policy's extra paths; secrets (`deny_read`) unreadable; protected
"runs later" paths unwritable and their parents not renameable; no network, or only the
allowlist proxy's loopback port; signals only to processes of the same sandbox; rlimits
applied by the spawn helper (`setrlimit` in the child, inherited through `sandbox-exec`).

What it does not: host processes stay visible (`ps`); teardown walks the process table
(no subreaper, no cgroup on macOS), so a child that calls `setsid` and is orphaned to
launchd before the run ends is no longer known to be the run's and escapes; memory is not
limited (no RLIMIT_AS on macOS, see `seatbelt_rlimits`); RLIMIT_NPROC counts every process
of the user, so the limit is set to the user's current count plus the policy's allowance.

The environment: `sandbox-exec` runs on the host before the profile applies, so it starts
with none of the command's (`LAUNCHER_ENVIRONMENT`: empty), whose variables a project layer
writes and dyld would act on. Inside the sandbox, `/usr/bin/env -i -- NAME=VALUE... argv`
gives the command exactly its own. Those values are on the argv of `sandbox-exec` and of
`env` (each execs the next, so until the command starts): on macOS a process's arguments,
like its environment, can be read only by its own user and root (KERN_PROCARGS2, which `ps`
uses, is refused for another user's process), so this exposes nothing an environment does
not. (System Integrity Protection strips DYLD_* from the environment of the protected
`/usr/bin/sandbox-exec` anyway; set by `env`, a policy's DYLD_* now reaches the command.)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import posixpath
import resource
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from typing import ClassVar

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import (
    LAUNCHER_ENVIRONMENT,
    HostContext,
    LaunchPlan,
    scrubbed_environment,
    unsafe_variable,
)
from mechasandbox.backends.capability_table import RLIMITS, RUNNER, CapabilityTable
from mechasandbox.backends.git_facts import GitFacts
from mechasandbox.backends.lookup import (
    View,
    Visible,
    resolve_command,
    tree_view,
    with_sandbox_path,
)
from mechasandbox.backends.macos import platform, violations
from mechasandbox.backends.macos.sbpl import SbplProfile, compile_profile
from mechasandbox.backends.template import (
    Job,
    Launch,
    SpawningBackend,
    launcher_environment,
    limit_sections,
    loopback_proxy,
    spawn_spec,
)
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    ConfigInvalid,
    SandboxError,
    SpawnFailed,
)
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.rlimits import rlimits_for
from mechasandbox.network.environment import proxy_environment
from mechasandbox.network.proxy import RunningProxy
from mechasandbox.network.session import EgressProxy
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import RlimitSetting

# Only the system's copy: a `sandbox-exec` earlier on PATH could be anything.
SANDBOX_EXEC = "/usr/bin/sandbox-exec"
# What hands the command its environment inside the sandbox (the system's copy, as above).
ENV = "/usr/bin/env"
TMP_PREFIX = "mechasandbox-"
DEPRECATION_NOTE = (
    "sandbox-exec is deprecated by Apple (still shipped and used by browsers and coding "
    "agents); its profile language is undocumented"
)
# `plan` runs no proxy: its port and token are placeholders.
PLAN_PROXY_PORT = 3128
PLAN_PROXY_URL = "http://sandbox:<per-run token>@127.0.0.1:<per-run port>"
MEMORY_NOTE = (
    "memory is not limited by seatbelt: macOS has no per-process memory limit that "
    "sandbox-exec could apply (RLIMIT_AS breaks or refuses the run); use apple-container "
    "for a memory bound"
)
# Caches the command's tools would otherwise write outside what it may write (clang's and
# Swift's module caches go to the per-user cache directory, whatever HOME says) or share
# with the host's builds: in the run's private TMPDIR, gone with it.
CACHE_VARIABLES: tuple[tuple[str, str], ...] = (
    ("CLANG_MODULE_CACHE_PATH", "clang-modules"),
    ("GOCACHE", "go-build"),
    ("npm_config_cache", "npm"),
    ("PIP_CACHE_DIR", "pip"),
)
VIOLATIONS_NOTE = (
    "violations are read from the unified log (`log stream`): best-effort, needs a user "
    "allowed to stream the log, and adds up to "
    f"{violations.READY_S + violations.DRAIN_S:g}s per run"
)
TAG_PREFIX = "mechasandbox-"
PLAN_TAG = TAG_PREFIX + "RUNID"

# <sys/sysctl.h>: CTL_KERN, KERN_PROC, KERN_PROC_UID; sizeof(struct kinfo_proc) on 64-bit.
_CTL_KERN, _KERN_PROC, _KERN_PROC_UID = 1, 14, 5
_KINFO_PROC_SIZE = 648
_IS_DARWIN = sys.platform == "darwin"


def darwin_user_process_count(uid: int) -> int | None:
    """How many processes `uid` owns now, from `sysctl kern.proc.uid` (macOS only).

    The size query over-estimates a little, which only adds headroom. None elsewhere.
    """
    if not _IS_DARWIN:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        mib = (ctypes.c_int * 4)(_CTL_KERN, _KERN_PROC, _KERN_PROC_UID, uid)
        size = ctypes.c_size_t(0)
        if libc.sysctl(mib, 4, None, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return int(size.value) // _KINFO_PROC_SIZE


def _nproc_hard_limit() -> int | None:
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    except (OSError, ValueError):
        return None
    return None if hard == resource.RLIM_INFINITY else int(hard)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _sandbox_exec_present() -> bool:
    return os.access(SANDBOX_EXEC, os.X_OK)


def _default_tmp_root() -> str:
    return os.path.realpath(tempfile.gettempdir())


def command_argv(
    environment: tuple[tuple[str, str], ...], argv: tuple[str, ...]
) -> tuple[str, ...]:
    """What `sandbox-exec` runs: `env` starting the command with exactly `environment`.
    (`env` takes every leading argument with a `=` for a variable: a command whose name has
    one is refused before this, see `_environment_problem`.)"""
    return (ENV, "-i", "--", *(f"{name}={value}" for name, value in environment), *argv)


def _environment_problem(
    environment: tuple[tuple[str, str], ...], argv: tuple[str, ...]
) -> SandboxError | None:
    unsafe = unsafe_variable(environment)
    if unsafe is not None:
        return ConfigInvalid(problem=unsafe, field="environment")
    if "=" in argv[0]:
        reason = "a command name with '=' would be taken for a variable by env(1)"
        return SpawnFailed(command=argv[0], reason=reason, exit_status=127)
    return None


def seatbelt_rlimits(
    policy: Policy,
    *,
    uid: int,
    user_processes: int | None,
    nproc_hard: int | None,
) -> tuple[RlimitSetting, ...]:
    """The policy's rlimits, with RLIMIT_NPROC shifted by the user's current process count
    and no RLIMIT_AS.

    RLIMIT_NPROC is checked against every process of the user, and a Mac user typically
    runs several hundred: a bare `max_processes=512` would leave the command no fork at
    all. The allowance is added on top of what runs now, capped by the hard limit we have.

    RLIMIT_AS is never set on macOS: XNU's `setrlimit` fails with EINVAL when the limit is
    below the size the process's map already has (a forked Python maps several GB, more
    on Apple silicon), and where it is accepted it breaks the large reservations of V8,
    WebAssembly and the JVM. Memory is reported as not enforced instead (`MEMORY_NOTE`).
    """
    settings = rlimits_for(policy.limits, memory_by_rlimit=False)
    max_processes = policy.limits.max_processes
    if max_processes is None:
        return settings
    if uid == 0:  # RLIMIT_NPROC does not bind root: leave it out rather than pretend
        return tuple(s for s in settings if s.resource != "RLIMIT_NPROC")
    allowance = max_processes + (user_processes or 0)
    if nproc_hard is not None:
        allowance = min(allowance, nproc_hard)
    return tuple(
        RlimitSetting(resource=s.resource, soft=allowance, hard=allowance)
        if s.resource == "RLIMIT_NPROC"
        else s
        for s in settings
    )


@attrs.frozen(kw_only=True)
class SeatbeltSetting:
    """What a run's compile gets besides the policy: its private TMPDIR, the run's proxy
    port and URL (token included) in allowlist mode, the tag of its denials in the log."""

    tmpdir: str
    proxy: tuple[int, str] | None = None
    tag: str | None = None


SeatbeltCompiled = tuple[SbplProfile, tuple[tuple[str, str], ...]]  # and the environment

_SEATBELT = (
    RUNNER
    | RLIMITS
    | CapabilityTable(
        enforced={
            Protection.FILESYSTEM_READ: "SBPL: system trees, workspace, TMPDIR; deny_read last",
            Protection.FILESYSTEM_WRITE: "SBPL: workspace, private TMPDIR, policy paths",
            Protection.PROTECTED_PATHS: "SBPL deny file-write* + no unlink/rename of parents",
            Protection.NETWORK_NONE: "SBPL: no network rule (deny default)",
            Protection.NAMED_UNIX_SOCKETS: "SBPL: connect to the named sockets' paths only "
            "(full network: IP, not `network*`; the resolver's socket)",
        },
        gaps={
            Protection.MEMORY: "not limited: macOS has no per-process memory limit for "
            "sandbox-exec (RLIMIT_AS refuses or breaks runs)",
            Protection.PID_ISOLATION: "host processes are visible; signals only same-sandbox",
            Protection.TREE_TEARDOWN: "descendants from the sysctl process table, and the "
            "run's process group after its root exits; a child that left the group (setsid) "
            "and was orphaned to launchd before teardown escapes",
        },
    )
)


@attrs.frozen(kw_only=True)
class SeatbeltBackend(SpawningBackend[SeatbeltCompiled, SeatbeltSetting]):
    """Runs each command under `sandbox-exec -p PROFILE -D… -- argv`.

    `egress`: start the allowlist proxy per run on a random loopback port with the run's
    token (the profile then allows only `localhost:PORT`, and the proxy variables carry the
    token). `proxy_port`: a proxy someone else runs on that loopback port. With neither, a
    policy with `network.mode = allowlist` is refused (fail closed). The remaining fields are
    injection points for tests: how paths are resolved, where per-run TMPDIRs go, whether
    `sandbox-exec` exists, how many processes the user runs. With `report_violations`,
    each run's denials are read from the unified log (`log_command stream`) and attached
    to its result; turn it off to save the bounded wait that costs.
    """

    protects_workspace: ClassVar[bool] = True
    proxy_over_tcp: ClassVar[bool] = True
    hides_home: ClassVar[bool] = True

    runner: ProcessRunner
    host: HostContext = attrs.field(factory=HostContext.current)
    proxy_port: int | None = None
    egress: EgressProxy | None = None
    realpath: Callable[[str], str] = os.path.realpath
    tmp_root: str = attrs.field(factory=_default_tmp_root)
    sandbox_exec_present: Callable[[], bool] = _sandbox_exec_present
    process_count: Callable[[int], int | None] = darwin_user_process_count
    report_violations: bool = True
    log_command: str = violations.LOG_COMMAND
    readlink: Callable[[str], str | None] = attrs.field(default=_readlink)
    # What its searches for git indirections read, reused by the next runs (state; a
    # composition root passes one it shares).
    git: GitFacts = attrs.field(factory=GitFacts, eq=False, repr=False)

    @property
    def name(self) -> str:
        return "seatbelt"

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        if self.host.platform != "darwin":
            return Failure(
                BackendUnavailable(
                    backend=self.name, reason=f"needs macOS (this host is {self.host.platform})"
                )
            )
        if not self.sandbox_exec_present():
            return Failure(
                BackendUnavailable(backend=self.name, reason=f"{SANDBOX_EXEC} is missing")
            )
        if self.egress is not None:
            allowlist = CapabilityTable(
                enforced={
                    Protection.NETWORK_ALLOWLIST: "SBPL: only localhost:PORT, the run's own "
                    "proxy (random port, per-run token in the proxy variables)"
                }
            )
        elif self.proxy_port is not None:
            how = f"SBPL: only localhost:{self.proxy_port} (proxy)"
            allowlist = CapabilityTable(enforced={Protection.NETWORK_ALLOWLIST: how})
        else:
            why = "no allowlist proxy configured"
            allowlist = CapabilityTable(gaps={Protection.NETWORK_ALLOWLIST: why})
        if self.host.uid == 0:
            why = "RLIMIT_NPROC does not apply to root"
            processes = CapabilityTable(gaps={Protection.PROCESSES: why})
        else:
            how = "RLIMIT_NPROC over the user's current process count"
            processes = CapabilityTable(enforced={Protection.PROCESSES: how})
        notes = (VIOLATIONS_NOTE,) if self.report_violations else ()
        facts = CapabilityTable(warnings=(MEMORY_NOTE,), notes=notes)
        table = _SEATBELT | allowlist | processes | facts
        return Success(table.capabilities(self.name))

    def compile(
        self, job: Job, setting: SeatbeltSetting
    ) -> Result[Launch[SeatbeltCompiled], SandboxError]:
        """The spawn, with the profile and the command's environment."""
        request, policy, host, workspace = job.request, job.policy, job.host, job.workspace
        proxy = setting.proxy
        env = scrubbed_environment(policy.environment, dict(host.env))
        env["TMPDIR"] = setting.tmpdir
        env.setdefault("HOME", private_home(setting.tmpdir))
        for name, directory in CACHE_VARIABLES:
            env.setdefault(name, posixpath.join(setting.tmpdir, "cache", directory))
        if proxy is not None and policy.network.mode is NetworkMode.ALLOWLIST:
            env.update(proxy_environment(proxy[1]))
        rlimits = seatbelt_rlimits(
            policy,
            uid=host.uid,
            user_processes=self.process_count(host.uid),
            nproc_hard=_nproc_hard_limit(),
        )
        profile = compile_profile(
            attrs.evolve(request, workspace=workspace),
            policy,
            host,
            tmpdir=setting.tmpdir,
            realpath=self.realpath,
            proxy_port=proxy[0] if proxy is not None else self.proxy_port,
            log_tag=setting.tag,
            developer=platform.developer_roots(
                dict(host.env), readlink=self.readlink, realpath=self.realpath
            ),
        )
        # Looked up, and PATH handed on, as the profile lets the command read the host.
        view = View(
            visible=_visible(job, setting.tmpdir), host=host, deny_read=policy.filesystem.deny_read
        )
        environment = tuple(sorted(with_sandbox_path(env, view).items()))

        def launched(compiled: SbplProfile) -> Result[Launch[SeatbeltCompiled], SandboxError]:
            problem = _environment_problem(environment, tuple(request.argv))
            if problem is not None:
                return Failure(problem)
            command = command_argv(environment, tuple(request.argv))
            found: Result[str, SandboxError] = resolve_command(
                request.argv[0], env, workspace, view
            )
            return found.map(
                lambda _executable: Launch(
                    spec=spawn_spec(
                        job,
                        argv=(SANDBOX_EXEC, *compiled.sandbox_exec_args(), "--", *command),
                        env=LAUNCHER_ENVIRONMENT,
                        executable=SANDBOX_EXEC,
                        rlimits=rlimits,
                    ),
                    compiled=(compiled, environment),
                )
            )

        return profile.bind(launched)

    def plan_setting(self, policy: Policy) -> SeatbeltSetting:
        proxy = None
        if self.egress is not None and policy.network.mode is NetworkMode.ALLOWLIST:
            proxy = (PLAN_PROXY_PORT, PLAN_PROXY_URL)  # chosen per run
        return SeatbeltSetting(
            tmpdir=posixpath.join(self.tmp_root, TMP_PREFIX + "XXXXXXXX"),
            proxy=proxy,
            tag=PLAN_TAG if self.report_violations else None,
        )

    def describe(
        self, job: Job, launch: Launch[SeatbeltCompiled], setting: SeatbeltSetting
    ) -> LaunchPlan:
        profile, environment = launch.compiled
        masked = tuple((name, "\u2026") for name, _ in environment)
        command = command_argv(masked, tuple(job.request.argv))
        return LaunchPlan(
            backend=self.name,
            sections=(
                ("argv", f"{SANDBOX_EXEC} -p PROFILE -D... -- " + " ".join(command)),
                ("cwd", launch.spec.cwd),
                ("environment", " ".join(name for name, _ in environment)),
                ("sandbox-exec's own environment", launcher_environment(launch.spec)),
                *limit_sections(launch.spec),
                ("sbpl", profile.render()),
            ),
            warnings=(MEMORY_NOTE,),
            notes=(DEPRECATION_NOTE,),
        )

    def open_setting(self, workspace: str, policy: Policy) -> Result[SeatbeltSetting, SandboxError]:
        try:
            tmpdir = self.realpath(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.tmp_root))
            os.mkdir(private_home(tmpdir), 0o700)
        except OSError as error:
            return Failure(BackendFailed(backend=self.name, reason=f"private TMPDIR: {error}"))
        tag = TAG_PREFIX + uuid.uuid4().hex[:16] if self.report_violations else None
        return Success(SeatbeltSetting(tmpdir=tmpdir, tag=tag))

    def close_setting(self, setting: SeatbeltSetting, workspace: str) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(setting.tmpdir, ignore_errors=True)

    def proxy_for(self, policy: Policy) -> EgressProxy | None:
        return self.egress

    def with_proxy(self, setting: SeatbeltSetting, proxy: RunningProxy) -> SeatbeltSetting:
        return attrs.evolve(setting, proxy=loopback_proxy(proxy))

    async def launch(
        self, job: Job, launch: Launch[SeatbeltCompiled], setting: SeatbeltSetting
    ) -> Result[RunResult, SandboxError]:
        """With the run's denials read from the log; `sandbox-exec` refusing the profile
        is a failure of the backend, not the command's exit."""
        if setting.tag is None:
            result = await super().launch(job, launch, setting)
        else:
            async with violations.watch_denials(setting.tag, command=self.log_command) as log:
                outcome = await super().launch(job, launch, setting)
            result = outcome.map(lambda finished: _with_denials(finished, log))
        return result.bind(self._profile_rejected)

    def _profile_rejected(self, result: RunResult) -> Result[RunResult, SandboxError]:
        """`sandbox-exec` refusing the profile is our failure, not the command's exit."""
        if not result.stdout and result.stderr.startswith(b"sandbox-exec: "):
            reason = result.stderr.decode(errors="replace").strip().splitlines()[0]
            return Failure(BackendFailed(backend=self.name, reason=reason))
        return Success(result)


def private_home(tmpdir: str) -> str:
    """The run's HOME: a directory of its private TMPDIR (writable, removed with it)."""
    return posixpath.join(tmpdir, "home")


def _visible(job: Job, tmpdir: str) -> Visible:
    """What the profile lets the command read, as trees (its single files aside)."""
    fs, host = job.policy.filesystem, job.host
    extra = (host.expand(path) for path in (*fs.readable, *fs.writable))
    readable = (*platform.SYSTEM_READ_SUBPATHS, job.workspace, tmpdir, *extra)
    return tree_view(readable, tuple(host.expand(path) for path in fs.deny_read))


def _with_denials(result: RunResult, log: violations.DenialLog) -> RunResult:
    """`result` with the run's sandbox denials, or a note saying why there are none (the
    protections held all the same: only their report is missing)."""
    if log.problem is not None:
        return attrs.evolve(
            result, notes=(*result.notes, f"violations not reported: {log.problem}")
        )
    return attrs.evolve(result, violations=(*result.violations, *log.violations()))
