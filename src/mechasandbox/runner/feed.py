"""The run's stdin as both helper runners write it: the spec's bytes, or what a caller's
descriptor gives (`StreamedInput`), passed on to the run's own pipe as the command takes
it. Like `supervision`, it decides and its runner waits (`runner`: anyio; `blocking`: one
`select` loop); unlike it, it reads and writes (the descriptors are the run's).

Bounded: one chunk of the source is read only once the pipe took the last one, so what a
command does not read stays where it is. Never in the way of the run's end: the runner
stops feeding once the run is over, whatever the source still holds (`sleep 100 | ...`)
or the pipe still refuses (a command that never reads). A descriptor that cannot be
waited for (a regular file, /dev/null: their reads never block) is read without waiting.
"""

from __future__ import annotations

import contextlib
import os
import stat

from mechasandbox.domain.request import StreamedInput, Terminal

# The pipe's own capacity on Linux: a chunk read is usually written at once.
CHUNK = 64 * 1024


def pollable(fd: int) -> bool:
    """Whether a read of `fd` can block: a pipe, a socket, a terminal. (Only those can be
    waited for: epoll refuses regular files, and kqueue does not report their end.)"""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False  # read at once: its error ends the input
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


class StdinPipe:
    """The host's end of a run's stdin (`fd`, non-blocking; None: the run has /dev/null):
    closed once all the input is written, unless `hold` (`SpawnSpec.hold_stdin`: it then
    stays open until the run is over), and by `close` in any case."""

    def __init__(self, fd: int | None, *, hold: bool = False) -> None:
        self.fd = fd
        self.hold = hold

    def write(self, pending: memoryview) -> memoryview:
        """Write what of `pending` the pipe takes now; the rest. Once the command stopped
        reading (no reader left: not an error of ours), the pipe is closed and nothing is
        left."""
        if self.fd is None or not pending:
            return pending[:0]
        try:
            written = os.write(self.fd, pending)
        except BlockingIOError:
            return pending
        except BrokenPipeError:
            self.close()
            return pending[:0]
        return pending[written:]

    def written(self) -> None:
        """All the input is written."""
        if not self.hold:
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class InputFeed:
    """What is left to write to `pipe` (`pending`) and where more comes from (`source`, a
    descriptor; None: nothing more). Its driver writes when `wants_pipe` (once `pipe.fd`
    is writable), reads when `wants_source` (once `source` is readable, or at once unless
    `polled`), and stops when neither (`done`) or when the run is over."""

    def __init__(self, pipe: StdinPipe, stdin: bytes | StreamedInput | Terminal | None) -> None:
        self.pipe = pipe
        self.pending = memoryview(stdin if isinstance(stdin, bytes) else b"")
        self.source = stdin.fd if isinstance(stdin, StreamedInput) else None
        self.polled = self.source is not None and pollable(self.source)
        self._ended_if_written()

    def wants_pipe(self) -> bool:
        return bool(self.pending) and self.pipe.fd is not None

    def wants_source(self) -> bool:
        return self.source is not None and not self.pending and self.pipe.fd is not None

    @property
    def done(self) -> bool:
        return not (self.wants_pipe() or self.wants_source())

    def write_pipe(self) -> None:
        """The pipe is writable: write what it takes."""
        self.pending = self.pipe.write(self.pending)
        self._ended_if_written()

    def read_source(self) -> None:
        """The source is readable (or needs no waiting): read a chunk. Its end, or an error
        (a terminal that went away), ends the input."""
        if self.source is None:
            return
        try:
            data = os.read(self.source, CHUNK)
        except BlockingIOError:
            return  # another reader of the caller's took what there was: wait again
        except OSError:
            data = b""
        if data:
            self.pending = memoryview(data)
        else:
            self.source = None
            self._ended_if_written()

    def _ended_if_written(self) -> None:
        if not self.pending and self.source is None:
            self.pipe.written()
