"""The host side of the spawn helper: starts it lazily and hands it spawn requests."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from mechasandbox.runner import framing
from mechasandbox.runner.helper import CONTROL_FD_ENV


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

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": package_root,
            CONTROL_FD_ENV: str(theirs.fileno()),
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
        atexit.register(self.close)
        return ours

    def submit(self, request: dict[str, Any], stdio: list[int]) -> socket.socket:
        """Send one spawn request; returns this run's socket (answers arrive there)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
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
        """Stop the helper; it kills every run it still has before it exits."""
        with self._lock:
            self._discard()
