"""The project rule: a file that ships with a repository may only narrow the user's policy.

A repository is written by whoever wrote the code the agent works on, possibly an attacker.
Its `.mechasandbox.toml` (or `.openagents/project.json`) may tighten what the user allows —
deny more, limit more, cut the network — but never loosen it. Anything that would loosen it
is refused with `ConfigInvalid` naming the file and key, rather than silently dropped, so the
author of the project file learns why their setting has no effect; every key that would
loosen it is named at once, not just the first.

The deny lists (`deny_read`, `deny_write`, `protected`, `network.deny`) of a project layer
*add* to the inherited ones: an entry of the project's never replaces or erases one it
inherits (`protected = ["/"]` must not drop `.git/hooks`).

The rest is checked by comparing the merged result with the policy it narrows, field by
field. Paths a project adds to `readable` and `writable` are judged where they lead, after
resolving symlinks: the repository wrote the workspace, so `ref -> /` inside it is as
likely as any honest path, and a path is only inside the workspace if its real path is.
"""

from __future__ import annotations

import os.path
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.catalog import AUTO, UNCONFINED
from mechasandbox.backends.toolchains import KNOWN_ROOTS
from mechasandbox.config.overlay import BackendChoice, apply_settings
from mechasandbox.config.schema import NO_RAY, BackendSettings, RaySettings, Settings
from mechasandbox.config.validation import LIMIT_RULES
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import (
    TOOLCHAINS_AUTO,
    Enforcement,
    HostProcesses,
    NetworkMode,
    Policy,
    is_loader_variable,
)

_ADVICE = (
    " (a project file may only narrow the user's policy; put wider settings in the user "
    "configuration, a --config file or a command-line option)"
)
_NETWORK_RANK = {NetworkMode.NONE: 0, NetworkMode.ALLOWLIST: 1, NetworkMode.FULL: 2}
_ENFORCEMENT_RANK = {Enforcement.STRICT: 0, Enforcement.BEST_EFFORT: 1}


@attrs.frozen(kw_only=True)
class _Widening:
    field: str
    detail: str


Resolve = Callable[[str], str]


def _real(path: str, workspace: str, resolve: Resolve) -> str:
    """Where `path` leads: `~` expanded, relative paths taken from the workspace, symlinks
    resolved (a missing tail is kept as written, as `os.path.realpath` does)."""
    return resolve(os.path.join(workspace, os.path.expanduser(path)))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _lexical(path: str, workspace: str) -> str:
    """How a backend spells `path`: `~` expanded, `..` taken away as text."""
    return os.path.normpath(os.path.join(workspace, os.path.expanduser(path)))


def _covered(path: str, roots: Iterable[str], workspace: str, resolve: Resolve) -> bool:
    """Under one of `roots` both as written (`..` as text, the way the backends read it) and
    where it leads (symlinks first): `ws/link/../..` is one place to the one and another to
    the other, and must be inside by both readings."""
    lexical, real = _lexical(path, workspace), _real(path, workspace, resolve)
    return any(
        _under(lexical, _lexical(root, workspace)) and _under(real, _real(root, workspace, resolve))
        for root in roots
    )


def _where(path: str, workspace: str, resolve: Resolve) -> str:
    return (
        f"{_lexical(path, workspace)!r} as written, leading to {_real(path, workspace, resolve)!r}"
    )


def _added(inherited: tuple[str, ...], project: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """A project's deny list laid over the inherited one: the inherited entries stay."""
    if project is None:
        return None
    return tuple(dict.fromkeys((*inherited, *project)))


def _only_adding(base: Policy, project: Settings) -> Settings:
    """`project` with its deny lists turned into additions to `base`'s."""
    fs, net = project.filesystem, project.network
    old_fs = base.filesystem
    return attrs.evolve(
        project,
        filesystem=attrs.evolve(
            fs,
            deny_read=_added(old_fs.deny_read, fs.deny_read),
            deny_write=_added(old_fs.deny_write, fs.deny_write),
            protected=_added(old_fs.protected, fs.protected),
        ),
        network=attrs.evolve(net, deny=_added(base.network.deny, net.deny)),
    )


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


def _check_paths(
    base: Policy, new: Policy, workspace: str, resolve: Resolve
) -> Iterator[_Widening]:
    """Each path the project adds leads inside what the inherited policy allows (the
    workspace too, for reading). Entries inherited as they are stay the user's business."""
    old_fs, new_fs = base.filesystem, new.filesystem
    for entry in new_fs.readable:
        if entry in old_fs.readable:
            continue
        if not _covered(entry, (workspace, *old_fs.readable), workspace, resolve):
            yield _Widening(
                field="filesystem.readable",
                detail=f"{entry!r} ({_where(entry, workspace, resolve)}) is outside the "
                "workspace and not readable under the policy it narrows",
            )
    for entry in new_fs.writable:
        if entry in old_fs.writable:
            continue
        if not _covered(entry, old_fs.writable, workspace, resolve):
            yield _Widening(
                field="filesystem.writable",
                detail=f"{entry!r} ({_where(entry, workspace, resolve)}) is not writable "
                "under the policy it narrows",
            )


def _check_toolchains(base: Policy, new: Policy) -> Iterator[_Widening]:
    """A project may keep, drop or name fewer toolchains; under "auto", it may name known
    roots one by one (`~/.cargo`), which "auto" would show anyway when they exist."""
    old = base.filesystem.toolchains
    for entry in new.filesystem.toolchains:
        if entry in old:
            continue
        if TOOLCHAINS_AUTO in old and os.path.normpath(entry) in KNOWN_ROOTS:
            continue
        yield _Widening(
            field="filesystem.toolchains",
            detail=f"{entry!r} is not a toolchain the policy it narrows makes readable",
        )


def _check_umask(base: Policy, new: Policy) -> Iterator[_Widening]:
    old, umask = base.filesystem.umask, new.filesystem.umask
    if umask & old != old:
        yield _Widening(
            field="filesystem.umask",
            detail=f"{umask:03o} lets others read or write what the inherited {old:03o} keeps "
            "from them",
        )


def _check_network(base: Policy, new: Policy) -> Iterator[_Widening]:
    old_net, new_net = base.network, new.network
    if _NETWORK_RANK[new_net.mode] > _NETWORK_RANK[old_net.mode]:
        yield _Widening(
            field="network.mode",
            detail=f"network mode {new_net.mode.value!r} is wider than the inherited "
            f"{old_net.mode.value!r}",
        )
    if old_net.mode is not NetworkMode.FULL:
        for pattern in new_net.allow:
            if not any(pattern_covers(allowed, pattern) for allowed in old_net.allow):
                yield _Widening(
                    field="network.allow",
                    detail=f"{pattern!r} is not allowed by the inherited allowlist",
                )
    # A unix socket is host control (docker.sock runs anything as root): a project may keep
    # or drop the user's names, never add one, whatever the network mode. Compared as
    # written (normalised): a different spelling of a named socket is not the same name.
    named = {os.path.normpath(path) for path in old_net.allow_unix_sockets}
    for path in new_net.allow_unix_sockets:
        if os.path.normpath(path) not in named:
            yield _Widening(
                field="network.allow_unix_sockets",
                detail=f"{path!r} is not a unix socket the inherited policy names",
            )


def _check_limits(base: Policy, new: Policy) -> Iterator[_Widening]:
    for rule in LIMIT_RULES:
        key, show = rule.key, rule.show
        old_value: float | None = getattr(base.limits, rule.attribute)
        new_value: float | None = getattr(new.limits, rule.attribute)
        if old_value is None or new_value == old_value:
            continue
        if new_value is None:
            yield _Widening(
                field=f"limits.{key}",
                detail=f"removes the inherited limit of {show(old_value)}",
            )
        elif new_value > old_value:
            yield _Widening(
                field=f"limits.{key}",
                detail=f"{show(new_value)} is above the inherited {show(old_value)}",
            )


def _check_environment(base: Policy, new: Policy) -> Iterator[_Widening]:
    old_env, new_env = base.environment, new.environment
    for name in new_env.allow:
        if name not in old_env.allow:
            yield _Widening(
                field="environment.allow",
                detail=f"{name!r} is not in the inherited allow list",
            )
    for name in new_env.pass_through:
        if name not in old_env.allow and name not in old_env.pass_through:
            yield _Widening(
                field="environment.pass",
                detail=f"passes the host's {name!r}, which the policy it narrows does not",
            )
    new_set = dict(new_env.set)
    old_set = dict(old_env.set)
    for name, value in new_set.items():
        if is_loader_variable(name) and value != old_set.get(name):
            yield _Widening(
                field="environment.set",
                detail=f"sets {name}, which tells the dynamic loader what to load: a project "
                "file may not choose code for programs to load",
            )
    for name, value in old_env.set:
        if new_set.get(name) != value:
            yield _Widening(
                field="environment.set",
                detail=f"changes {name}, which the policy it narrows sets",
            )


def _check_enforcement(base: Policy, new: Policy) -> Iterator[_Widening]:
    if _ENFORCEMENT_RANK[new.enforcement] > _ENFORCEMENT_RANK[base.enforcement]:
        yield _Widening(
            field="enforcement",
            detail=f"{new.enforcement.value!r} is weaker than the inherited "
            f"{base.enforcement.value!r}",
        )


def _check_host_processes(base: Policy, new: Policy) -> Iterator[_Widening]:
    if base.host_processes is HostProcesses.HIDDEN and new.host_processes is HostProcesses.VISIBLE:
        yield _Widening(
            field="host_processes",
            detail="'visible' is weaker than the inherited 'hidden'",
        )


def _check_backend(project: BackendSettings) -> Iterator[_Widening]:
    # A backend that confines neither the file system nor the network: choosing one is
    # never a narrowing, whatever the policy says.
    if project.name in UNCONFINED:
        yield _Widening(
            field="backend.name",
            detail=f"backend {project.name!r} confines neither files nor network",
        )


def narrow(
    base: Policy,
    project: Settings,
    source: str,
    *,
    workspace: str,
    resolve: Resolve = os.path.realpath,
) -> Result[Policy, ConfigInvalid]:
    """`base` narrowed by a project layer, or `ConfigInvalid` if the layer would widen it.

    `workspace` is the absolute workspace path: readable entries whose real path is inside
    it add nothing, since the command reads its workspace anyway, so a project may list
    them. `resolve` gives a path's real path (tests pass a fake file system).
    """
    merged = apply_settings(base, _only_adding(base, project), source)
    if isinstance(merged, Failure):
        return merged
    new = merged.unwrap()
    widenings = [
        *_check_paths(base, new, workspace, resolve),
        *_check_toolchains(base, new),
        *_check_umask(base, new),
        *_check_network(base, new),
        *_check_limits(base, new),
        *_check_environment(base, new),
        *_check_enforcement(base, new),
        *_check_host_processes(base, new),
        *_check_backend(project.backend),
    ]
    if not widenings:
        return Success(new)
    return Failure(_widened(widenings, source))


def _widened(widenings: Sequence[_Widening], source: str) -> ConfigInvalid:
    """Every widening of one file in one error, the advice said once, at the end."""
    last = len(widenings) - 1
    return ConfigInvalid.together(
        [
            ConfigInvalid(
                problem=f"would widen the policy: {w.detail}{_ADVICE if i == last else ''}",
                source=source,
                field=w.field,
            )
            for i, w in enumerate(widenings)
        ]
    )


@attrs.frozen(kw_only=True)
class NarrowedBackend:
    choice: BackendChoice
    warnings: tuple[str, ...] = ()


def narrow_backend(
    base: BackendChoice,
    project: BackendSettings,
    source: str,
    ray: RaySettings = NO_RAY,
) -> Result[NarrowedBackend, ConfigInvalid]:
    """A project may fill in the backend, image and runtime the user left open.

    It may never pick a backend that confines nothing (`none`, `process`). Where the user
    already chose, the user's choice stands and the project's is reported as ignored: that
    keeps the user's protection and still lets the same repository work for other users.
    """
    unconfined = list(_check_backend(project))
    if unconfined:
        return Failure(_widened(unconfined, source))
    warnings: list[str] = []
    if project.pool_size is not None:
        # Containers started ahead of runs are the user's resources to spend.
        warnings.append(
            f"{source}: backend.pool_size ignored: only the user's configuration sets it"
        )
    if ray != NO_RAY:
        # Where runs (and the workspace with them) are sent is the user's to say.
        warnings.append(f"{source}: ray ignored: only the user's configuration sets it")
    if project.name == "ray":
        warnings.append(
            f"{source}: backend.name = 'ray' ignored: only the user's configuration sends "
            "the workspace to a cluster"
        )
        project = attrs.evolve(project, name=None)
    choice = base
    wanted: tuple[tuple[str, object, object], ...] = (
        ("name", project.name, None if base.name == AUTO else base.name),
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
    return repr(value)
