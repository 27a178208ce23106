"""The caller going away (SIGINT, SIGTERM to the CLI), told to the runs it has under way.

A signal that ends the caller in the middle of a run would lose what the run wrote so far,
and (when it raises, as SIGINT's default handler does) unwind through the backends' clean-up
at any point. An `Interruption` turns it into an event of the runs instead: its signal
handler (`catching`) only records the signal and asks the spawn helper to kill the tree of
each run under way (a `kill` frame on the run's socket, as a deadline does); each of those
runs then ends as usual, its outcome saying `interrupted` with the output captured so far,
and the backend cleans up as after any run. When no run is under way (the signal came while
a backend was setting up), the next run to start is stopped at once. Runs that start after
that go on normally: a backend's own clean-up may need one (an engine's `rm --force`).
Whether the caller was interrupted at all, even between runs, is `signal`: the CLI answers
`interrupted` whenever it is set (see docs/failure-semantics.md).

A runner takes one as `interruption` (`HelperProcessRunner`, `BlockingHelperRunner`); the
composition root passes `Core.interruption` to the runner it makes. Without one, a signal
does what its handler does (SIGINT's raises `KeyboardInterrupt`; the runners then kill the
tree before the exception goes on).
"""

from __future__ import annotations

import contextlib
import signal as signals
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from mechasandbox.runner.submission import request_kill
from mechasandbox.runner.supervision import Supervision


class Interruption:
    """See the module's docstring. Thread-safe; `request` may run in a signal handler (in
    the main thread, possibly while that thread is inside `enter` or `leave`: the lock is
    re-entrant, and each of those leaves the state consistent between two statements)."""

    def __init__(self) -> None:
        self.signal: int | None = None  # the first signal that told the caller to stop
        self._lock = threading.RLock()
        self._runs: dict[int, tuple[Supervision, socket.socket]] = {}
        self._pending = False  # a request came while no run was under way
        # Runs no spawn helper of this process holds (a cluster node's): told by calling.
        self._callbacks: dict[int, Callable[[int], None]] = {}

    def request(self, signum: int) -> None:
        """Stop the runs under way (or the next one to start, when none is)."""
        with self._lock:
            if self.signal is None:
                self.signal = signum
            runs = list(self._runs.values())
            callbacks = list(self._callbacks.values())
            if not runs and not callbacks:
                self._pending = True
        for callback in callbacks:
            callback(signum)
        for supervision, sock in runs:
            if supervision.interrupt(signum):
                request_kill(sock)

    def enter(self, supervision: Supervision, sock: socket.socket) -> None:
        """A run was submitted (`sock`: its socket to the helper); `leave` when it is over."""
        with self._lock:
            stop_now = self._pending
            self._pending = False
            self._runs[id(supervision)] = (supervision, sock)
        if stop_now and self.signal is not None and supervision.interrupt(self.signal):
            request_kill(sock)

    @contextlib.contextmanager
    def calling(self, callback: Callable[[int], None]) -> Iterator[None]:
        """While the block runs, `callback(signum)` stops a run this process holds no
        helper's socket of (the `ray` backend's, on a node); at once when the caller was
        told to stop before it started, as `enter`."""
        key = id(callback)
        with self._lock:
            stop_now = self._pending
            self._pending = False
            self._callbacks[key] = callback
        try:
            if stop_now and self.signal is not None:
                callback(self.signal)
            yield
        finally:
            with self._lock:
                self._callbacks.pop(key, None)

    def leave(self, supervision: Supervision) -> None:
        with self._lock:
            self._runs.pop(id(supervision), None)

    @contextlib.contextmanager
    def catching(self, *caught: signals.Signals) -> Iterator[Interruption]:
        """`request` on each of `caught` while the block runs (in the main thread only);
        the handlers before are restored after. A signal ignored when the block starts
        stays ignored: whoever started the process asked for that (`nohup`, a shell's
        background job)."""
        previous: dict[signals.Signals, Any] = {}
        try:
            for number in caught:
                if signals.getsignal(number) is signals.SIG_IGN:
                    continue
                previous[number] = signals.signal(number, self._handle)
            yield self
        finally:
            for number, handler in previous.items():
                signals.signal(number, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        self.request(signum)
