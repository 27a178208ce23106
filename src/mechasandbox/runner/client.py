"""The host side of the spawn helper: starts it lazily and hands it spawn requests."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechasandbox.runner import framing

# The fields of a spawn request a warm child is prepared from (see `helper`).
_PREPARED_LIKE = ("ahead", "rehearsals")


class HelperUnavailable(Exception):
    """The spawn helper could not be started or stopped answering."""


class SpawnHelperClient:
    """Owns one helper process. Thread-safe; usable from any event loop.

    Closing the client (explicitly, at interpreter exit, or by the host dying) closes the
    control socket, and the helper then kills every run it still has.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid()  # the process whose helper `_control` talks to
        self._used = False  # a run was submitted to the current helper

    def prestart(self) -> None:
        """Start the helper now, without waiting for it: its start-up (tens of ms) then
        overlaps with what the host does before its first run. Failing here is not an
        error; the first run tries again and reports it."""
        with self._lock, contextlib.suppress(HelperUnavailable):
            if self._control is None:
                self._start()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": package_root,
            framing.CONTROL_FD_ENV: str(theirs.fileno()),
        }
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-s", "-S", str(Path(__file__).with_name("_helper_main.py"))],
                pass_fds=[theirs.fileno()],
                env={**env, "PYTHONPATH": package_root},
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the host's terminal is the host's to handle
            )
        except OSError as error:
            ours.close()
            raise HelperUnavailable(f"cannot start the spawn helper: {error}") from error
        finally:
            theirs.close()
        self._control = ours
        self._owner = os.getpid()
        atexit.register(self.close)
        return ours

    def submit(self, request: dict[str, Any], stdio: list[int]) -> socket.socket:
        """Send one spawn request; returns this run's socket (answers arrive there)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                if self._owner != os.getpid():
                    self._forget_inherited()
                self._used = True
                for attempt in range(2):
                    control = self._control or self._start()
                    try:
                        framing.send(control, request, [theirs.fileno(), *stdio])
                        break
                    except OSError as error:
                        # The helper died (killed by someone): start a fresh one once.
                        self._discard()
                        if attempt:
                            raise HelperUnavailable(f"spawn helper failed: {error}") from error
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def prepare(
        self, groups: Sequence[tuple[str, ...]], like: dict[str, Any] | None = None
    ) -> None:
        """Ask the running helper for a warm child in each group of cgroups, prepared like
        the spawn request `like` (see `helper`). A hint: nothing happens without a helper of
        this process, and failures are ignored (the next run reports them)."""
        message: dict[str, Any] = {"op": "prepare", "cgroups": [list(g) for g in groups]}
        if like is not None:
            message.update({name: like[name] for name in _PREPARED_LIKE if name in like})
        with self._lock:
            if self._control is None or self._owner != os.getpid():
                return
            with contextlib.suppress(OSError):
                framing.send(self._control, message)

    def _forget_inherited(self) -> None:
        """In a child forked from the host: the helper is the parent's; start our own
        rather than interleave frames with the parent on one socket."""
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()  # our copy only: the parent's helper lives on
        self._control = None
        self._process = None
        self._owner = os.getpid()
        self._used = False

    def _discard(self) -> None:
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()
        self._control = None
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        self._process = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def close(self) -> None:
        """Stop the helper; it kills every run it still has before it exits. A helper that
        never got a run has nothing to kill: it is not waited for (it exits on its own)."""
        with self._lock:
            if self._owner != os.getpid():
                self._forget_inherited()
                return
            if not self._used:
                if self._control is not None:
                    with contextlib.suppress(OSError):
                        self._control.close()
                self._control = None
                if self._process is not None:  # reaped in the background when it exits
                    threading.Thread(target=self._process.wait, daemon=True).start()
                self._process = None
                return
            self._discard()
            self._used = False
