"""An event loop on a thread of its own: anyio's blocking portal, started at first use.

Synchronous code (a probe, `close`, the interpreter's exit) runs engine CLI calls to
completion on it (`call`), even when called from inside a running event loop; a warm pool
hands it its background work (`start_soon`).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

T = TypeVar("T")


class Portal:
    """A blocking portal on a daemon thread named `name`, started at first use.

    `background`, if given, is started with each portal and runs until the event it is
    given is set, which `close` does before stopping the portal. `close` stops it once the
    work under way is done; a later call starts another. A portal still open when the
    interpreter exits is closed then (weakref.finalize): one left to the interpreter's
    teardown would hang it, waiting on a thread that no longer runs.
    """

    def __init__(
        self,
        name: str,
        *,
        background: Callable[[threading.Event], Awaitable[None]] | None = None,
    ) -> None:
        self._name = name
        self._background = background
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _started(self) -> BlockingPortal:
        """(Called with the lock held: a portal is never stopped while work is handed in.)"""
        if self._portal is None or self._finalizer is None or not self._finalizer.alive:
            stack = contextlib.ExitStack()
            portal = stack.enter_context(start_blocking_portal(name=self._name))
            stopping = threading.Event()
            if self._background is not None:
                portal.start_task_soon(self._background, stopping)
            self._portal = portal
            self._finalizer = weakref.finalize(self, _stop, stack, stopping)
        return self._portal

    def call(self, func: Callable[[], Awaitable[T]]) -> T:
        """`func()` run to completion on the portal's loop; its result (or exception)."""
        with self._lock:
            future = self._started().start_task_soon(func)
        return future.result()

    def start_soon(self, func: Callable[[], Awaitable[object]]) -> None:
        """`func()` started on the portal's loop; nobody waits for it (but `close`)."""
        with self._lock:
            self._started().start_task_soon(func)

    def close(self) -> None:
        with self._lock:
            finalizer, self._finalizer, self._portal = self._finalizer, None, None
        if finalizer is not None:
            finalizer()


def _stop(stack: contextlib.ExitStack, stopping: threading.Event) -> None:
    """End the background work, let the rest finish, stop the loop and its thread."""
    stopping.set()
    stack.close()
