"""One proxy per run: the lifecycle every backend bridging `allowlist` mode shares.

    egress = EgressProxy(resolver=SystemResolver())
    async with egress.session(policy.network) as proxy:   # private 0700 run directory
        ...spawn the command, pointing it at proxy.socket_path / proxy.tcp_address...
    result = with_violations(result, proxy.violations())

A session (docs/sessions.md) keeps one such proxy for its life (`SessionProxy`), and each
command's result gets the refusals made while it ran.

`validation.validate_network` checks the allow/deny patterns before anything starts, so a
bad pattern is a `ConfigInvalid` naming it, never a proxy that fails to start mid-run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import Interrupted, LimitExceeded, SandboxError, Timeout
from mechasandbox.domain.policy import NetworkMode, NetworkPolicy
from mechasandbox.domain.result import RunResult, Violation
from mechasandbox.leftovers import temp_prefix
from mechasandbox.network.addresses import (
    AddressRules,
    InterfaceAddresses,
    host_interface_addresses,
)
from mechasandbox.network.proxy.resolver import Resolver, SystemResolver
from mechasandbox.network.proxy.settings import ProxySettings

if TYPE_CHECKING:
    from mechasandbox.network.proxy.serving import RunningProxy

__all__ = ["SOCKET_NAME", "EgressProxy", "run_with_proxy", "with_violations"]

SOCKET_NAME = "proxy.sock"


@attrs.frozen(kw_only=True)
class EgressProxy:
    """How runs get their proxy: the injected resolver, the bounds, where run dirs go.

    `run_parent` holds each run's private directory (mode 0700, removed afterwards); it
    defaults to the system temp dir. Keep it short: unix socket paths are limited to
    about 108 bytes.
    """

    resolver: Resolver = attrs.field(factory=SystemResolver)
    settings: ProxySettings = ProxySettings()
    address_rules: AddressRules = AddressRules()
    interface_addresses: InterfaceAddresses = host_interface_addresses
    run_parent: str | None = None

    @contextlib.asynccontextmanager
    async def session(
        self, network: NetworkPolicy, *, listen_tcp: bool = False
    ) -> AsyncIterator[RunningProxy]:
        """Serve this run's proxy on a fresh unix socket (and loopback TCP with a token)."""
        run_dir = tempfile.mkdtemp(prefix=temp_prefix("net"), dir=self.run_parent)
        try:
            os.chmod(run_dir, 0o700)
            settings = self.settings
            if listen_tcp and not settings.listen_tcp:
                settings = attrs.evolve(settings, listen_tcp=True)
            # The proxy itself is imported here: a backend keeps its `EgressProxy` from the
            # start, and most runs never serve one.
            from mechasandbox.network.proxy.serving import serve_proxy

            async with serve_proxy(
                network,
                socket_path=Path(run_dir) / SOCKET_NAME,
                resolver=self.resolver,
                settings=settings,
                address_rules=self.address_rules,
                interface_addresses=self.interface_addresses,
            ) as proxy:
                yield proxy
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)


def with_violations(
    result: Result[RunResult, SandboxError], violations: Sequence[Violation]
) -> Result[RunResult, SandboxError]:
    """`violations` added to the run's result, or to the partial result of a timeout/limit."""
    if not violations:
        return result
    extra = tuple(violations)
    if isinstance(result, Success):
        finished = result.unwrap()
        return Success(attrs.evolve(finished, violations=finished.violations + extra))
    error = result.failure()
    if isinstance(error, Timeout | LimitExceeded | Interrupted):
        partial = error.partial
        updated = attrs.evolve(partial, violations=partial.violations + extra)
        return Failure(attrs.evolve(error, partial=updated))
    return result


async def run_with_proxy(
    egress: EgressProxy,
    network: NetworkPolicy,
    body: Callable[[RunningProxy | None], Awaitable[Result[RunResult, SandboxError]]],
    *,
    listen_tcp: bool = False,
) -> Result[RunResult, SandboxError]:
    """`body(proxy)` inside a proxy session when the mode is allowlist, else `body(None)`.

    The proxy stops when `body` returns; what it refused lands on the result.
    """
    if network.mode is not NetworkMode.ALLOWLIST:
        return await body(None)
    async with egress.session(network, listen_tcp=listen_tcp) as proxy:
        result = await body(proxy)
        violations = proxy.violations()
    return with_violations(result, violations)
