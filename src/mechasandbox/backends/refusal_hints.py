"""Hints that name the option a refused run needed: a command the sandbox cannot see
(`spawn_failed`), and a run that failed for want of the network it does not have; and
`explained`, which adds them and the filesystem refusals (`refusals`) to a run's outcome.

Both read what the host knows after the fact: the host's own `PATH` (where the command is
outside the sandbox), and the command's stderr (a resolver's or a socket's error). Neither
changes what ran; a hint is only ever added to a result or an error.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.refusals import (
    RefusalView,
    filesystem_violations,
    may_report_refusals,
)
from mechasandbox.domain.errors import SandboxError, SpawnFailed
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.result import RunResult, Violation

# What resolvers, sockets and the common clients (pip, curl, git, npm, cargo, go) print
# when there is no network: the sandbox's own loopback answers nothing else, DNS included.
_OFFLINE = re.compile(
    r"temporary failure in name resolution|name or service not known|could not resolve"
    r"|no address associated with hostname|nodename nor servname|network is unreachable"
    r"|address family not supported|failed to establish a new connection"
    r"|NameResolutionError|EAI_AGAIN|ENOTFOUND|ENETUNREACH|dial tcp: lookup",
    re.IGNORECASE,
)
_HOSTS = (
    re.compile(r"host='([A-Za-z0-9.-]+)'"),
    re.compile(r"[Cc]ould not resolve host:? '?([A-Za-z0-9.-]+)"),
    re.compile(r"getaddrinfo \w+ ([A-Za-z0-9.-]+)"),
    re.compile(r"https?://([A-Za-z0-9.-]+\.[A-Za-z]{2,})"),
    re.compile(r"lookup ([A-Za-z0-9.-]+\.[A-Za-z]{2,})"),
)
# A refused connection to a loopback address: under network `none` the sandbox's loopback
# is its own (or closed), so a service listening on the host's is not there.
_LOOPBACK_REFUSED = re.compile(r"connection refused|ECONNREFUSED", re.IGNORECASE)
_LOOPBACK_PORT = re.compile(
    r"(?:localhost|127(?:\.\d{1,3}){3}|\[?::1\]?)(?::| port )(\d{1,5})\b", re.IGNORECASE
)
# A host that is reached only together with another one.
_COMPANIONS = {"pypi.org": ("files.pythonhosted.org",)}
# pip names only the index's path when it retries (`...': /simple/requests/`).
_PIP_INDEX = re.compile(r"': /simple/[\w.-]+/")
_MAX_HOSTS = 4


def offline_violation(result: RunResult, policy: Policy) -> Violation | None:
    """For a run that failed under network `none` with a resolver's or a socket's error on
    its stderr: the refusal, and the options that would have let it through."""
    if policy.network.mode is not NetworkMode.NONE or result.exit_code == 0:
        return None
    text = result.stderr.decode(errors="replace")
    found = _OFFLINE.search(text)
    if found is None:
        return _loopback_violation(text)
    hosts: list[str] = ["pypi.org"] if _PIP_INDEX.search(text) else []
    for pattern in _HOSTS:
        hosts.extend(h for h in pattern.findall(text) if h not in ("localhost", "127.0.0.1"))
    hosts = [more for host in hosts for more in (host, *_COMPANIONS.get(host, ()))]
    hosts = [h for i, h in enumerate(hosts) if h not in hosts[:i]][:_MAX_HOSTS]
    domains = " ".join(f"--allow-domain {host}" for host in hosts) or "--allow-domain HOST"
    seen = f" ({', '.join(hosts)})" if hosts else ""
    return Violation(
        kind="network",
        detail=f"the command needed the network{seen} and this run has none "
        f'("{found.group(0)}"): network = "none". Allow what it needs with '
        f'--network allowlist {domains} (network.mode = "allowlist", network.allow)',
    )


def _loopback_violation(text: str) -> Violation | None:
    """A refused connection to loopback under network `none`: what the host listens on
    there is not the sandbox's, and the one way to reach it (through the proxy, an HTTP
    client's only) names the address explicitly."""
    refused = _LOOPBACK_REFUSED.search(text)
    if refused is None:
        return None
    port = _LOOPBACK_PORT.search(text)
    address = f"127.0.0.1:{port.group(1)}" if port else "127.0.0.1:PORT"
    return Violation(
        kind="network",
        detail=f'a connection was refused ("{refused.group(0)}") and this run has no '
        'network: network = "none" gives the command a loopback of its own (or none), so '
        "services listening on the host's localhost are not reachable from it. Start the "
        "service inside the run, or let an HTTP client through the proxy to that one "
        f"address: --network allowlist --allow-domain {address}",
    )


def spawn_hint(error: SpawnFailed, host: HostContext, view: RefusalView) -> SpawnFailed:
    """`error` with the option that would show the command to the sandbox, when the host
    finds it where the sandbox does not look (a toolchain in the home directory)."""
    found = _on_host(error.command, host, view.workspace)
    if found is None or _visible(found, view):
        return error
    root = _toolchain_root(found, host.home)
    shown = _tilde(root, host.home)
    hint = f"allow reading it with --allow-read {shown} (filesystem.readable)"
    if found not in error.reason:
        hint = f"on the host it is {found}, which the sandbox cannot see: {hint}"
    return attrs.evolve(error, reason=f"{error.reason}; {hint}")


def _on_host(command: str, host: HostContext, workspace: str) -> str | None:
    if os.sep in command:
        path = command if os.path.isabs(command) else os.path.join(workspace, command)
        return path if os.path.exists(path) else None
    return shutil.which(command, path=dict(host.env).get("PATH", ""))


def _visible(path: str, view: RefusalView) -> bool:
    """Whether the sandbox shows `path` and what it leads to (pyenv's shims are scripts
    under the same root; a `~/.local/bin` entry is a link to a tool's own tree)."""
    places = (*view.readable, *view.writable)
    real = os.path.realpath(path)
    return all(
        any(_inside(p, place) for place in places)
        and not any(_inside(p, denied) for denied, _ in view.deny_read)
        for p in (os.path.normpath(path), real)
    )


def _toolchain_root(path: str, home: str) -> str:
    """The tree to allow for `path`: under the home directory, its first directory there
    (`~/.pyenv`, `~/.cargo`, `~/.nvm`), or its first two under `~/.local` and `~/.config`
    (`~/.local/bin`); elsewhere the directory above a `bin` (`/opt/tool`)."""
    home = os.path.normpath(home)
    absolute = os.path.normpath(path)
    if _inside(absolute, home) and absolute != home:
        parts = os.path.relpath(absolute, home).split(os.sep)
        depth = 2 if parts[0] in (".local", ".config") and len(parts) > 2 else 1
        return os.path.join(home, *parts[:depth])
    directory = os.path.dirname(absolute)
    return os.path.dirname(directory) if os.path.basename(directory) == "bin" else directory


def _tilde(path: str, home: str) -> str:
    home = os.path.normpath(home)
    return "~" + path[len(home) :] if _inside(path, home) and path != home else path


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def explained(
    result: Result[RunResult, SandboxError],
    view_of: Callable[[], RefusalView],
    policy: Policy,
    host: HostContext,
) -> Result[RunResult, SandboxError]:
    """`result` with its refusals explained: a command the sandbox could not see gets the
    option that shows it; a completed run, the filesystem refusals it reported (see
    `refusals`) and the network it lacked, as violations. `view_of` gives the run's view,
    asked only when there is something to explain: most runs cost a search of their
    stderr."""
    if isinstance(result, Failure):
        error = result.failure()
        if not isinstance(error, SpawnFailed):
            return result
        return Failure(spawn_hint(error, host, view_of()))
    finished = result.unwrap()
    offline = offline_violation(finished, policy)
    found: tuple[Violation, ...] = ()
    if may_report_refusals(finished.stderr):
        found = filesystem_violations(finished, view_of())
    more = (*found, *(() if offline is None else (offline,)))
    if not more:
        return result
    return Success(attrs.evolve(finished, violations=finished.violations + more))
