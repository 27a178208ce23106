"""The pure SBPL compiler: `Policy` -> a Seatbelt profile for `sandbox-exec`.

How the profile is built, and why:

- `(deny default)` first, then only what a command-line toolchain needs.
- **Last match wins** in SBPL: when several rules match an operation, the one written last
  decides. So every allow comes first and every deny (`deny_write`, protected paths,
  `deny_read`) is written at the end, where it overrides the broader allows above it.
- **No path is ever spliced into the profile text.** Every host path (workspace, private
  tmp, readable/writable roots, secrets, protected paths) is passed as a `-D NAME=value`
  parameter and referenced as `(param "NAME")`. A workspace named `a") (allow default) ;`
  therefore stays data: the text depends on how many paths there are, never on what they
  say, and golden tests can check it. The only values written inline are fixed constants
  and the proxy port (an int).
- Seatbelt matches the *real* path of a vnode (`/private/tmp/x`, never `/tmp/x`), so every
  path is resolved with the host's `realpath` before it becomes a parameter; for deny rules
  the unresolved spelling is kept too. `realpath` is injected so the compiler stays pure.
- Renames: `file-write*` on a protected path covers its unlink and rename, but renaming a
  *parent* (`mv .git g; edit g/hooks/…; mv g .git`) touches only the parent's entry. Each
  protected path therefore also denies `file-write-unlink` (unlink and rename away) of its
  ancestors below the workspace, e.g. `.git` itself for `.git/hooks`. The same applies to
  `deny_read` paths inside writable trees, so a secret cannot be moved to a readable name.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.errors import ConfigInvalid, PolicyUnsupported, SandboxError
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.request import RunRequest

Realpath = Callable[[str], str]

# A run's log tag is written into the profile text (it is not a path): a strict alphabet.
LOG_TAG = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Read-only system trees a toolchain needs: binaries, libraries, frameworks, the dyld shared
# cache (under /System/Library and the cryptexes), developer tools, package managers.
# `/System` is not allowed as a whole: `/System/Volumes/Data` is a second view of the
# user's data volume, home directories included.
SYSTEM_READ_SUBPATHS: tuple[str, ...] = (
    "/usr",
    "/bin",
    "/sbin",
    "/System/Library",
    "/System/Cryptexes",
    "/System/Volumes/Preboot/Cryptexes",
    "/System/iOSSupport",
    "/Library/Apple",
    "/Library/Developer",
    "/Library/Frameworks",
    "/Library/Java",
    "/Library/Preferences",
    "/Library/Fonts",
    "/Applications/Xcode.app",
    "/opt",
    "/nix",
    "/private/etc",
    "/private/var/db/timezone",
    "/private/var/db/dyld",
    "/private/var/select",
)

# Single files: `/bin/sh` follows /private/var/select/sh, `xcrun` reads the selected Xcode.
SYSTEM_READ_LITERALS: tuple[str, ...] = (
    "/private/var/db/xcode_select_link",
    "/dev/random",
    "/dev/urandom",
    "/dev/zero",
    "/dev/null",
    "/dev/dtracehelper",
)

# The firmlink-style symlinks every path lookup may cross (`/tmp` -> `private/tmp`).
SYSTEM_METADATA_LITERALS: tuple[str, ...] = ("/", "/etc", "/tmp", "/var", "/private", "/dev")

# sysctls that describe the machine and the OS, and nothing about other users' data.
SYSCTL_PREFIXES: tuple[str, ...] = ("hw.", "machdep.cpu.", "kern.proc.pid.")
SYSCTL_NAMES: tuple[str, ...] = (
    "kern.argmax",
    "kern.boottime",
    "kern.hostname",
    "kern.maxfilesperproc",
    "kern.maxproc",
    "kern.ngroups",
    "kern.osproductversion",
    "kern.osrelease",
    "kern.ostype",
    "kern.osvariant_status",
    "kern.osversion",
    "kern.secure_kernel",
    "kern.usrstack64",
    "kern.version",
    "sysctl.proc_cputype",
    "sysctl.proc_translated",
    "vm.loadavg",
)

# getpwuid/getgrgid (whoami, git, ssh config lookups) and libnotify (timezone changes).
MACH_SERVICES: tuple[str, ...] = (
    "com.apple.system.opendirectoryd.libinfo",
    "com.apple.system.notification_center",
)
# Only where the command may reach the network at all: TLS trust evaluation, and (full
# network only) the system resolver.
MACH_SERVICES_TLS: tuple[str, ...] = ("com.apple.trustd.agent",)
MACH_SERVICES_DNS: tuple[str, ...] = ("com.apple.dnssd.service",)
# The system resolver's socket: getaddrinfo asks mDNSResponder through it (full network only).
MDNS_RESPONDER_SOCKET = "/private/var/run/mDNSResponder"


@attrs.frozen(kw_only=True)
class SbplProfile:
    """A compiled profile: its text (identical for any paths) and its `-D` parameters."""

    text: str
    params: tuple[tuple[str, str], ...]

    def sandbox_exec_args(self) -> tuple[str, ...]:
        """The `sandbox-exec` options before `--`: the profile, then one `-D` per param."""
        return ("-p", self.text, *(f"-D{name}={value}" for name, value in self.params))

    def render(self) -> str:
        """The profile followed by its parameters, for `mechasandbox policy`."""
        lines = [f";   {name} = {value!r}" for name, value in self.params]
        return self.text + "\n; parameters (-D NAME=value):\n" + "\n".join(lines)


class _Params:
    """Allocates `(param "NAME")` references; one name per distinct (kind, path)."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}
        self.values: list[tuple[str, str]] = []

    def fixed(self, name: str, value: str) -> str:
        self._names[(name, value)] = name
        self.values.append((name, value))
        return f'(param "{name}")'

    def ref(self, kind: str, value: str) -> str:
        key = (kind, value)
        name = self._names.get(key)
        if name is None:
            index = self._counts.get(kind, 0)
            self._counts[kind] = index + 1
            name = f"{kind}_{index}"
            self._names[key] = name
            self.values.append((name, value))
        return f'(param "{name}")'


def _invalid(field: str, problem: str) -> ConfigInvalid:
    return ConfigInvalid(problem=problem, field=field)


def _absolute(path: str, host: HostContext, field: str) -> Result[str, ConfigInvalid]:
    expanded = host.expand(path)
    if "\x00" in expanded:
        return Failure(_invalid(field, f"path {path!r} contains a NUL byte"))
    if not posixpath.isabs(expanded):
        return Failure(_invalid(field, f"path {path!r} must be absolute or start with '~'"))
    return Success(posixpath.normpath(expanded))


def _spellings(path: str, realpath: Realpath) -> tuple[str, ...]:
    """The real path first, then the path as written when it differs (deny both)."""
    real = realpath(path)
    return (real,) if real == path else (real, path)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _ancestors_below(path: str, root: str) -> tuple[str, ...]:
    """Directories strictly between `root` and `path` (`root/.git` for `root/.git/hooks`)."""
    result: list[str] = []
    parent = posixpath.dirname(path)
    while parent != path and _within(parent, root) and parent != root:
        result.append(parent)
        path, parent = parent, posixpath.dirname(parent)
    return tuple(reversed(result))


def _ancestors(path: str) -> tuple[str, ...]:
    """Every directory above `path`, from `/` down (for the metadata lookups of traversal)."""
    result: list[str] = []
    parent = posixpath.dirname(path)
    while parent != path:
        result.append(parent)
        path, parent = parent, posixpath.dirname(parent)
    return tuple(reversed(result))


def _collect(
    entries: Iterable[str], host: HostContext, field: str
) -> Result[tuple[str, ...], ConfigInvalid]:
    paths: list[str] = []
    for entry in entries:
        checked = _absolute(entry, host, field)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        paths.append(checked.unwrap())
    return Success(tuple(paths))


def _rule(action: str, operations: str, filters: Iterable[str], tag: str | None = None) -> str:
    """One rule, one filter a line; a deny with a `tag` carries it as its log message."""
    lines = list(filters)
    if lines and tag is not None:
        lines.append(_with_message(tag))
    body = "\n".join(f"  {f}" for f in lines)
    return f"({action} {operations}\n{body})" if body else ""


def _with_message(tag: str) -> str:
    return f'(with message "{tag}")'


@attrs.frozen(kw_only=True)
class _Inputs:
    """The policy's paths, checked, made absolute and resolved against the host."""

    workspace: str
    tmp: str
    readable: tuple[str, ...]
    writable: tuple[str, ...]
    deny_read: tuple[str, ...]
    deny_write: tuple[str, ...]
    protected: tuple[str, ...]
    unix_sockets: tuple[str, ...] = ()  # every spelling Seatbelt may match, see _socket_spellings

    @property
    def writable_roots(self) -> tuple[str, ...]:
        return (self.workspace, self.tmp, *self.writable)


def _inputs(
    request: RunRequest, policy: Policy, host: HostContext, tmpdir: str, realpath: Realpath
) -> Result[_Inputs, SandboxError]:
    fs = policy.filesystem
    checked = [
        _collect((request.workspace,), host, "workspace"),
        _collect((tmpdir,), host, "tmpdir"),
        _collect(fs.readable, host, "filesystem.readable"),
        _collect(fs.writable, host, "filesystem.writable"),
        _collect(fs.deny_read, host, "filesystem.deny_read"),
        _collect(fs.deny_write, host, "filesystem.deny_write"),
        _collect(policy.network.allow_unix_sockets, host, "network.allow_unix_sockets"),
    ]
    failed = next((c for c in checked if isinstance(c, Failure)), None)
    if failed is not None:
        return Failure(failed.failure())
    if any("\x00" in entry for entry in fs.protected):
        return Failure(_invalid("filesystem.protected", "a protected path contains a NUL byte"))
    (workspace,), (tmp,), readable, writable, deny_read, deny_write, sockets = (
        c.unwrap() for c in checked
    )
    real_workspace = realpath(workspace)
    writable_roots = (real_workspace, realpath(tmp), *(realpath(p) for p in writable))
    protected = (
        posixpath.normpath(posixpath.join(real_workspace, host.expand(entry)))
        for entry in fs.protected
    )
    return Success(
        _Inputs(
            workspace=real_workspace,
            tmp=realpath(tmp),
            readable=tuple(realpath(p) for p in readable),
            writable=tuple(realpath(p) for p in writable),
            deny_read=_dedupe(s for p in deny_read for s in _spellings(p, realpath)),
            deny_write=_dedupe(s for p in deny_write for s in _spellings(p, realpath)),
            protected=_dedupe(s for p in protected for s in _spellings(p, realpath)),
            unix_sockets=_dedupe(
                s for p in sockets for s in _socket_spellings(p, realpath, writable_roots)
            ),
        )
    )


def _socket_spellings(
    path: str, realpath: Realpath, writable_roots: tuple[str, ...]
) -> tuple[str, ...]:
    """Where a named socket may be connected to. Seatbelt matches the path the kernel
    resolved: its directory's real path with the name, and where the name is a link (the
    user's own, outside what the command can write) what it points to. A name the command
    could replace (in the workspace, the private tmp or a writable path) is never followed:
    a link planted there to docker.sock must not be allowed by the name."""
    named = posixpath.join(realpath(posixpath.dirname(path)), posixpath.basename(path))
    if any(_within(named, root) for root in writable_roots):
        return (named,)
    return _dedupe((named, realpath(path)))


def _base_rules(tag: str | None) -> list[str]:
    """What every run gets, independent of the policy: processes, system facts, system trees."""
    default = "(deny default)" if tag is None else f"(deny default {_with_message(tag)})"
    return [
        "(version 1)",
        "; Everything not allowed below is denied"
        + ("." if tag is None else " (denials are logged with the run's tag)."),
        default,
        "",
        "; Processes: run and fork freely (children inherit this profile); signal and",
        "; inspect only processes inside this sandbox.",
        "(allow process-exec)",
        "(allow process-fork)",
        "(allow signal (target same-sandbox))",
        "(allow process-info* (target same-sandbox))",
        "",
        "; Machine and OS facts that runtimes query at start-up.",
        _rule(
            "allow",
            "sysctl-read",
            [f'(sysctl-name "{n}")' for n in SYSCTL_NAMES]
            + [f'(sysctl-name-prefix "{p}")' for p in SYSCTL_PREFIXES],
        ),
        _rule("allow", "mach-lookup", [f'(global-name "{s}")' for s in MACH_SERVICES]),
        "; POSIX semaphores (Python multiprocessing locks).",
        "(allow ipc-posix-sem)",
        "; Pseudo-terminals the command opens itself; never the user's terminals.",
        "(allow pseudo-tty)",
        '(allow file-read* file-write* file-ioctl (literal "/dev/ptmx"))',
        "(allow file-read* file-write* file-ioctl",
        '  (require-all (regex #"^/dev/ttys[0-9]+$") (extension "com.apple.sandbox.pty")))',
        "",
        "; System trees, read-only (and mappable as code: dylibs, frameworks).",
        _rule(
            "allow",
            "file-read* file-map-executable",
            [f'(subpath "{p}")' for p in SYSTEM_READ_SUBPATHS],
        ),
        _rule("allow", "file-read*", [f'(literal "{p}")' for p in SYSTEM_READ_LITERALS]),
        '(allow file-write-data (literal "/dev/null") (literal "/dev/zero"))',
        '(allow file-read* file-write-data (subpath "/dev/fd"))',
        _rule(
            "allow", "file-read-metadata", [f'(literal "{p}")' for p in SYSTEM_METADATA_LITERALS]
        ),
    ]


def _tree_rules(inputs: _Inputs, params: _Params) -> list[str]:
    """The workspace, the private TMPDIR, the policy's extra trees, and their ancestors."""
    ws = params.fixed("WORKSPACE", inputs.workspace)
    tmp = params.fixed("TMPDIR", inputs.tmp)
    rules = [
        "",
        "; The workspace and the run's private TMPDIR: read, write, map.",
        "(allow file-read* file-write* file-map-executable",
        f"  (subpath {ws})",
        f"  (subpath {tmp}))",
    ]
    if inputs.readable:
        rules += [
            "; Extra read-only paths of the policy.",
            _rule(
                "allow",
                "file-read* file-map-executable",
                [f"(subpath {params.ref('READABLE', p)})" for p in inputs.readable],
            ),
        ]
    if inputs.writable:
        rules += [
            "; Extra writable paths of the policy.",
            _rule(
                "allow",
                "file-read* file-write* file-map-executable",
                [f"(subpath {params.ref('WRITABLE', p)})" for p in inputs.writable],
            ),
        ]
    roots = (*inputs.writable_roots, *inputs.readable)
    ancestors = sorted({a for root in roots for a in _ancestors(root)})
    ancestors = [a for a in ancestors if a not in SYSTEM_METADATA_LITERALS]
    if ancestors:
        rules += [
            "; stat() of the directories above the allowed trees (getcwd, realpath), but",
            "; not their listing or contents.",
            _rule(
                "allow",
                "file-read-metadata",
                [f"(literal {params.ref('ANCESTOR', a)})" for a in ancestors],
            ),
        ]
    return rules


def _unix_socket_rules(inputs: _Inputs, params: _Params) -> list[str]:
    """The host unix sockets the policy names, in every network mode: connect only."""
    if not inputs.unix_sockets:
        return []
    return [
        "",
        "; Host unix sockets the policy names, and no other: connect only.",
        "(allow system-socket (socket-domain AF_UNIX))",
        _rule(
            "allow",
            "network-outbound",
            [
                f"(remote unix-socket (path-literal {params.ref('UNIX_SOCKET', p)}))"
                for p in inputs.unix_sockets
            ],
        ),
    ]


def _network_rules(mode: NetworkMode, proxy_port: int | None) -> list[str]:
    if mode is NetworkMode.NONE:
        return ["", "; Network: none. No network rule at all: every socket is denied."]
    if mode is NetworkMode.ALLOWLIST:
        return [
            "",
            "; Network: allowlist. Only the allowlist proxy on loopback; it decides per host.",
            f'(allow network-outbound (remote ip "localhost:{proxy_port}"))',
            _rule("allow", "mach-lookup", [f'(global-name "{s}")' for s in MACH_SERVICES_TLS]),
        ]
    return [
        "",
        "; Network: full. The internet, over IP; not the host's unix sockets (docker.sock,",
        "; the ssh agent, the session's services are host control), but the resolver's.",
        '(allow network-outbound (remote ip "*:*"))',
        '(allow network-inbound (local ip "*:*"))',
        '(allow network-bind (local ip "*:*"))',
        f'(allow network-outbound (remote unix-socket (path-literal "{MDNS_RESPONDER_SOCKET}")))',
        "(allow system-socket)",
        _rule(
            "allow",
            "mach-lookup",
            [f'(global-name "{s}")' for s in MACH_SERVICES_TLS + MACH_SERVICES_DNS],
        ),
    ]


def _within_writable(paths: Iterable[str], inputs: _Inputs, *, itself: bool) -> tuple[str, ...]:
    """Directories that must not be renamed away: each path's ancestors below the writable
    root holding it (and the path itself when `itself`)."""
    return _dedupe(
        a
        for p in paths
        for root in inputs.writable_roots
        if _within(p, root)
        for a in (*_ancestors_below(p, root), *((p,) if itself else ()))
    )


def _deny_rules(inputs: _Inputs, params: _Params, tag: str | None) -> list[str]:
    """Denies, written after every allow so that they win (last match wins)."""
    rules: list[str] = []
    if inputs.deny_write:
        rules += [
            "",
            "; deny_write: never writable, whatever allowed it above.",
            _rule(
                "deny",
                "file-write*",
                [f"(subpath {params.ref('DENY_WRITE', p)})" for p in inputs.deny_write],
                tag,
            ),
        ]
    if inputs.protected:
        refs = [params.ref("PROTECTED", p) for p in inputs.protected]
        keep = _within_writable(inputs.protected, inputs, itself=False)
        rules += [
            "",
            "; Protected paths (their content runs later, outside the sandbox): no write,",
            "; create, unlink or rename of the path or anything under it ...",
            _rule(
                "deny",
                "file-write*",
                [f for r in refs for f in (f"(literal {r})", f"(subpath {r})")],
                tag,
            ),
        ]
        if keep:
            rules += [
                "; ... and their parents cannot be renamed away (mv .git g; edit; mv g .git).",
                _rule(
                    "deny",
                    "file-write-unlink",
                    [f"(literal {params.ref('KEEP', a)})" for a in keep],
                    tag,
                ),
            ]
    if inputs.deny_read:
        refs = [params.ref("DENY_READ", p) for p in inputs.deny_read]
        movable = _within_writable(inputs.deny_read, inputs, itself=True)
        rules += [
            "",
            "; deny_read: secrets stay unreadable even inside allowed trees (written last so",
            "; they win), and cannot be renamed to a readable name.",
            _rule("deny", "file-read*", [f"(subpath {r})" for r in refs], tag),
        ]
        if movable:
            rules.append(
                _rule(
                    "deny",
                    "file-write-unlink",
                    [f"(literal {params.ref('KEEP', a)})" for a in movable],
                    tag,
                )
            )
    return rules


def compile_profile(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    *,
    tmpdir: str,
    realpath: Realpath,
    proxy_port: int | None = None,
    log_tag: str | None = None,
) -> Result[SbplProfile, SandboxError]:
    """Compile `policy` for `request` into an SBPL profile and its parameters.

    `tmpdir` is the run's private temporary directory (the command's `TMPDIR`),
    `realpath` resolves host symlinks, `proxy_port` is the loopback port of the network
    allowlist proxy (required when the policy's network mode is `allowlist`: without the
    proxy there is nothing to allow, and the run is refused rather than silently offline).
    """
    mode = policy.network.mode
    if log_tag is not None and not LOG_TAG.fullmatch(log_tag):
        return Failure(_invalid("log_tag", f"log tag {log_tag!r} must match {LOG_TAG.pattern}"))
    if mode is NetworkMode.ALLOWLIST and proxy_port is None:
        return Failure(
            PolicyUnsupported(backend="seatbelt", missing=(Protection.NETWORK_ALLOWLIST,))
        )
    if proxy_port is not None and not 0 < proxy_port < 65536:
        return Failure(_invalid("network.proxy_port", f"port {proxy_port} is out of range"))

    def build(inputs: _Inputs) -> SbplProfile:
        params = _Params()
        sections = [
            *_base_rules(log_tag),
            *_tree_rules(inputs, params),
            *_network_rules(mode, proxy_port),
            *_unix_socket_rules(inputs, params),
            *_deny_rules(inputs, params, log_tag),
        ]
        return SbplProfile(text="\n".join(sections) + "\n", params=tuple(params.values))

    return _inputs(request, policy, host, tmpdir, realpath).map(build)


def _dedupe(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))
