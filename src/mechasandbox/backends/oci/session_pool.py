"""Ready sessions, opened ahead: `PooledBackend.open_session` hands out one opened for the
same workspace, policy and settings, and opens its replacement in the background.

A session handed out has run nothing: it is one a fresh `open_session` would have made
(its container, agent, mounts and limits), only opened earlier, on the pool's own thread
(`Portal`). It is never given back: a closed session's container is removed, its state
with it. A ready one whose agent ended (its idle timeout: counted from its start), or that
has waited for longer than the pool's `idle_timeout_s`, is closed instead of handed out;
its lifetime counts from when it was opened. `close()` closes the ready ones; one the
process leaves behind dies with it as any session does (its channel closes).
"""

from __future__ import annotations

import os
import threading
import time

from returns.result import Result, Success

from mechasandbox.backends.agent_session import AgentSession
from mechasandbox.backends.oci.engine import OciBackend
from mechasandbox.backends.oci.portal import Portal
from mechasandbox.backends.oci.session import open_oci_session
from mechasandbox.backends.session_base import BackendSession, SessionSettings
from mechasandbox.domain.errors import SandboxError
from mechasandbox.domain.policy import Policy

# A ready session is not handed out this close to its agent's idle timeout.
_IDLE_MARGIN_S = 1.0

_Key = tuple[str, Policy, SessionSettings]


class WarmSessions:
    """Up to `size` ready sessions per workspace, policy and settings (see the module)."""

    def __init__(self, backend: OciBackend, *, size: int, idle_timeout_s: float) -> None:
        self.backend = backend
        self.size = size
        self.idle_timeout_s = idle_timeout_s
        self._lock = threading.Lock()
        self._ready: dict[_Key, list[tuple[AgentSession, float]]] = {}
        self._opening: dict[_Key, int] = {}
        self._portal = Portal("mechasandbox-sessions")
        self._closed = False

    def _usable(self, session: AgentSession, ready_since: float, settings: SessionSettings) -> bool:
        waited = time.monotonic() - ready_since
        idle = settings.idle_timeout_s
        fresh = waited < self.idle_timeout_s and (idle is None or waited < idle - _IDLE_MARGIN_S)
        return fresh and session.channel.ended is None

    async def open_session(
        self, workspace: str, policy: Policy, settings: SessionSettings
    ) -> Result[BackendSession, SandboxError]:
        key = (os.path.realpath(workspace), policy, settings)
        found: AgentSession | None = None
        stale: list[AgentSession] = []
        with self._lock:
            ready = self._ready.get(key, [])
            while ready and found is None:
                session, since = ready.pop(0)
                if self._usable(session, since, settings):
                    found = session
                else:
                    stale.append(session)
        for session in stale:
            await session.aclose()
        self._refill(key, workspace, policy, settings)
        if found is not None:
            return Success(found)
        return await open_oci_session(self.backend, workspace, policy, settings)

    def warm(self, workspace: str, policy: Policy, settings: SessionSettings) -> None:
        """Open `size` sessions for these in the background, before the first is asked for."""
        self._refill((os.path.realpath(workspace), policy, settings), workspace, policy, settings)

    def _refill(self, key: _Key, workspace: str, policy: Policy, settings: SessionSettings) -> None:
        with self._lock:
            if self._closed:
                return
            missing = self.size - len(self._ready.get(key, [])) - self._opening.get(key, 0)
            self._opening[key] = self._opening.get(key, 0) + max(missing, 0)

        async def one() -> None:
            opened = await open_oci_session(self.backend, workspace, policy, settings)
            keep = False
            with self._lock:
                self._opening[key] -= 1
                if isinstance(opened, Success) and not self._closed:
                    session = opened.unwrap()
                    assert isinstance(session, AgentSession)
                    self._ready.setdefault(key, []).append((session, time.monotonic()))
                    keep = True
            if isinstance(opened, Success) and not keep:
                await opened.unwrap().aclose()

        for _ in range(max(missing, 0)):
            self._portal.start_soon(one)

    def ready(self) -> int:
        """Sessions ready now, over every key (for tests and diagnostics)."""
        with self._lock:
            return sum(len(found) for found in self._ready.values())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready = [session for found in self._ready.values() for session, _ in found]
            self._ready.clear()
        for session in ready:
            self._portal.call(session.aclose)
        self._portal.close()
