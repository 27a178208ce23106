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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
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
    from anyio.from_thread import BlockingPortal

    from mechasandbox.network.proxy.serving import RunningProxy

__all__ = ["SOCKET_NAME", "EgressProxy", "SessionProxy", "run_with_proxy", "with_violations"]

SOCKET_NAME = "proxy.sock"
# How long a session's command's refusals may take to land once it ended: the proxy
# finishes deciding what the command's connections asked (a name being resolved), so that
# a refusal is reported on the command that caused it, not on the next one.
SETTLE_S = 1.0


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


@attrs.define(eq=False)
class SessionProxy:
    """A session's allowlist proxy: one `EgressProxy.session` for the session's life,
    served on an event loop of its own in a thread of its own. (A session is opened and
    ended by different tasks, in the sync form and the CLI's supervisor, while a proxy's
    task group must be left by the task that entered it; its own loop also keeps the
    proxy serving while the caller's loop waits on a command.)"""

    running: RunningProxy
    _portal: BlockingPortal
    _stack: contextlib.ExitStack[bool | None]

    @classmethod
    async def start(
        cls, egress: EgressProxy, network: NetworkPolicy, *, listen_tcp: bool = False
    ) -> SessionProxy:
        return await anyio.to_thread.run_sync(partial(cls._started, egress, network, listen_tcp))

    @classmethod
    def _started(cls, egress: EgressProxy, network: NetworkPolicy, tcp: bool) -> SessionProxy:
        from anyio.from_thread import start_blocking_portal

        stack = contextlib.ExitStack()
        try:
            portal = stack.enter_context(start_blocking_portal())
            proxy = portal.wrap_async_context_manager(egress.session(network, listen_tcp=tcp))
            return cls(stack.enter_context(proxy), portal, stack)
        except BaseException:
            stack.close()
            raise

    async def violations(self) -> tuple[Violation, ...]:
        """What it refused since the last call (a command's own refusals: call it when the
        command ended), once the connections open now are served (bounded by SETTLE_S)."""
        running = self.running
        # Read from this thread: nothing open and nothing refused is the common answer.
        if not running.open_connections and not running.violations():
            return ()
        return await anyio.to_thread.run_sync(self._portal.call, self._settled)

    async def _settled(self) -> tuple[Violation, ...]:
        with anyio.move_on_after(SETTLE_S):
            while self.running.open_connections:
                await anyio.sleep(0.005)
        return self.running.take_violations()

    async def aclose(self) -> None:
        """Stop serving, remove its socket and private directory. Idempotent."""
        await anyio.to_thread.run_sync(self._stack.close)
