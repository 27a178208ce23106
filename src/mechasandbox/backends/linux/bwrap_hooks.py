"""What the spawn helper's child does for bwrap before exec, and the unix-socket plan that
decides it: the seccomp program on `SECCOMP_FD`, the command's environment on `ARGS_FD`, and
Landlock's abstract unix socket scope on bwrap itself where the host's network is shared."""

from __future__ import annotations

import functools
from socket import AF_UNIX

import attrs

from mechasandbox.backends.capability_table import CapabilityTable
from mechasandbox.backends.linux import seccomp
from mechasandbox.backends.linux.bwrap_command_line import COMMAND_FD
from mechasandbox.backends.linux.bwrap_compiler import ARGS_FD, SECCOMP_FD, BwrapCommand
from mechasandbox.backends.linux.landlock_rules import SCOPE_TARGET
from mechasandbox.backends.unix_sockets import NamedSockets
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.runner import fd_data
from mechasandbox.runner.spec import ChildHook

# With the host's network (--share-net) the command would also share the host's abstract
# unix sockets (the session bus, X11, containerd): there socket(AF_UNIX) is refused, unless
# the policy names unix sockets; then Landlock's scope keeps the abstract ones out.
_NO_UNIX_SOCKETS = tuple(f for f in seccomp.DEFAULT_SOCKET_FAMILIES if f != AF_UNIX)
# Landlock's abstract unix socket scope (ABI 6, include/uapi/linux/landlock.h).
LANDLOCK_SCOPE_ABI = 6
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0


@functools.cache
def seccomp_program(unix_sockets: bool = True) -> bytes:
    """The program for a run; `unix_sockets=False` also refuses socket(AF_UNIX)."""
    if unix_sockets:
        return seccomp.build_filter()
    return seccomp.build_filter(deny_socket_families_except=_NO_UNIX_SOCKETS)


def seccomp_summary(unix_sockets: bool = True) -> str:
    if unix_sockets:
        return seccomp.summary()
    return seccomp.summary(deny_socket_families_except=_NO_UNIX_SOCKETS)


def seccomp_hook(unix_sockets: bool = True) -> ChildHook:
    return ChildHook(
        target=fd_data.TARGET, argument=fd_data.argument(SECCOMP_FD, seccomp_program(unix_sockets))
    )


def command_hooks(command: BwrapCommand) -> tuple[ChildHook, ...]:
    """The command's environment on ARGS_FD, where bwrap reads it (`--args`), and its
    command line on COMMAND_FD when bwrap's argv cannot carry it (`bwrap_command_line`)."""
    environment = ChildHook(
        target=fd_data.TARGET, argument=fd_data.argument(ARGS_FD, command.arguments_on_fd)
    )
    if not command.command_script:
        return (environment,)
    script = fd_data.argument(COMMAND_FD, command.command_script)
    return environment, ChildHook(target=fd_data.TARGET, argument=script)


def abstract_scope_hook(abi: int) -> ChildHook:
    """Landlock's abstract unix socket scope on bwrap itself, so on all it starts."""
    return ChildHook(
        target=SCOPE_TARGET, argument={"abi": abi, "scoped": _SCOPE_ABSTRACT_UNIX_SOCKET}
    )


def landlock_abi() -> int:
    """The kernel's Landlock ABI, 0 without Landlock."""
    from mechasandbox.backends.linux.landlock import probe_abi

    abi = probe_abi()
    return abi if isinstance(abi, int) else 0


@attrs.frozen(kw_only=True)
class UnixSocketPlan:
    """What a run does about host unix sockets: whether socket(AF_UNIX) is allowed, the
    Landlock ABI to scope abstract sockets with (0: none), the named sockets to bind."""

    allowed: bool
    scope_abi: int
    sockets: NamedSockets

    @property
    def hooks(self) -> tuple[ChildHook, ...]:
        scope = (abstract_scope_hook(self.scope_abi),) if self.scope_abi else ()
        return (seccomp_hook(self.allowed), *scope)


def named_sockets_row(abi: int) -> CapabilityTable:
    how = (
        "named sockets bound read-only at their real path, no other host path socket "
        "mounted; with full network socket(AF_UNIX) is refused unless sockets are named"
    )
    if abi >= LANDLOCK_SCOPE_ABI:
        how += (
            ", and then the host's abstract sockets are kept out by Landlock's scope (set on bwrap)"
        )
        return CapabilityTable(enforced={Protection.NAMED_UNIX_SOCKETS: how})
    why = (
        f"{how}; naming sockets with full network would open the host's abstract sockets "
        f"(the session bus, X11) too: Landlock ABI {abi} < {LANDLOCK_SCOPE_ABI} cannot "
        "scope them (Linux 6.12 can)"
    )
    return CapabilityTable(gaps={Protection.NAMED_UNIX_SOCKETS: why})


def describe_scope(unix: UnixSocketPlan) -> str:
    if unix.scope_abi:
        return "scope on bwrap: abstract unix sockets (the host's are out of reach)"
    return "not used"


def unix_socket_plan(policy: Policy, sockets: NamedSockets, abi: int) -> UnixSocketPlan:
    """Own network namespace (none, allowlist): AF_UNIX stays, tools use it internally and
    the allowlist bridge needs it; only mounted path sockets exist there. Host network
    (full): refused, unless the policy names sockets; then allowed, with the host's
    abstract sockets scoped out where Landlock has scopes (else NAMED_UNIX_SOCKETS is not
    enforced: see `probe`)."""
    if policy.network.mode is not NetworkMode.FULL:
        return UnixSocketPlan(allowed=True, scope_abi=0, sockets=sockets)
    named = bool(policy.network.allow_unix_sockets)
    scope_abi = abi if named and abi >= LANDLOCK_SCOPE_ABI else 0
    return UnixSocketPlan(allowed=named, scope_abi=scope_abi, sockets=sockets)
