"""The `landlock` backend: Landlock + seccomp + no_new_privs, for hosts without namespaces.

Inside a container (or on a hardened kernel) user namespaces are often refused, so
bubblewrap cannot start. Landlock needs no privilege and no namespace: the spawn helper's
child restricts itself just before exec (`landlock_hook`, or the exec shim from the
records of `landlock_rules`). What it enforces depends
on the kernel's Landlock ABI; `probe` says exactly what, and `Capabilities` lists the rest
as missing so a strict policy refuses honestly. See docs/backends-landlock.md.

The pure compiler (the ABI's rights, the ruleset of a run) is `landlock_compiler`; this
module probes the kernel's ABI, says what it enforces, and runs.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
import sys
from typing import TYPE_CHECKING, ClassVar

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan
from mechasandbox.backends.capability_table import RLIMITS, RUNNER, CapabilityTable
from mechasandbox.backends.git_facts import GitFacts
from mechasandbox.backends.linux import seccomp
from mechasandbox.backends.linux.landlock_compiler import (
    HOME_PLACEHOLDER,
    TMP_PLACEHOLDER,
    LandlockRuleset,
    carved_directories,
    compile_landlock_rules,
    render_handled,
)
from mechasandbox.backends.linux.private_tmp import PrivateTmpDirs
from mechasandbox.backends.linux.roots import SYSTEM_ROOTS
from mechasandbox.backends.lookup import View, resolve_command, tree_view, with_sandbox_path
from mechasandbox.backends.refusals import (
    LANDLOCK_AUDIT_NOTE,
    REFUSALS_NOTE,
    RefusalView,
    refusal_view,
)
from mechasandbox.backends.resources import default_cgroups, resource_support, run_rlimits
from mechasandbox.backends.template import (
    Job,
    Launch,
    SpawningBackend,
    command_sections,
    limit_sections,
    loopback_proxy,
    spawn_spec,
)
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.runner.protocol import ProcessRunner

if TYPE_CHECKING:
    from mechasandbox.backends.session_base import BackendSession, SessionSettings
    from mechasandbox.network.proxy import RunningProxy
    from mechasandbox.network.session import EgressProxy

# `plan` runs no proxy: its port and token are shown as placeholders.
PROXY_PORT_PLACEHOLDER = 0
PROXY_URL_PLACEHOLDER = "http://sandbox:<per-run token>@127.0.0.1:<per-run port>"


# --- probing --------------------------------------------------------------------------------
_ABI_ERRORS = {
    errno.ENOSYS: "the kernel has no Landlock (landlock_create_ruleset: ENOSYS; needs >= 5.13)",
    errno.EOPNOTSUPP: "Landlock is disabled at boot (add 'landlock' to the lsm= kernel parameter)",
}


@functools.cache
def probe_abi() -> int | str:
    """The Landlock ABI here, or why there is none (probed once: the kernel does not change)."""
    if not sys.platform.startswith("linux"):
        return "Landlock exists only on Linux"
    machine = platform.machine()
    if machine not in seccomp.MACHINES:
        return f"no seccomp syscall table for {machine}"
    from mechasandbox.backends.linux import landlock_hook

    try:
        return landlock_hook.abi_version()
    except OSError as error:
        default = f"landlock_create_ruleset failed: {error.strerror}"
        return _ABI_ERRORS.get(error.errno or 0, default)
    except AttributeError as error:  # libc without syscall()/prctl
        return f"libc: {error}"


ABI_FEATURES = (
    (1, "filesystem access rights (read, write, execute, make, remove) on path hierarchies"),
    (2, "refer: link/rename across directories (ABI 1 refuses them all)"),
    (3, "truncate: truncate(2) and O_TRUNC are access rights (before: unconfined)"),
    (4, "TCP bind and connect by port"),
    (5, "ioctl on device files"),
    (6, "scopes: abstract unix sockets and signals to processes outside the sandbox"),
    (7, "audit logging of denials"),
)


def describe_abi(abi: int) -> str:
    """What each Landlock ABI level up to `abi` adds, one line each (for `plan`)."""
    return "\n".join(f"ABI {level}: {text}" for level, text in ABI_FEATURES if level <= abi)


_LANDLOCK = (
    RUNNER
    | RLIMITS
    | CapabilityTable(
        enforced={
            Protection.FILESYSTEM_READ: "Landlock allow-list: system roots, /proc (read), "
            "workspace, private tmp; home and everything else unreadable",
            Protection.ENVIRONMENT: "scrubbed environment; no inherited descriptors",
            Protection.TREE_TEARDOWN: "spawn helper is child subreaper; kills the whole tree",
            Protection.CPU: "RLIMIT_CPU; capabilities dropped so it cannot be raised",
        },
        gaps={
            Protection.HOST_PROCESSES_HIDDEN: "no pid namespace: host processes are listed in "
            '/proc with their command lines (set host_processes = "visible" to accept this)',
        },
        warnings=(
            "landlock: file metadata (chmod, utimes, xattrs) of host files the user owns is "
            "not confined; contents are",
        ),
        notes=(REFUSALS_NOTE, LANDLOCK_AUDIT_NOTE),
    )
)


def _network_rows(abi: int) -> CapabilityTable:
    """No network, the allowlist and named unix sockets, as far as the ABI can."""
    none = (
        "seccomp refuses socket() for every family (socketpair only)"
        + ("; Landlock denies TCP bind/connect" if abi >= 4 else "")
        + ("; abstract unix sockets scoped" if abi >= 6 else "")
    )
    sockets = (
        "Landlock does not govern connect() to a unix socket: naming one lets seccomp "
        "allow AF_UNIX, and with it every host unix socket the command can find "
        "(docker.sock, the ssh agent)"
        + ("; abstract ones stay scoped" if abi >= 6 else ", abstract ones included")
    )
    rows = CapabilityTable(
        enforced={Protection.NETWORK_NONE: none}, gaps={Protection.NAMED_UNIX_SOCKETS: sockets}
    )
    if abi < 4:
        why = (
            f"Landlock ABI {abi} < 4 has no TCP rules to confine the command to the proxy; "
            "best-effort runs with no network at all"
        )
        return rows | CapabilityTable(gaps={Protection.NETWORK_ALLOWLIST: why})
    how = (
        "the run's proxy on 127.0.0.1:PORT (random per run, token required); Landlock "
        "grants TCP connect to PORT only and seccomp allows only IPv4 TCP sockets (no "
        "UDP, no DNS, no unix sockets). Landlock matches ports, not addresses: a "
        "connection to PORT on another address (a catch-all server prepared outside) "
        "is not stopped"
    )
    return rows | CapabilityTable(enforced={Protection.NETWORK_ALLOWLIST: how})


def _write_rows(abi: int, carve_protected: bool) -> CapabilityTable:
    if abi < 3:
        why = f"Landlock ABI {abi} < 3 does not handle truncate: files can be emptied"
        return CapabilityTable(
            gaps={Protection.FILESYSTEM_WRITE: why, Protection.PROTECTED_PATHS: why}
        )
    write = CapabilityTable(
        enforced={
            Protection.FILESYSTEM_WRITE: "Landlock: contents and directory entries change "
            "only in the workspace and private tmp (metadata such as chmod/utimes is not a "
            "Landlock right)"
        }
    )
    if not carve_protected:
        why = "Landlock cannot take a right back below a granted directory (carving disabled)"
        return write | CapabilityTable(gaps={Protection.PROTECTED_PATHS: why})
    how = (
        "workspace granted entry by entry around protected paths; the workspace top level "
        "and the directories holding protected paths accept no new entries"
    )
    return write | CapabilityTable(enforced={Protection.PROTECTED_PATHS: how})


def _signal_rows(abi: int) -> CapabilityTable:
    ptrace = "ptrace, environ and mem of host processes refused (Landlock ptrace rules)"
    if abi >= 6:
        how = "signals outside the sandbox blocked (Landlock scope); " + ptrace
        return CapabilityTable(enforced={Protection.PID_ISOLATION: how})
    return CapabilityTable(
        gaps={
            Protection.PID_ISOLATION: "host processes of the user can be signalled (Landlock "
            "ABI < 6); " + ptrace
        },
        warnings=(f"Landlock ABI {abi}: host processes of the same user can be signalled",),
    )


@functools.lru_cache(maxsize=16)
def capabilities_for(
    abi: int, cgroups: CgroupManager | str, uid: int, *, carve_protected: bool = True
) -> Capabilities:
    """What Landlock at `abi` + seccomp + the spawn helper give; pure (golden-testable),
    so computed once per set of arguments (every run probes)."""
    table = (
        _LANDLOCK
        | _network_rows(abi)
        | _write_rows(abi, carve_protected)
        | resource_support(cgroups, uid)
        | _signal_rows(abi)
    )
    return table.capabilities("landlock")


def _workspace_rights(ruleset: LandlockRuleset, workspace: str) -> str:
    """What the command may change in the workspace, carving included."""
    closed = carved_directories(ruleset, workspace)
    if not closed:
        return "read+write+exec, new entries anywhere"
    shown = ", ".join(
        "the top level" if path == workspace else os.path.relpath(path, workspace) + "/"
        for path in closed
    )
    return (
        "read+write+exec below, but protected paths are read-only, and these directories "
        f"take no new entry, rename or removal: {shown}. Their existing files can be "
        "rewritten in place; create new files and directories in a subdirectory (Landlock "
        "cannot grant a new entry at a directory without granting it everywhere below, "
        "protected paths included)"
    )


def _unreachable(entries: tuple[str, ...]) -> str:
    if not entries:
        return "none"
    return " ".join(entries) + " (no rule lets anything there run)"


@attrs.frozen(kw_only=True)
class LandlockSetting:
    """What a run's compile gets besides the policy: its private tmp and home dirs, and the
    run's proxy port and URL in allowlist mode."""

    tmp_dir: str
    home_dir: str = HOME_PLACEHOLDER
    proxy: tuple[int, str] | None = None


@attrs.frozen(kw_only=True)
class LandlockBackend(SpawningBackend[LandlockRuleset, LandlockSetting]):
    """Landlock + seccomp + no_new_privs + rlimits/cgroup, spawned by the helper.

    `carve_protected`: keep the policy's protected paths read-only by granting the
    workspace entry by entry (the top level then accepts no new entries). False grants the
    whole workspace and reports PROTECTED_PATHS as not enforced.
    """

    protects_workspace: ClassVar[bool] = True
    explains_refusals: ClassVar[bool] = True
    proxy_over_tcp: ClassVar[bool] = True
    hides_home: ClassVar[bool] = True

    runner: ProcessRunner
    cgroups: CgroupManager | str = attrs.field(factory=default_cgroups)
    host: HostContext = attrs.field(factory=HostContext.current)
    carve_protected: bool = True
    tmp_parent: str | None = None  # where per-run tmp dirs go (default: the host's temp dir)
    # The allowlist proxy's settings (None: the defaults, made when a run first needs them).
    egress: EgressProxy | None = None
    # The runs' private tmp dirs kept for the next runs (state: its `close` removes them);
    # a backend built directly keeps its own, a composition root passes one it closes.
    tmp_dirs: PrivateTmpDirs = attrs.field(factory=PrivateTmpDirs, eq=False, repr=False)
    # What its searches for git indirections read, reused by the next runs (state; a
    # composition root passes one it shares).
    git: GitFacts = attrs.field(factory=GitFacts, eq=False, repr=False)

    @property
    def name(self) -> str:
        return "landlock"

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        abi = probe_abi()
        if isinstance(abi, str):
            return Failure(BackendUnavailable(backend=self.name, reason=abi))
        return Success(
            capabilities_for(abi, self.cgroups, self.host.uid, carve_protected=self.carve_protected)
        )

    def _abi(self) -> int:
        abi = probe_abi()
        return abi if isinstance(abi, int) else 7

    def compile(
        self, job: Job, setting: LandlockSetting, *, agent: str | None = None
    ) -> Result[Launch[LandlockRuleset], SandboxError]:
        """`agent`: the host path of a session's agent, which the request's argv starts
        (see `landlock_session`): not looked up (each command is, by the agent)."""
        policy = job.policy
        proxy = setting.proxy
        if proxy is None and policy.network.mode is NetworkMode.ALLOWLIST:
            proxy = (PROXY_PORT_PLACEHOLDER, PROXY_URL_PLACEHOLDER)  # `plan` only
        ruleset = compile_landlock_rules(
            job.request,
            policy,
            job.host,
            abi=self._abi(),
            workspace=job.workspace,
            tmp_dir=setting.tmp_dir,
            home_dir=setting.home_dir,
            carve_protected=self.carve_protected,
            proxy=proxy,
        )
        rlimits = run_rlimits(policy.limits, self.cgroups)
        # Looked up, and PATH handed on, as the rules let the command read the host.
        readable, hidden = ruleset.readable_trees()
        view = View(
            visible=tree_view(readable, hidden),
            host=job.host,
            deny_read=policy.filesystem.deny_read,
        )
        env = dict(ruleset.env)
        shown = attrs.evolve(ruleset, env=tuple(sorted(with_sandbox_path(env, view).items())))
        found: Result[str, SandboxError] = (
            resolve_command(job.request.argv[0], env, job.workspace, view)
            if agent is None
            else Success(agent)
        )
        return found.map(
            lambda executable: Launch(
                spec=spawn_spec(
                    job,
                    argv=tuple(job.request.argv),
                    env=shown.env,
                    executable=executable,
                    rlimits=rlimits,
                    hooks=shown.child_hooks(),
                ),
                compiled=shown,
                cgroups=self.cgroups,
            )
        )

    def plan_setting(self, policy: Policy) -> LandlockSetting:
        return LandlockSetting(tmp_dir=TMP_PLACEHOLDER)

    def describe(
        self, job: Job, launch: Launch[LandlockRuleset], setting: LandlockSetting
    ) -> LaunchPlan:
        ruleset = launch.compiled
        return LaunchPlan(
            backend=self.name,
            sections=(
                *command_sections(launch.spec),
                ("landlock abi", describe_abi(ruleset.abi)),
                ("landlock handled", render_handled(ruleset)),
                ("workspace", _workspace_rights(ruleset, job.workspace)),
                ("landlock rules", ruleset.render_rules()),
                ("PATH left out", _unreachable(ruleset.unreachable_path)),
                ("seccomp", ruleset.seccomp.summary()),
                ("capabilities", "all dropped (bounding, ambient, effective, permitted)"),
                *limit_sections(launch.spec, launch.cgroups),
            ),
        )

    def open_setting(self, workspace: str, policy: Policy) -> Result[LandlockSetting, SandboxError]:
        # Two private directories of the same kind: the run's TMPDIR and its HOME.
        return Success(
            LandlockSetting(
                tmp_dir=self.tmp_dirs.take(self.tmp_parent),
                home_dir=self.tmp_dirs.take(self.tmp_parent),
            )
        )

    def close_setting(self, setting: LandlockSetting, workspace: str) -> None:
        # In the reverse order of `take` (last in, first out): a run's next one gets the
        # same TMPDIR and HOME back, each where it was.
        self.tmp_dirs.give_back(self.tmp_parent, setting.home_dir)
        self.tmp_dirs.give_back(self.tmp_parent, setting.tmp_dir)

    async def open_session(
        self, workspace: str, policy: Policy, settings: SessionSettings
    ) -> Result[BackendSession, SandboxError]:
        """A confined agent that forks each command (see `landlock_session`)."""
        from mechasandbox.backends.linux.landlock_session import open_landlock_session

        return await open_landlock_session(self, workspace, policy, settings)

    def refusal_view(self, job: Job, setting: LandlockSetting) -> RefusalView:
        ruleset = compile_landlock_rules(
            job.request,
            job.policy,
            job.host,
            abi=self._abi(),
            workspace=job.workspace,
            tmp_dir=setting.tmp_dir,
            carve_protected=self.carve_protected,
        )
        return refusal_view(
            self.name,
            job.policy,
            job.host,
            job.workspace,
            system=SYSTEM_ROOTS,
            scratch=(setting.tmp_dir,),
            closed=carved_directories(ruleset, job.workspace),
        )

    def proxy_for(self, policy: Policy) -> EgressProxy | None:
        # ABI < 4, no TCP rules: allowlist runs offline
        if policy.network.mode is not NetworkMode.ALLOWLIST or self._abi() < 4:
            return None
        from mechasandbox.network.session import EgressProxy

        return self.egress or EgressProxy()

    def with_proxy(self, setting: LandlockSetting, proxy: RunningProxy) -> LandlockSetting:
        return attrs.evolve(setting, proxy=loopback_proxy(proxy))
