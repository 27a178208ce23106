"""What a test does on the host while a sandboxed command runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


def act_when_started(
    marker: Path, action: Callable[[], None], timeout_s: float = 60
) -> threading.Thread:
    """Calls `action` on the host in a thread once the command has made `marker` (or after
    `timeout_s`); the caller joins the thread after the run."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + timeout_s
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        action()

    thread = threading.Thread(target=wait_then_act)
    thread.start()
    return thread
