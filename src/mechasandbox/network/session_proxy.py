"""A session's allowlist proxy: one `EgressProxy.session` for the session's life (see
`SessionProxy`), apart from `network.session` so that a one-shot run, which never has one,
loads no event loop library for it."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import attrs

from mechasandbox.domain.policy import NetworkPolicy
from mechasandbox.domain.result import Violation

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from mechasandbox.network.proxy.serving import RunningProxy
    from mechasandbox.network.session import EgressProxy

# How long a session's command's refusals may take to land once it ended: the proxy
# finishes deciding what the command's connections asked (a name being resolved), so that
# a refusal is reported on the command that caused it, not on the next one.
SETTLE_S = 1.0


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
