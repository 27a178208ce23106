"""The host unix sockets a policy names (`network.allow_unix_sockets`), found on this host.

A host unix socket is host control, not network: `docker.sock` runs anything as root, the
ssh agent signs as the user, the session bus starts programs. Backends keep every one of
them out unless the policy names it; this module tells them which named sockets exist and
where to bind them. Names the command itself could redirect are not bound (see
`find_named_sockets`).
"""

from __future__ import annotations

import os
import stat

import attrs

from mechasandbox.backends.base import HostContext
from mechasandbox.domain.policy import Policy


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@attrs.frozen(kw_only=True)
class NamedSockets:
    """`bind`: real paths of named sockets to make reachable at that same path.
    `in_place`: named sockets the sandbox already shows where they are (in the workspace or
    a writable path), so nothing is bound for them. `warnings`: names that reach nothing."""

    bind: tuple[str, ...] = ()
    in_place: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.bind or self.in_place)


NO_NAMED_SOCKETS = NamedSockets()


def find_named_sockets(policy: Policy, host: HostContext, workspace: str) -> NamedSockets:
    """The named sockets as they are on the host now.

    A name is resolved (symlinks followed) and must be a socket; a missing one (an agent
    not started) is reported, not an error. A name in the workspace or a writable path is
    never bound: the command (or the repository) could have replaced it with a link to
    another socket, and a bind follows links; such a socket is reachable in place where
    the backend shows that tree, and only there.
    """
    writable = (workspace, *(os.path.normpath(host.expand(p)) for p in policy.filesystem.writable))
    bind: list[str] = []
    in_place: list[str] = []
    warnings: list[str] = []
    for name in policy.network.allow_unix_sockets:
        path = os.path.normpath(host.expand(name))
        if any(_inside(path, root) for root in writable):
            in_place.append(path)
            continue
        real = os.path.realpath(path)
        try:
            is_socket = stat.S_ISSOCK(os.stat(real).st_mode)
        except OSError:
            is_socket = False
        if not is_socket:
            warnings.append(f"named unix socket {name}: no socket there; nothing to reach")
        elif any(_inside(real, root) for root in writable):
            warnings.append(
                f"named unix socket {name}: resolves into {real}, where the command can "
                "write; not bound"
            )
        elif real not in bind:
            bind.append(real)
    return NamedSockets(bind=tuple(bind), in_place=tuple(in_place), warnings=tuple(warnings))
