"""The pure SBPL compiler: `Policy` -> a Seatbelt profile for `sandbox-exec`.

How the profile is built, and why:

- `(deny default)` first, then only what a command-line toolchain needs: the fixed
  allowances of `platform` (each with its reason and the peer that grants it), the
  selected Xcode at its real path (a parameter), the policy's trees.
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
- Git's and husky's places below the workspace's root (nested repositories, submodules,
  worktrees) are denied by path-free regexes scoped to the writable roots' parameters.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.macos import platform
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.errors import ConfigInvalid, PolicyUnsupported, SandboxError
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.request import RunRequest

Realpath = Callable[[str], str]

# A run's log tag is written into the profile text (it is not a path): a strict alphabet.
LOG_TAG = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        if (name, value) not in self._names:
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
    developer: tuple[str, ...] = ()  # the Xcode bundles, real paths (`platform.developer_roots`)

    @property
    def writable_roots(self) -> tuple[str, ...]:
        return (self.workspace, self.tmp, *self.writable)


def _inputs(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    tmpdir: str,
    realpath: Realpath,
    developer: tuple[str, ...],
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
            developer=_dedupe(developer),
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
    """What every run gets, independent of the policy: processes, system facts, system
    trees (the fixed allowances of `platform`, where each one's reason is written)."""
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
        "; Machine, OS and process-table facts that runtimes query (never another",
        "; process's arguments: kern.procargs2 stays denied).",
        _rule(
            "allow",
            "sysctl-read",
            [f'(sysctl-name "{n}")' for n in platform.SYSCTL_NAMES]
            + [f'(sysctl-name-prefix "{p}")' for p in platform.SYSCTL_PREFIXES],
        ),
        "; Java reads the CPU grade through a sysctl write; nothing else is written.",
        _rule(
            "allow",
            "sysctl-write",
            [f'(sysctl-name "{n}")' for n in platform.SYSCTL_WRITE_NAMES],
        ),
        "; User and group lookups, notifications, the per-user directories, preferences.",
        _rule(
            "allow",
            "mach-lookup",
            [f'(global-name "{s}")' for s in platform.MACH_SERVICES]
            + [f'(local-name "{s}")' for s in platform.MACH_LOCAL_SERVICES],
        ),
        "(allow user-preference-read)",
        "; POSIX semaphores (Python multiprocessing locks); shared memory by name only: the",
        "; daemons' published segments (read), the command's own Python and OpenMP ones.",
        "(allow ipc-posix-sem)",
        _rule(
            "allow",
            "ipc-posix-shm-read-data ipc-posix-shm-read-metadata",
            [f'(ipc-posix-name-prefix "{p}")' for p in platform.SHM_READ_PREFIXES]
            + [f'(ipc-posix-name "{n}")' for n in platform.SHM_READ_NAMES],
        ),
        "(allow ipc-posix-shm-read-data ipc-posix-shm-read-metadata ipc-posix-shm-write-create",
        "  ipc-posix-shm-write-data ipc-posix-shm-write-unlink",
        f'  (ipc-posix-name-regex #"{platform.SHM_OWN_REGEX}"))',
        "; Pseudo-terminals the command opens itself; never the user's terminals.",
        "(allow pseudo-tty)",
        '(allow file-read* file-write* file-ioctl (literal "/dev/ptmx"))',
        "(allow file-read* file-write* file-ioctl",
        f'  (require-all (regex #"{platform.TTY_REGEX}") (extension "com.apple.sandbox.pty")))',
        "",
        "; System trees, read-only (and mappable as code: dylibs, frameworks).",
        _rule(
            "allow",
            "file-read* file-map-executable",
            [f'(subpath "{p}")' for p in platform.SYSTEM_READ_SUBPATHS],
        ),
        _rule("allow", "file-read*", [f'(literal "{p}")' for p in platform.SYSTEM_READ_LITERALS]),
        '(allow file-write-data (literal "/dev/null") (literal "/dev/zero"))',
        '(allow file-read* file-write-data (subpath "/dev/fd"))',
        "; dtrace's helper: runtimes with USDT probes (node, python, the JVM) register them.",
        f'(allow file-read* file-write-data file-ioctl (literal "{platform.DTRACE_HELPER}"))',
        _rule(
            "allow",
            "file-read-metadata",
            [f'(literal "{p}")' for p in platform.SYSTEM_METADATA_LITERALS],
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
    if inputs.developer:
        rules += [
            "; The selected Xcode, at its real path (xcrun shims: git, clang, make, python3).",
            _rule(
                "allow",
                "file-read* file-map-executable",
                [f"(subpath {params.ref('DEVELOPER', p)})" for p in inputs.developer],
            ),
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
    ancestors = [a for a in ancestors if a not in platform.SYSTEM_METADATA_LITERALS]
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
    services = platform.MACH_SERVICES_TLS
    tls = _rule("allow", "mach-lookup", [f'(global-name "{s}")' for s in services])
    if mode is NetworkMode.NONE:
        return [
            "",
            "; Network: none. No network rule at all: every socket is denied, loopback too",
            "; (the command's own servers included), and no TLS or DNS service.",
        ]
    if mode is NetworkMode.ALLOWLIST:
        return [
            "",
            "; Network: allowlist. Only the allowlist proxy on loopback; it decides per host.",
            f'(allow network-outbound (remote ip "localhost:{proxy_port}"))',
            "; Certificate trust and network configuration for TLS clients (trustd and ocspd",
            "; may fetch OCSP/CRL responses themselves, outside the proxy).",
            tls,
        ]
    dns = [f'(global-name "{s}")' for s in platform.MACH_SERVICES_DNS]
    return [
        "",
        "; Network: full. The internet, over IP; not the host's unix sockets (docker.sock,",
        "; the ssh agent, the session's services are host control), but the resolver's.",
        '(allow network-outbound (remote ip "*:*"))',
        '(allow network-inbound (local ip "*:*"))',
        '(allow network-bind (local ip "*:*"))',
        "(allow network-outbound (remote unix-socket (path-literal "
        f'"{platform.MDNS_RESPONDER_SOCKET}")))',
        "(allow system-socket)",
        tls,
        _rule("allow", "mach-lookup", dns),
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


def _protected_name_rules(inputs: _Inputs, params: _Params, tag: str | None) -> list[str]:
    """Git's and husky's places at any depth of the workspace and the writable paths (not
    the private TMPDIR, removed with the run), by path-free regexes (`platform`)."""
    roots = [params.fixed("WORKSPACE", inputs.workspace)] + [
        params.ref("WRITABLE", p) for p in inputs.writable
    ]
    within = " ".join(f"(subpath {r})" for r in roots)
    where = within if len(roots) == 1 else f"(require-any {within})"

    def scoped(regexes: Iterable[str]) -> str:
        names = " ".join(f'(regex #"{r}")' for r in regexes)
        return f"(require-all {where} (require-any {names}))"

    return [
        "",
        "; Nested repositories, submodules, worktrees and husky: their hooks and config run",
        "; on the host later. Denied at any depth, in any letter case, and their",
        "; directories cannot be renamed away and back.",
        _rule("deny", "file-write*", [scoped(platform.PROTECTED_NAME_REGEXES)], tag),
        _rule("deny", "file-write-unlink", [scoped((platform.KEEP_NAME_REGEX,))], tag),
    ]


def _deny_rules(inputs: _Inputs, params: _Params, tag: str | None) -> list[str]:
    """Denies, written after every allow so that they win (last match wins)."""
    rules: list[str] = []
    if inputs.deny_write:
        refs = [params.ref("DENY_WRITE", p) for p in inputs.deny_write]
        rules += [
            "",
            "; deny_write: never writable, whatever allowed it above; the path itself too",
            "; (subpath alone would let the command create it when it is missing).",
            _rule(
                "deny",
                "file-write*",
                [f for r in refs for f in (f"(literal {r})", f"(subpath {r})")],
                tag,
            ),
        ]
    rules += _protected_name_rules(inputs, params, tag)
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
    developer: tuple[str, ...] = (),
) -> Result[SbplProfile, SandboxError]:
    """Compile `policy` for `request` into an SBPL profile and its parameters.

    `tmpdir` is the run's private temporary directory (the command's `TMPDIR`),
    `realpath` resolves host symlinks, `proxy_port` is the loopback port of the network
    allowlist proxy (required when the policy's network mode is `allowlist`: without the
    proxy there is nothing to allow, and the run is refused rather than silently offline).
    `developer`: the selected Xcode bundles, real paths (`platform.developer_roots`).
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

    return _inputs(request, policy, host, tmpdir, realpath, developer).map(build)


def _dedupe(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))
