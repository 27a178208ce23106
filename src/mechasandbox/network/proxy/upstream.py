"""Opening the upstream: decide from the target, resolve once, check, connect.

The decision is taken from the requested target alone (`Allowlist`); an allowed name is
resolved once through the injected `Resolver`, every address is checked
(`check_address`), and the connection goes to an address that passed, so there is no
second lookup for a rebinding attacker to answer differently.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import attrs

from mechasandbox.domain.policy import NetworkMode
from mechasandbox.network.addresses import check_address
from mechasandbox.network.patterns import IPAddress, Target
from mechasandbox.network.proxy.core import ProxyCore
from mechasandbox.network.proxy.streams import SocketStream, connect_tcp

# The SOCKS5 (RFC 1928) reply codes a refusal carries.
REPLY_RULESET, REPLY_UNREACHABLE, REPLY_REFUSED = 0x02, 0x04, 0x05


@attrs.frozen(kw_only=True)
class Refused:
    """Why no upstream was opened, with the matching HTTP status and SOCKS5 reply code."""

    status: int
    socks_reply: int
    reason: str


async def open_upstream(core: ProxyCore, target: Target, verb: str) -> SocketStream | Refused:
    """Decide, resolve once, check every address, connect to one that passed."""
    blocked = f"blocked {verb} {target}"
    if core.mode is NetworkMode.NONE:
        reason = "network access is off for this run (--network none)"
        core.refuse(f"{blocked}: {reason}")
        return Refused(status=403, socks_reply=REPLY_RULESET, reason=reason)
    if core.mode is NetworkMode.ALLOWLIST:
        decision = core.allowlist.decide_target(target)
        if not decision.allowed:
            core.refuse(f"{blocked}: {decision.reason}")
            return Refused(status=403, socks_reply=REPLY_RULESET, reason=decision.reason)
    addresses = await _resolve(core, target)
    if isinstance(addresses, Refused):
        return addresses
    passed: list[IPAddress] = []
    first_problem = ""
    for address in addresses:
        verdict = check_address(address, target.port, allowlist=core.allowlist, rules=core.rules)
        if verdict.allowed:
            passed.append(address)
        elif not first_problem:
            first_problem = verdict.reason
    if not passed:
        core.refuse(f"{blocked}: {first_problem}")
        return Refused(status=403, socks_reply=REPLY_RULESET, reason=first_problem)
    return await _connect(core, target, passed)


async def _resolve(core: ProxyCore, target: Target) -> Sequence[IPAddress] | Refused:
    if target.address is not None:
        return (target.address,)
    assert target.name is not None
    try:
        with anyio.fail_after(core.settings.connect_timeout_s):
            addresses = await core.resolver.resolve(target.name)
    except TimeoutError:
        reason = f"resolving {target.name} timed out"
        return _upstream_failed(core, 504, REPLY_UNREACHABLE, reason)
    except OSError as error:
        reason = f"cannot resolve {target.name}: {error}"
        return _upstream_failed(core, 502, REPLY_UNREACHABLE, reason)
    if not addresses:
        reason = f"{target.name} has no addresses"
        return _upstream_failed(core, 502, REPLY_UNREACHABLE, reason)
    return addresses


async def _connect(
    core: ProxyCore, target: Target, addresses: Sequence[IPAddress]
) -> SocketStream | Refused:
    last_error: OSError | None = None
    with anyio.move_on_after(core.settings.connect_timeout_s):
        for address in addresses:
            try:
                return await connect_tcp(address, target.port)
            except OSError as error:
                last_error = error
    if last_error is None:
        reason = f"connecting to {target} timed out after {core.settings.connect_timeout_s:g}s"
        return _upstream_failed(core, 504, REPLY_UNREACHABLE, reason)
    reason = f"cannot connect to {target}: {last_error}"
    return _upstream_failed(core, 502, REPLY_REFUSED, reason)


def _upstream_failed(core: ProxyCore, status: int, reply: int, reason: str) -> Refused:
    core.counters.upstream_failures += 1
    return Refused(status=status, socks_reply=reply, reason=reason)
