"""The project rule: a file that ships with a repository may only narrow the user's policy.

A repository is written by whoever wrote the code the agent works on, possibly an attacker.
Its `.mechasandbox.toml` (or `.openagents/project.json`) may tighten what the user allows —
deny more, limit more, cut the network — but never loosen it. Anything that would loosen it
is refused with `ConfigInvalid` naming the file and key, rather than silently dropped, so the
author of the project file learns why their setting has no effect.

The check compares the merged result with the policy it narrows, field by field; it is pure
(no file system access, no `~` expansion), so a path is compared as written, after
normalisation, and a `~` path is never considered to be inside the workspace.
"""

from __future__ import annotations

import os.path
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.config.overlay import LIMIT_FIELDS, BackendChoice, apply_settings
from mechasandbox.config.schema import BackendName, BackendSettings, Settings
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Enforcement, HostProcesses, NetworkMode, Policy

_ADVICE = (
    " (a project file may only narrow the user's policy; put wider settings in the user "
    "configuration, a --config file or a command-line option)"
)
_NETWORK_RANK = {NetworkMode.NONE: 0, NetworkMode.ALLOWLIST: 1, NetworkMode.FULL: 2}
_ENFORCEMENT_RANK = {Enforcement.STRICT: 0, Enforcement.BEST_EFFORT: 1}
# Backends that confine neither the file system nor the network: choosing one is never
# a narrowing, whatever the policy says.
_UNCONFINED = frozenset({BackendName.NONE, BackendName.PROCESS})


@attrs.frozen(kw_only=True)
class _Widening:
    field: str
    detail: str


def _norm(path: str, workspace: str) -> str:
    """Comparable spelling: `~` kept literal, relative paths taken from the workspace."""
    if path.startswith("~"):
        head, sep, rest = path.partition("/")
        return head + (sep + os.path.normpath(rest) if rest else "")
    return os.path.normpath(os.path.join(workspace, path))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _covered(path: str, roots: Iterable[str], workspace: str) -> bool:
    normal = _norm(path, workspace)
    return any(_under(normal, _norm(root, workspace)) for root in roots)


def _split_pattern(pattern: str) -> tuple[str, str | None]:
    """`host[:port]` or `[v6]:port`, lower-cased host, no trailing dot."""
    text = pattern.strip().lower()
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    return host.rstrip("."), port or None


def pattern_covers(wider: str, narrower: str) -> bool:
    """Whether every destination `narrower` matches is also matched by `wider`.

    `*.example.com` covers `api.example.com` and `*.api.example.com` but not
    `example.com`; a pattern without a port covers every port of its host.
    """
    wide_host, wide_port = _split_pattern(wider)
    host, port = _split_pattern(narrower)
    if wide_port is not None and wide_port != port:
        return False
    if wide_host == host:
        return True
    if wide_host.startswith("*."):
        return host.endswith(wide_host[1:])
    return False


def _check_paths(base: Policy, new: Policy, workspace: str) -> _Widening | None:
    old_fs, new_fs = base.filesystem, new.filesystem
    for entry in new_fs.readable:
        if not _covered(entry, (workspace, *old_fs.readable), workspace):
            return _Widening(
                field="filesystem.readable",
                detail=f"{entry!r} is outside the workspace and not readable under the "
                "policy it narrows",
            )
    for entry in new_fs.writable:
        if not _covered(entry, old_fs.writable, workspace):
            return _Widening(
                field="filesystem.writable",
                detail=f"{entry!r} is not writable under the policy it narrows",
            )
    denials: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
        ("deny_read", old_fs.deny_read, new_fs.deny_read),
        ("deny_write", old_fs.deny_write, new_fs.deny_write),
        ("protected", old_fs.protected, new_fs.protected),
    )
    for key, old, new_entries in denials:
        for entry in old:
            if not _covered(entry, new_entries, workspace):
                return _Widening(
                    field=f"filesystem.{key}",
                    detail=f"drops {entry!r}, which the policy it narrows lists; "
                    "add entries, but keep the inherited ones",
                )
    return None


def _check_network(base: Policy, new: Policy) -> _Widening | None:
    old_net, new_net = base.network, new.network
    if _NETWORK_RANK[new_net.mode] > _NETWORK_RANK[old_net.mode]:
        return _Widening(
            field="network.mode",
            detail=f"network mode {new_net.mode.value!r} is wider than the inherited "
            f"{old_net.mode.value!r}",
        )
    if old_net.mode is not NetworkMode.FULL:
        for pattern in new_net.allow:
            if not any(pattern_covers(allowed, pattern) for allowed in old_net.allow):
                return _Widening(
                    field="network.allow",
                    detail=f"{pattern!r} is not allowed by the inherited allowlist",
                )
    for pattern in old_net.deny:
        if not any(pattern_covers(denied, pattern) for denied in new_net.deny):
            return _Widening(
                field="network.deny",
                detail=f"drops {pattern!r}, which the policy it narrows denies",
            )
    # A unix socket is host control (docker.sock runs anything as root): a project may keep
    # or drop the user's names, never add one, whatever the network mode. Compared as
    # written (normalised): a different spelling of a named socket is not the same name.
    named = {os.path.normpath(path) for path in old_net.allow_unix_sockets}
    for path in new_net.allow_unix_sockets:
        if os.path.normpath(path) not in named:
            return _Widening(
                field="network.allow_unix_sockets",
                detail=f"{path!r} is not a unix socket the inherited policy names",
            )
    return None


def _check_limits(base: Policy, new: Policy) -> _Widening | None:
    for key, (attribute, show) in LIMIT_FIELDS.items():
        old_value: float | None = getattr(base.limits, attribute)
        new_value: float | None = getattr(new.limits, attribute)
        if old_value is None or new_value == old_value:
            continue
        if new_value is None:
            return _Widening(
                field=f"limits.{key}",
                detail=f"removes the inherited limit of {show(old_value)}",
            )
        if new_value > old_value:
            return _Widening(
                field=f"limits.{key}",
                detail=f"{show(new_value)} is above the inherited {show(old_value)}",
            )
    return None


def _check_environment(base: Policy, new: Policy) -> _Widening | None:
    old_env, new_env = base.environment, new.environment
    for name in new_env.allow:
        if name not in old_env.allow:
            return _Widening(
                field="environment.allow",
                detail=f"{name!r} is not in the inherited allow list",
            )
    for name in new_env.pass_through:
        if name not in old_env.allow and name not in old_env.pass_through:
            return _Widening(
                field="environment.pass",
                detail=f"passes the host's {name!r}, which the policy it narrows does not",
            )
    new_set = dict(new_env.set)
    for name, value in old_env.set:
        if new_set.get(name) != value:
            return _Widening(
                field="environment.set",
                detail=f"changes {name}, which the policy it narrows sets",
            )
    return None


def _check_enforcement(base: Policy, new: Policy) -> _Widening | None:
    if _ENFORCEMENT_RANK[new.enforcement] > _ENFORCEMENT_RANK[base.enforcement]:
        return _Widening(
            field="enforcement",
            detail=f"{new.enforcement.value!r} is weaker than the inherited "
            f"{base.enforcement.value!r}",
        )
    return None


def _check_host_processes(base: Policy, new: Policy) -> _Widening | None:
    if base.host_processes is HostProcesses.HIDDEN and new.host_processes is HostProcesses.VISIBLE:
        return _Widening(
            field="host_processes",
            detail="'visible' is weaker than the inherited 'hidden'",
        )
    return None


def narrow(
    base: Policy, project: Settings, source: str, *, workspace: str
) -> Result[Policy, ConfigInvalid]:
    """`base` narrowed by a project layer, or `ConfigInvalid` if the layer would widen it.

    `workspace` is the absolute workspace path: readable entries inside it add nothing,
    since the command reads its workspace anyway, so a project may list them.
    """
    merged = apply_settings(base, project, source)
    if isinstance(merged, Failure):
        return merged
    new = merged.unwrap()
    checks: tuple[Callable[[], _Widening | None], ...] = (
        lambda: _check_paths(base, new, workspace),
        lambda: _check_network(base, new),
        lambda: _check_limits(base, new),
        lambda: _check_environment(base, new),
        lambda: _check_enforcement(base, new),
        lambda: _check_host_processes(base, new),
    )
    for check in checks:
        widening = check()
        if widening is not None:
            return Failure(
                ConfigInvalid(
                    problem=f"would widen the policy: {widening.detail}{_ADVICE}",
                    source=source,
                    field=widening.field,
                )
            )
    return Success(new)


@attrs.frozen(kw_only=True)
class NarrowedBackend:
    choice: BackendChoice
    warnings: tuple[str, ...] = ()


def narrow_backend(
    base: BackendChoice, project: BackendSettings, source: str
) -> Result[NarrowedBackend, ConfigInvalid]:
    """A project may fill in the backend, image and runtime the user left open.

    It may never pick a backend that confines nothing (`none`, `process`). Where the user
    already chose, the user's choice stands and the project's is reported as ignored: that
    keeps the user's protection and still lets the same repository work for other users.
    """
    if project.name in _UNCONFINED:
        assert project.name is not None
        return Failure(
            ConfigInvalid(
                problem=f"would widen the policy: backend {project.name.value!r} confines "
                f"neither files nor network{_ADVICE}",
                source=source,
                field="backend.name",
            )
        )
    warnings: list[str] = []
    choice = base
    wanted: tuple[tuple[str, object, object], ...] = (
        ("name", project.name, None if base.name is BackendName.AUTO else base.name),
        ("image", project.image, base.image),
        ("runtime", project.runtime, base.runtime),
    )
    for key, value, chosen in wanted:
        if value is None:
            continue
        if chosen is not None and chosen != value:
            warnings.append(
                f"{source}: backend.{key} = {_show(value)} ignored: the user configuration "
                f"chose {_show(chosen)}"
            )
            continue
        changes: dict[str, Any] = {key: value}
        choice = attrs.evolve(choice, **changes)
    return Success(NarrowedBackend(choice=choice, warnings=tuple(warnings)))


def _show(value: object) -> str:
    return repr(value.value if isinstance(value, BackendName) else value)
