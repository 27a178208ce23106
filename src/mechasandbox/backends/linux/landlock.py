"""The `landlock` backend: Landlock + seccomp + no_new_privs, for hosts without namespaces.

Inside a container (or on a hardened kernel) user namespaces are often refused, so
bubblewrap cannot start. Landlock needs no privilege and no namespace: the spawn helper's
child restricts itself just before exec (`landlock_hook`, or the exec shim from the
records of `landlock_rules`). What it enforces depends
on the kernel's Landlock ABI; `probe` says exactly what, and `Capabilities` lists the rest
as missing so a strict policy refuses honestly. See docs/backends-landlock.md.
"""

from __future__ import annotations

import base64
import errno
import functools
import os
import platform
import socket
import sys
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import (
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
from mechasandbox.backends.linux import seccomp
from mechasandbox.backends.linux.landlock_rules import ISOLATE_TARGET, RESTRICT_TARGET
from mechasandbox.backends.linux.private_tmp import PrivateTmpDirs
from mechasandbox.backends.linux.roots import SYSTEM_ROOTS
from mechasandbox.backends.resources import (
    default_cgroups,
    describe_cgroups,
    resource_support,
    run_rlimits,
)
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import FilesystemPolicy, NetworkMode, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.limits.rlimits import describe
from mechasandbox.network.environment import proxy_environment
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import ChildHook, SpawnSpec

if TYPE_CHECKING:
    from mechasandbox.network.proxy import RunningProxy
    from mechasandbox.network.session import EgressProxy

# The child-side hooks: `isolate` depends on the policy alone, so a warm child of the spawn
# helper applies it before the run is asked for; `restrict_self` reads the file system
# (rules' paths, carved directories) and so runs once the run has come.
REHEARSAL_TARGET = "mechasandbox.backends.linux.landlock_hook:rehearse"
UMASK = 0o077

# --- the Landlock ABI (include/uapi/linux/landlock.h) ---------------------------------------
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_NAMES = (
    (FS_EXECUTE, "execute"),
    (FS_WRITE_FILE, "write_file"),
    (FS_READ_FILE, "read_file"),
    (FS_READ_DIR, "read_dir"),
    (FS_REMOVE_DIR, "remove_dir"),
    (FS_REMOVE_FILE, "remove_file"),
    (FS_MAKE_CHAR, "make_char"),
    (FS_MAKE_DIR, "make_dir"),
    (FS_MAKE_REG, "make_reg"),
    (FS_MAKE_SOCK, "make_sock"),
    (FS_MAKE_FIFO, "make_fifo"),
    (FS_MAKE_BLOCK, "make_block"),
    (FS_MAKE_SYM, "make_sym"),
    (FS_REFER, "refer"),
    (FS_TRUNCATE, "truncate"),
    (FS_IOCTL_DEV, "ioctl_dev"),
)


def handled_fs_for(abi: int) -> int:
    """Every filesystem right the ABI knows: all of them are denied unless a rule grants."""
    handled = (1 << 13) - 1
    if abi >= 2:
        handled |= FS_REFER
    if abi >= 3:
        handled |= FS_TRUNCATE
    if abi >= 5:
        handled |= FS_IOCTL_DEV
    return handled


READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# Writable trees: everything but device nodes (and fifos/sockets, which seccomp denies
# through mknod anyway), and never ioctl on devices.
WRITE = (
    READ
    | FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SYM
    | FS_MAKE_SOCK
    | FS_MAKE_FIFO
    | FS_REFER
    | FS_TRUNCATE
)
DEVICE_RW = FS_READ_FILE | FS_WRITE_FILE

# /proc is readable (not executable): many tools read /proc/self, /proc/cpuinfo, /proc/meminfo.
# Other processes' environ/mem/fd are still refused by Landlock's ptrace rules; their
# command lines are not (see docs).
PROC_ROOTS: tuple[str, ...] = ("/proc",)
# Never written, whatever a `writable` entry over them says (`/` included): the kernel's
# settings. A root caller's command is host root to their permission checks (a sysctl file
# asks for no capability), so these are denied writes like `deny_write` entries.
KERNEL_ROOTS: tuple[str, ...] = ("/proc", "/sys")
DEVICES: tuple[str, ...] = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

TMP_PLACEHOLDER = "<per-run tmp dir>"
_TMP_DIRS = PrivateTmpDirs()
# `plan` runs no proxy: its port and token are shown as placeholders.
PROXY_PORT_PLACEHOLDER = 0
PROXY_URL_PLACEHOLDER = "http://sandbox:<per-run token>@127.0.0.1:<per-run port>"


def format_access(access: int) -> str:
    names = [name for bit, name in _FS_NAMES if access & bit]
    if access == READ:
        return "read+exec"
    if access == WRITE:
        return "read+write+exec"
    return "|".join(names) or "none"


@attrs.frozen(kw_only=True)
class PathRule:
    """Grant `access` beneath `path`, except `exclusions` (paths inside it) which keep only
    their residual rights. `required`: fail the spawn when missing (else skip)."""

    path: str
    access: int
    required: bool = False
    exclusions: tuple[tuple[str, int], ...] = ()


@attrs.frozen(kw_only=True)
class SeccompFilter:
    """The shared seccomp program (`backends/linux/seccomp.py`) as this backend uses it:
    its default deny-list, and only the socket families (and types) the network mode needs."""

    socket_families: tuple[int, ...]
    stream_only: bool = False

    @property
    def instructions(self) -> bytes:
        return _seccomp_program(self.socket_families, self.stream_only)

    def summary(self) -> str:
        return seccomp.summary(
            deny_socket_families_except=self.socket_families, stream_only=self.stream_only
        )


@functools.cache
def _seccomp_program(families: tuple[int, ...], stream_only: bool) -> bytes:
    """Compiled once per shape: the program depends on nothing else."""
    return seccomp.build_filter(deny_socket_families_except=families, stream_only=stream_only)


def seccomp_filter(families: tuple[int, ...], *, stream_only: bool = False) -> SeccompFilter:
    return SeccompFilter(socket_families=families, stream_only=stream_only)


@attrs.frozen(kw_only=True)
class LandlockRuleset:
    """Everything the child-side hook needs, computed purely from request, policy and host."""

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    rules: tuple[PathRule, ...]
    net_rules: tuple[tuple[int, int], ...]
    seccomp: SeccompFilter
    env: tuple[tuple[str, str], ...]
    tmp_dir: str
    drop_capabilities: bool = True

    def to_hook_argument(self) -> dict[str, object]:
        return {
            "abi": self.abi,
            "handled_fs": self.handled_fs,
            "handled_net": self.handled_net,
            "scoped": self.scoped,
            "rules": [
                [r.path, r.access, r.required, [[p, a] for p, a in r.exclusions]]
                for r in self.rules
            ],
            "net_rules": [[port, access] for port, access in self.net_rules],
            "seccomp": base64.b64encode(self.seccomp.instructions).decode(),
            "drop_capabilities": self.drop_capabilities,
            "restrict_flags": 0,
        }

    def child_hooks(self) -> tuple[ChildHook, ChildHook]:
        """`to_hook_argument` split between the spawn helper's two hooks (see the targets)."""
        argument = self.to_hook_argument()
        isolating = {name: argument.pop(name) for name in ("drop_capabilities", "seccomp")}
        return (
            ChildHook(target=ISOLATE_TARGET, argument=isolating, ahead=True),
            ChildHook(target=RESTRICT_TARGET, argument=argument, rehearsal=REHEARSAL_TARGET),
        )

    def render_rules(self) -> str:
        lines = []
        for rule in self.rules:
            flag = " (required)" if rule.required else ""
            lines.append(f"{rule.path}: {format_access(rule.access)}{flag}")
            lines.extend(
                f"  except {path}: {format_access(access)}" for path, access in rule.exclusions
            )
        return "\n".join(lines)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _normal(path: str) -> str:
    return os.path.normpath(path)


def _outside_workspace(path: str, *, root: str) -> bool:
    return not _inside(_normal(os.path.join(root, path)), root)


@attrs.frozen
class _Denials:
    """The policy's deny lists, absolute, and the protected paths inside the workspace."""

    read: tuple[str, ...]
    write: tuple[str, ...]
    protected: tuple[str, ...]

    def rule(self, path: str, access: int, *, required: bool = False) -> PathRule | None:
        """The rule granting `access` on `path`, less what the deny lists take away."""
        path = _normal(path)
        if any(_inside(path, denied) for denied in self.read):
            return None  # deny wins: nothing of it is granted
        exclusions = [(d, 0) for d in self.read if _inside(d, path) and d != path]
        if access & ~READ:
            if any(_inside(path, denied) for denied in self.write):
                access &= READ
            else:
                exclusions += [(d, READ) for d in self.write if _inside(d, path) and d != path]
        return PathRule(
            path=path, access=access, required=required, exclusions=tuple(sorted(exclusions))
        )


def _handled(rule: PathRule | None, handled_fs: int) -> PathRule | None:
    if rule is None:
        return None
    return attrs.evolve(
        rule,
        access=rule.access & handled_fs,
        exclusions=tuple((p, a & handled_fs) for p, a in rule.exclusions),
    )


@functools.lru_cache(maxsize=64)
def _fixed_rules(
    fs: FilesystemPolicy, host: HostContext, root: str, abi: int, carve_protected: bool
) -> tuple[_Denials, tuple[PathRule, ...], PathRule | None]:
    """What does not change from run to run (only the private tmp dir does): the deny
    lists, the rules before the tmp dir's, and the workspace's. Cached: an agent runs many
    commands under one policy, and the deny checks are most of the compiler's time."""
    denials = _Denials(
        read=tuple(_normal(host.expand(p)) for p in fs.deny_read),
        write=tuple(_normal(host.expand(p)) for p in fs.deny_write) + KERNEL_ROOTS,
        protected=tuple(
            p
            for p in (_normal(os.path.join(root, host.expand(rel))) for rel in fs.protected)
            if _inside(p, root) and p != root
        ),
    )
    rule = denials.rule
    candidates: list[PathRule | None] = [rule(p, READ) for p in SYSTEM_ROOTS]
    candidates += [rule(p, FS_READ_FILE | FS_READ_DIR) for p in PROC_ROOTS]
    candidates += [rule(p, DEVICE_RW) for p in DEVICES]
    # Entries inside the workspace add nothing to its rule, and the rule of a symlink there
    # would grant what its target is (a repository's `ref -> /`): they are left out.
    outside = functools.partial(_outside_workspace, root=root)
    candidates += [rule(p, READ) for p in filter(outside, map(host.expand, fs.readable))]
    candidates += [rule(p, WRITE) for p in filter(outside, map(host.expand, fs.writable))]
    workspace_rule = rule(root, WRITE, required=True)
    if workspace_rule is not None and carve_protected and denials.protected:
        extra = tuple(sorted((p, READ) for p in denials.protected))
        workspace_rule = attrs.evolve(
            workspace_rule, exclusions=tuple(sorted(workspace_rule.exclusions + extra))
        )
    handled_fs = handled_fs_for(abi)
    head = tuple(r for r in (_handled(c, handled_fs) for c in candidates) if r is not None)
    return denials, head, _handled(workspace_rule, handled_fs)


def compile_landlock_rules(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    *,
    abi: int = 7,
    workspace: str | None = None,
    tmp_dir: str = TMP_PLACEHOLDER,
    carve_protected: bool = True,
    proxy: tuple[int, str] | None = None,
) -> LandlockRuleset:
    """The ruleset for one run. Pure: no filesystem access, golden-testable.

    `workspace` is the workspace's real path (the request's path when not given);
    `tmp_dir` the per-run private tmp created by the host. `carve_protected`: keep
    protected paths read-only by granting the workspace child by child (see docs).
    `proxy`: in allowlist mode (ABI >= 4), the run's proxy port on 127.0.0.1 and its URL
    (with the per-run token): TCP connect is granted to that port only, sockets are
    AF_INET TCP only, and the proxy variables are set.
    """
    root = _normal(workspace or request.workspace)
    denials, head, workspace_rule = _fixed_rules(
        policy.filesystem, host, root, abi, carve_protected
    )
    handled_fs = handled_fs_for(abi)
    tmp_rule = _handled(denials.rule(tmp_dir, WRITE, required=True), handled_fs)
    rules = head + tuple(r for r in (tmp_rule, workspace_rule) if r is not None)
    mode = policy.network.mode
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 and mode is not NetworkMode.FULL else 0
    # Abstract unix sockets of the host (the session bus, X11, containerd...) are out of
    # reach in every mode: full network means the internet, not host IPC.
    scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET if abi >= 6 else 0
    # Landlock (ABI <= 7) cannot stop connect() to a path unix socket (docker.sock, the ssh
    # agent): socket(AF_UNIX) is refused in every mode, socketpair() stays. Only a policy
    # that names sockets gets AF_UNIX, and with it every socket (best-effort only: the
    # NAMED_UNIX_SOCKETS protection is not enforced here, so a strict run is refused).
    families: tuple[int, ...] = ()
    net_rules: tuple[tuple[int, int], ...] = ()
    bridged = mode is NetworkMode.ALLOWLIST and abi >= 4 and proxy is not None
    if mode is NetworkMode.FULL:
        families = (socket.AF_INET, socket.AF_INET6)
    elif bridged and proxy is not None:
        # Only what reaching 127.0.0.1:PORT needs: IPv4 TCP sockets, connect to that port.
        # No UDP (no DNS: the proxy resolves).
        families = (socket.AF_INET,)
        net_rules = ((proxy[0], NET_CONNECT_TCP),)
    if policy.network.allow_unix_sockets:
        families = (socket.AF_UNIX, *families)
    program = seccomp_filter(families, stream_only=bridged)

    env = scrubbed_environment(policy.environment, dict(host.env))
    if bridged and proxy is not None:
        env.update(proxy_environment(proxy[1]))
    for name in ("TMPDIR", "TMP", "TEMP"):
        env[name] = tmp_dir
    return LandlockRuleset(
        abi=abi,
        handled_fs=handled_fs,
        handled_net=handled_net,
        scoped=scoped,
        rules=rules,
        net_rules=net_rules,
        seccomp=program,
        env=tuple(sorted(env.items())),
        tmp_dir=tmp_dir,
    )


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


@functools.lru_cache(maxsize=16)
def capabilities_for(
    abi: int, cgroups: CgroupManager | str, uid: int, *, carve_protected: bool = True
) -> Capabilities:
    """What Landlock at `abi` + seccomp + the spawn helper give; pure (golden-testable),
    so computed once per set of arguments (every run probes)."""
    enforced = {
        Protection.FILESYSTEM_READ,
        Protection.NETWORK_NONE,
        Protection.ENVIRONMENT,
        Protection.TIMEOUT,
        Protection.TREE_TEARDOWN,
        Protection.CPU,
        Protection.OPEN_FILES,
        Protection.FILE_SIZE,
    }
    details: list[tuple[Protection, str]] = [
        (
            Protection.FILESYSTEM_READ,
            "Landlock allow-list: system roots, /proc (read), workspace, private tmp; "
            "home and everything else unreadable",
        ),
        (
            Protection.NETWORK_NONE,
            "seccomp refuses socket() for every family (socketpair only)"
            + ("; Landlock denies TCP bind/connect" if abi >= 4 else "")
            + ("; abstract unix sockets scoped" if abi >= 6 else ""),
        ),
        (
            Protection.NETWORK_ALLOWLIST,
            (
                "the run's proxy on 127.0.0.1:PORT (random per run, token required); Landlock "
                "grants TCP connect to PORT only and seccomp allows only IPv4 TCP sockets (no "
                "UDP, no DNS, no unix sockets). Landlock matches ports, not addresses: a "
                "connection to PORT on another address (a catch-all server prepared outside) "
                "is not stopped"
                if abi >= 4
                else f"Landlock ABI {abi} < 4 has no TCP rules to confine the command to the "
                "proxy; best-effort runs with no network at all"
            ),
        ),
        (
            Protection.NAMED_UNIX_SOCKETS,
            "Landlock does not govern connect() to a unix socket: naming one lets seccomp "
            "allow AF_UNIX, and with it every host unix socket the command can find "
            "(docker.sock, the ssh agent)"
            + ("; abstract ones stay scoped" if abi >= 6 else ", abstract ones included"),
        ),
        (
            Protection.PID_ISOLATION,
            (
                "signals outside the sandbox blocked (Landlock scope); "
                if abi >= 6
                else "host processes of the user can be signalled (Landlock ABI < 6); "
            )
            + "ptrace, environ and mem of host processes refused (Landlock ptrace rules)",
        ),
        (
            Protection.HOST_PROCESSES_HIDDEN,
            "no pid namespace: host processes are listed in /proc with their command lines "
            '(set host_processes = "visible" to accept this)',
        ),
        (Protection.ENVIRONMENT, "scrubbed environment; no inherited descriptors"),
        (Protection.TREE_TEARDOWN, "spawn helper is child subreaper; kills the whole tree"),
        (Protection.CPU, "RLIMIT_CPU; capabilities dropped so it cannot be raised"),
        (Protection.OPEN_FILES, "RLIMIT_NOFILE"),
        (Protection.FILE_SIZE, "RLIMIT_FSIZE"),
    ]
    warnings: list[str] = [
        "landlock: file metadata (chmod, utimes, xattrs) of host files the user owns is not "
        "confined; contents are"
    ]
    if abi >= 3:
        enforced.add(Protection.FILESYSTEM_WRITE)
        details.append(
            (
                Protection.FILESYSTEM_WRITE,
                "Landlock: contents and directory entries change only in the workspace and "
                "private tmp (metadata such as chmod/utimes is not a Landlock right)",
            )
        )
        if carve_protected:
            enforced.add(Protection.PROTECTED_PATHS)
            details.append(
                (
                    Protection.PROTECTED_PATHS,
                    "workspace granted entry by entry around protected paths; the workspace "
                    "top level and the directories holding protected paths accept no new "
                    "entries",
                )
            )
        else:
            details.append(
                (
                    Protection.PROTECTED_PATHS,
                    "Landlock cannot take a right back below a granted directory "
                    "(carving disabled)",
                )
            )
    else:
        reason = f"Landlock ABI {abi} < 3 does not handle truncate: files can be emptied"
        details.append((Protection.FILESYSTEM_WRITE, reason))
        details.append((Protection.PROTECTED_PATHS, reason))
    resources = resource_support(cgroups, uid)
    enforced |= resources.enforced
    details += resources.details
    warnings += resources.warnings
    if abi >= 4:
        enforced.add(Protection.NETWORK_ALLOWLIST)
    if abi >= 6:
        enforced.add(Protection.PID_ISOLATION)
    else:
        warnings.append(f"Landlock ABI {abi}: host processes of the same user can be signalled")
    return Capabilities(
        backend="landlock",
        enforced=frozenset(enforced),
        details=tuple(details),
        warnings=tuple(warnings),
    )


@attrs.frozen(kw_only=True)
class LandlockBackend:
    """Landlock + seccomp + no_new_privs + rlimits/cgroup, spawned by the helper.

    `carve_protected`: keep the policy's protected paths read-only by granting the
    workspace entry by entry (the top level then accepts no new entries). False grants the
    whole workspace and reports PROTECTED_PATHS as not enforced.
    """

    runner: ProcessRunner
    cgroups: CgroupManager | str = attrs.field(factory=default_cgroups)
    host: HostContext = attrs.field(factory=HostContext.current)
    carve_protected: bool = True
    tmp_parent: str | None = None  # where per-run tmp dirs go (default: the host's temp dir)
    # The allowlist proxy's settings (None: the defaults, made when a run first needs them).
    egress: EgressProxy | None = None

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

    def _spec(
        self,
        request: RunRequest,
        policy: Policy,
        workspace: str,
        tmp_dir: str,
        proxy: tuple[int, str] | None = None,
    ) -> Result[tuple[SpawnSpec, LandlockRuleset], SandboxError]:
        if proxy is None and policy.network.mode is NetworkMode.ALLOWLIST:
            proxy = (PROXY_PORT_PLACEHOLDER, PROXY_URL_PLACEHOLDER)  # `plan` only
        ruleset = compile_landlock_rules(
            request,
            policy,
            self.host,
            abi=self._abi(),
            workspace=workspace,
            tmp_dir=tmp_dir,
            carve_protected=self.carve_protected,
            proxy=proxy,
        )
        env = dict(ruleset.env)
        rlimits = run_rlimits(policy.limits, self.cgroups)
        return resolve_command(request.argv[0], env, workspace).map(
            lambda executable: (
                SpawnSpec(
                    argv=request.argv,
                    env=ruleset.env,
                    cwd=workspace,
                    stdin=request.stdin,
                    timeout_s=policy.limits.timeout_s,
                    max_output_bytes=policy.limits.max_output_bytes,
                    umask=UMASK,
                    rlimits=rlimits,
                    hooks=ruleset.child_hooks(),
                    executable=executable,
                ),
                ruleset,
            )
        )

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        def render(built: tuple[SpawnSpec, LandlockRuleset]) -> LaunchPlan:
            spec, ruleset = built
            cgroup = describe_cgroups(self.cgroups)
            return LaunchPlan(
                backend=self.name,
                sections=(
                    ("argv", " ".join(spec.argv)),
                    ("executable", spec.executable or ""),
                    ("cwd", spec.cwd),
                    ("environment", " ".join(name for name, _ in spec.env)),
                    ("landlock abi", describe_abi(ruleset.abi)),
                    ("landlock handled", render_handled(ruleset)),
                    ("landlock rules", ruleset.render_rules()),
                    ("seccomp", ruleset.seccomp.summary()),
                    ("capabilities", "all dropped (bounding, ambient, effective, permitted)"),
                    ("umask", f"{spec.umask:04o}"),
                    ("rlimits", describe(spec.rlimits)),
                    ("cgroup", cgroup),
                ),
            )

        workspace: Result[str, SandboxError] = check_workspace(request)
        backend = attrs.evolve(self, host=host)
        return workspace.bind(
            lambda path: backend._spec(
                request, planned_policy(policy, path, host), path, TMP_PLACEHOLDER
            )
        ).map(render)

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        prepared = prepare_run(self, request, policy)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        warnings, workspace, policy = prepared.unwrap()
        tmp_dir = _TMP_DIRS.take(self.tmp_parent)

        async def body(running: RunningProxy | None) -> Result[RunResult, SandboxError]:
            proxy: tuple[int, str] | None = None
            if running is not None and running.tcp_address is not None and running.tcp_url:
                proxy = (running.tcp_address[1], running.tcp_url)
            built = self._spec(request, policy, workspace, tmp_dir, proxy)
            if isinstance(built, Failure):
                return Failure(built.failure())
            spec, _ruleset = built.unwrap()
            return await execute_spec(
                self.name, self.runner, spec, policy, warnings=warnings, cgroups=self.cgroups
            )

        started = run_started()
        try:
            if policy.network.mode is not NetworkMode.ALLOWLIST or self._abi() < 4:
                # ABI < 4, no TCP rules: allowlist runs offline
                return disarm_after(await body(None), workspace, policy, started)
            # The proxy (and with it asyncio) is imported only by runs that need it.
            from mechasandbox.network.session import EgressProxy, run_with_proxy

            egress = self.egress or EgressProxy()
            proxied = await run_with_proxy(egress, policy.network, body, listen_tcp=True)
            return disarm_after(proxied, workspace, policy, started)
        finally:
            _TMP_DIRS.give_back(self.tmp_parent, tmp_dir)


def render_handled(ruleset: LandlockRuleset) -> str:
    net = []
    if ruleset.handled_net & NET_BIND_TCP:
        net.append("bind_tcp")
    if ruleset.handled_net & NET_CONNECT_TCP:
        net.append("connect_tcp")
    scopes = []
    if ruleset.scoped & SCOPE_ABSTRACT_UNIX_SOCKET:
        scopes.append("abstract_unix_socket")
    if ruleset.scoped & SCOPE_SIGNAL:
        scopes.append("signal")
    names = "|".join(name for bit, name in _FS_NAMES if ruleset.handled_fs & bit)
    return "\n".join(
        (
            f"fs: {names}",
            "net: "
            + (
                " ".join(net)
                + (
                    "; connect allowed to port "
                    + " ".join(str(port) for port, _ in ruleset.net_rules)
                    + (" (the proxy's, chosen per run)" if ruleset.net_rules[0][0] == 0 else "")
                    if ruleset.net_rules
                    else " (no port allowed)"
                )
                if net
                else "not handled"
            ),
            "scoped: " + (" ".join(scopes) or "none"),
        )
    )
