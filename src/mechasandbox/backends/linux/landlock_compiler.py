"""Landlock's pure compiler: the ruleset of one run (`compile_landlock_rules`: path rules,
TCP rules, scopes, the seccomp filter and the environment), computed from the request, the
policy and the host's facts without touching the file system; golden-tested. The child
applies it (`landlock_hook`, or the exec shim from the records of `landlock_rules`).
"""

from __future__ import annotations

import base64
import functools
import os
import socket

import attrs

from mechasandbox.backends.base import HostContext, scrubbed_environment
from mechasandbox.backends.linux import seccomp
from mechasandbox.backends.linux.landlock_rules import ISOLATE_TARGET, RESTRICT_TARGET
from mechasandbox.backends.linux.roots import SYSTEM_ROOTS
from mechasandbox.domain.policy import FilesystemPolicy, NetworkMode, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.network.environment import proxy_environment
from mechasandbox.runner.spec import ChildHook

# The child-side hooks: `isolate` depends on the policy alone, so a warm child of the spawn
# helper applies it before the run is asked for; `restrict_self` reads the file system
# (rules' paths, carved directories) and so runs once the run has come.
REHEARSAL_TARGET = "mechasandbox.backends.linux.landlock_hook:rehearse"

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
HOME_PLACEHOLDER = "<per-run home dir>"


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
    their residual rights. `required`: a path the run itself needs (the workspace, its
    TMPDIR and HOME), shown as such by `policy`; the child skips any rule whose path it
    cannot reach, required or not (a rule that grants nothing: `landlock_hook._NOT_THERE`),
    and the run's own set-up fails first where a required one is missing (its `chdir`)."""

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
    # `PATH` entries left out: nothing in them may run (see `runnable_path`).
    unreachable_path: tuple[str, ...] = ()

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

    def readable_trees(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The trees the rules let the command read, and those inside them they hide
        (exclusions left without read): for looking the command up (`lookup.tree_view`)."""
        readable = tuple(rule.path for rule in self.rules if rule.access & FS_READ_FILE)
        hidden = tuple(
            path
            for rule in self.rules
            for path, access in rule.exclusions
            if rule.access & FS_READ_FILE and not access & FS_READ_FILE
        )
        return readable, hidden

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
    if carve_protected and denials.protected:
        # Landlock grants a path every right of every rule on its way up: the workspace's
        # carving holds only if each rule above it that grants more than reading carves
        # the protected paths too (a writable home around the workspace).
        candidates = [_protecting(c, denials.protected) for c in candidates]
        workspace_rule = _protecting(workspace_rule, denials.protected)
    handled_fs = handled_fs_for(abi)
    head = tuple(r for r in (_handled(c, handled_fs) for c in candidates) if r is not None)
    return denials, head, _handled(workspace_rule, handled_fs)


def _protecting(rule: PathRule | None, protected: tuple[str, ...]) -> PathRule | None:
    """`rule`, with the protected paths below it kept read-only when it grants more."""
    if rule is None or not rule.access & ~READ:
        return rule
    extra = tuple((p, READ) for p in protected if _inside(p, rule.path) and p != rule.path)
    if not extra:
        return rule
    return attrs.evolve(rule, exclusions=tuple(sorted(rule.exclusions + extra)))


def compile_landlock_rules(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    *,
    abi: int = 7,
    workspace: str | None = None,
    tmp_dir: str = TMP_PLACEHOLDER,
    home_dir: str | None = None,
    carve_protected: bool = True,
    proxy: tuple[int, str] | None = None,
) -> LandlockRuleset:
    """The ruleset for one run. Pure: no filesystem access, golden-testable.

    `workspace` is the workspace's real path (the request's path when not given);
    `tmp_dir` the per-run private tmp created by the host; `home_dir` the per-run private
    home (writable, the command's HOME unless the policy sets one). `carve_protected`: keep
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
    home_rule = (
        None
        if home_dir is None
        else _handled(denials.rule(home_dir, WRITE, required=True), handled_fs)
    )
    rules = head + tuple(r for r in (tmp_rule, home_rule, workspace_rule) if r is not None)
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
    if home_dir is not None:
        env.setdefault("HOME", home_dir)
    unreachable: tuple[str, ...] = ()
    if "PATH" in env:
        env["PATH"], unreachable = runnable_path(env["PATH"], rules, root)
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
        unreachable_path=unreachable,
    )


def carved_directories(ruleset: LandlockRuleset, workspace: str) -> tuple[str, ...]:
    """The directories of the workspace that keep only read rights (see `expand_rules`):
    each one above a path its rule excludes, the workspace itself first. They take no new
    entry, rename or removal."""
    root = _normal(workspace)
    carved: set[str] = set()
    for rule in ruleset.rules:
        if rule.path != root:
            continue
        for path, _ in rule.exclusions:
            parent = os.path.dirname(path)
            while _inside(parent, root):
                carved.add(parent)
                if parent == root:
                    break
                parent = os.path.dirname(parent)
    return tuple(sorted(carved))


def runnable_path(
    value: str, rules: tuple[PathRule, ...], root: str
) -> tuple[str, tuple[str, ...]]:
    """`PATH` without the directories the ruleset grants no execute right on, and those.

    Landlock leaves the path walk alone: a directory outside every rule can still be
    listed in `PATH` and `stat`ed, though nothing in it may run. A shell then runs the next
    `python3` on `PATH` (`/usr/bin/python3`), while that interpreter looks for itself along
    `PATH`, finds the first one (`~/.pyenv/versions/3.11.7/bin/python3`, which it may not
    read), takes its prefix for its own and fails: `No module named 'encodings'`. Without
    the unreachable entries, both find the same program. Relative entries name the
    workspace (the command's directory) and stay."""
    kept: list[str] = []
    dropped: list[str] = []
    for entry in value.split(os.pathsep):
        directory = _normal(os.path.join(root, entry))
        (kept if _executable_under(directory, rules) else dropped).append(entry)
    return os.pathsep.join(kept), tuple(dropped)


def _executable_under(directory: str, rules: tuple[PathRule, ...]) -> bool:
    """Whether a rule grants execute beneath `directory` (the deepest rule decides: a carved
    exclusion or a denied path inside a grant keeps only its residual rights)."""
    granted = False
    for rule in rules:
        if not _inside(directory, rule.path) or not rule.access & FS_EXECUTE:
            continue
        below = [access for path, access in rule.exclusions if _inside(directory, path)]
        if all(access & FS_EXECUTE for access in below):
            granted = True
    return granted


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
