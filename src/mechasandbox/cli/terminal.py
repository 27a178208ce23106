"""`run --tty` and `shell`: the command gets a pseudo-terminal of its own, made here for the
run, and this process relays between it and the caller's terminal.

The pty's slave is the command's stdin, stdout and stderr and its session's controlling
terminal (`Terminal`, see `runner.child`); the master stays here. The caller's terminal
never enters the sandbox: a TIOCSTI inside reaches only the run's own pty. While the run
lasts, the caller's terminal is in raw mode (each key goes to the pty as typed: Ctrl-C is
the pty's interrupt, for the program inside), its window size is the pty's (at the start
and on SIGWINCH), and the pty's output is printed as it comes; the terminal's mode is put
back however the run ends (exit, timeout, a signal to this process).

No event loop here: the one-shot path takes runs with a terminal too (see `oneshot`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from types import FrameType

from mechasandbox.cli.stdin_choice import is_open
from mechasandbox.domain.request import Terminal

CHUNK = 64 * 1024
# What is read from the pty once the run is over, at most this long after its last output:
# only what the run's processes wrote before they died is left (the helper kills the rest).
DRAIN_S = 0.5
# The window size a pty gets when the caller's stdin is no terminal (rows, columns).
DEFAULT_SIZE = (24, 80)
EOF_KEY = b"\x04"  # the pty's VEOF in its default mode: the caller's input ended


def _window_size(fd: int) -> tuple[int, int] | None:
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None
    rows, columns, _, _ = struct.unpack("HHHH", packed)
    return (rows, columns) if rows and columns else None


def _set_window_size(fd: int, size: tuple[int, int]) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


class _Relay:
    """Copies the caller's stdin to the pty's master and the master's output to stdout, in a
    thread of its own, until `finish`: then what the run left in the pty is printed."""

    def __init__(self, master: int, source: int | None, sink: int) -> None:
        self.master = master
        self.source = source
        self.sink = sink
        self.wake_r, self.wake_w = os.pipe()
        self.stopping = False
        self.thread = threading.Thread(target=self._relay, name="terminal", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")
        self.thread.join()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)

    def _relay(self) -> None:
        while True:
            watched = [self.master, self.wake_r]
            if self.source is not None and not self.stopping:
                watched.append(self.source)
            timeout = DRAIN_S if self.stopping else None
            readable, _, _ = select.select(watched, [], [], timeout)
            if not readable:
                return  # stopping, and nothing more came
            if self.wake_r in readable:
                os.read(self.wake_r, 64)
            if self.master in readable and not self._output():
                return
            if self.source is not None and self.source in readable and not self.stopping:
                self._input()

    def _output(self) -> bool:
        """Print what the pty has; False once it has no writer left (EIO on Linux)."""
        try:
            data = os.read(self.master, CHUNK)
        except OSError as error:
            if error.errno == errno.EIO:
                return False
            raise
        if not data:
            return False
        with contextlib.suppress(OSError):  # the caller's terminal went away: drop it
            _write_all(self.sink, data)
        return True

    def _input(self) -> None:
        assert self.source is not None
        try:
            data = os.read(self.source, CHUNK)
        except OSError:
            data = b""
        if not data:  # the caller's input ended: say so to the program inside, once
            self.source = None
            data = EOF_KEY
        with contextlib.suppress(OSError):
            _write_all(self.master, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def terminal_for_run() -> Iterator[Terminal]:
    """A new pty for one run: its slave as the run's `Terminal`, relayed to this process's
    stdin and stdout (see the module's docstring) until the `with` ends, after the run."""
    caller_in = 0 if is_open(0) else None
    caller_tty = caller_in if caller_in is not None and os.isatty(caller_in) else None
    master, slave = os.openpty()
    saved = termios.tcgetattr(caller_tty) if caller_tty is not None else None
    size = _window_size(caller_tty) if caller_tty is not None else None
    _set_window_size(master, size or DEFAULT_SIZE)
    previous_handler = None
    relay: _Relay | None = None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if caller_tty is not None:

            def resized(_signum: int, _frame: FrameType | None) -> None:
                new = _window_size(caller_tty)
                if new is not None:
                    _set_window_size(master, new)

            previous_handler = signal.signal(signal.SIGWINCH, resized)
            tty.setraw(caller_tty, termios.TCSANOW)
        relay = _Relay(master, caller_in, sys.stdout.fileno())
        yield Terminal(slave)
    finally:
        # The run is over: no one else holds the slave (the helper closed its copies, the
        # run's processes are dead), so the master reads end once the output is printed.
        os.close(slave)
        if relay is not None:
            relay.finish()
        if saved is not None and caller_tty is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(caller_tty, termios.TCSADRAIN, saved)
        if previous_handler is not None:
            signal.signal(signal.SIGWINCH, previous_handler)
        os.close(master)
