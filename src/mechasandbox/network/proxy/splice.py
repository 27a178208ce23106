"""The splice relay: one worker thread moves a tunnel's bytes in the kernel (Linux).

A tunnel starts on the event loop (`relay.py`); once it has carried `splice_after_bytes`
it moves here, to `splice(2)` through a pipe per direction, which copies nothing through
the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import select
import socket
import threading
import time

import attrs

from mechasandbox.network.proxy.core import ProxyCore

CAN_SPLICE = hasattr(os, "splice") and hasattr(select, "poll")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
# Each direction's pipe: Linux's default pipe-max-size. A pipe four times the size of the
# earlier 256 KiB halved the splice calls per megabyte and cut the thread's CPU time per
# megabyte by about a third in the proxy bench. Past the user's pipe allowance
# (pipe-user-pages-soft), the kernel keeps its small default; the relay works the same.
_PIPE_BYTES = 1024 * 1024
_POLL_READ = select.POLLIN | select.POLLHUP | select.POLLERR
_POLL_WRITE = select.POLLOUT | select.POLLHUP | select.POLLERR
# The send buffer a unix socket sink gets for splicing (where wmem_max allows): with
# Linux's default of 208 KiB, the thread waited for the reader about three times as often
# in the proxy bench, and throughput was lower by a tenth to a third.
_UNIX_SEND_BUFFER = 512 * 1024


@attrs.define
class _Direction:
    """One way through a tunnel: source socket -> pipe -> sink socket.

    `readable` and `writable` say whether the next splice from the source, or to the
    sink, is worth trying before poll(2) says so: a splice that would block, or moved
    less than asked, clears them.
    """

    source: socket.socket
    sink: socket.socket
    up: bool
    source_fd: int = attrs.field(init=False)
    sink_fd: int = attrs.field(init=False)
    pipe_out: int = -1
    pipe_in: int = -1
    pending: int = 0
    eof: bool = False
    readable: bool = True
    writable: bool = True
    done: bool = False

    def __attrs_post_init__(self) -> None:
        self.source_fd = self.source.fileno()
        self.sink_fd = self.sink.fileno()


def _raise_send_buffer(sock: socket.socket) -> None:
    """Give a unix socket sink a larger send buffer, within the host's wmem_max.

    TCP sockets are left alone: their buffers grow by themselves, and setting one would
    stop that.
    """
    if sock.family != socket.AF_UNIX:
        return
    with contextlib.suppress(OSError):
        # Linux reports twice the size set (the rest is its bookkeeping).
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 2 * _UNIX_SEND_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _UNIX_SEND_BUFFER)


class Tunnel:
    """One worker thread splicing both directions of a tunnel through a pipe each.

    Both sockets are non-blocking. The thread moves whatever can move without waiting
    (socket -> pipe, pipe -> socket, both directions), and once nothing can, waits in
    poll(2) for what it needs: the sink when its pipe holds bytes, the source when the
    pipe is empty. It never retries a side that just would have blocked before poll
    reports it ready, so a tunnel whose reader is slower than its writer sleeps instead
    of spinning. The wait is bounded by the time left before the idle timeout, so a quiet
    tunnel ends without help from the loop; `stop` shuts both sockets down, which wakes
    the poll at once.
    """

    def __init__(
        self,
        core: ProxyCore,
        client: socket.socket,
        upstream: socket.socket,
        *,
        up: bool,
        down: bool,
    ) -> None:
        self._core = core
        self._sockets = (client, upstream)
        self._lock = threading.Lock()
        self._stopped = False
        self._idle = core.settings.idle_timeout_s
        self._directions = [
            direction
            for direction, still_open in (
                (_Direction(client, upstream, up=True), up),
                (_Direction(upstream, client, up=False), down),
            )
            if still_open
        ]
        self.last = time.monotonic()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        pipe_bytes = _PIPE_BYTES
        try:
            for direction in self._directions:
                direction.pipe_out, direction.pipe_in = os.pipe()
                with contextlib.suppress(OSError):
                    fcntl.fcntl(direction.pipe_in, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
                # The kernel may round up, or refuse past the user's pipe allowance.
                pipe_bytes = min(pipe_bytes, fcntl.fcntl(direction.pipe_in, fcntl.F_GETPIPE_SZ))
                _raise_send_buffer(direction.sink)
            self._relay(pipe_bytes)
        except OSError:
            self.stop()  # one side failed: end the tunnel both ways
        finally:
            for direction in self._directions:
                for fd in (direction.pipe_out, direction.pipe_in):
                    if fd >= 0:
                        os.close(fd)

    def _relay(self, pipe_bytes: int) -> None:
        active = list(self._directions)
        while active:
            moved = False
            for direction in active:
                moved = self._move(direction, pipe_bytes) or moved
            if moved:
                self.last = time.monotonic()
                active = [d for d in active if not d.done]
            elif not self._wait(active):
                return

    def _move(self, direction: _Direction, pipe_bytes: int) -> bool:
        """Splice what can move without blocking (source -> pipe -> sink); True if any.

        Runs on every wake-up, so it is kept lean: positional arguments (parsing keyword
        arguments costs more than the rest of the call) and fields over properties.
        """
        moved = False
        if direction.readable and not direction.eof and direction.pending < pipe_bytes:
            room = pipe_bytes - direction.pending
            try:
                size = os.splice(
                    direction.source_fd, direction.pipe_in, room, None, None, _SPLICE_FLAGS
                )
            except BlockingIOError:
                direction.readable = False
            else:
                moved = True
                if size == 0:
                    direction.eof = True
                else:
                    # Less than asked: the socket is empty (or the pipe out of slots).
                    direction.readable = size == room
                    direction.pending += size
                    self._core.add_bytes(size, direction.up)
        if direction.writable and direction.pending:
            try:
                size = os.splice(
                    direction.pipe_out,
                    direction.sink_fd,
                    direction.pending,
                    None,
                    None,
                    _SPLICE_FLAGS,
                )
            except BlockingIOError:
                direction.writable = False
            else:
                moved = moved or size > 0
                direction.pending -= size
                if direction.pending:
                    direction.writable = False  # the sink is full
                else:
                    direction.readable = True  # room again: worth a try before polling
        if direction.eof and not direction.pending:
            direction.done = True
            with contextlib.suppress(OSError):
                direction.sink.shutdown(socket.SHUT_WR)
        return moved

    def _wait(self, active: list[_Direction]) -> bool:
        """True when something may move; False when stopped or idle for too long.

        Waits for the sink of a direction whose pipe holds bytes, else for its source:
        a splice from a socket into an empty pipe only blocks when the socket is empty.
        """
        events: dict[int, int] = {}
        for direction in active:
            if direction.pending:
                fd, event = direction.sink_fd, select.POLLOUT
            else:
                fd, event = direction.source_fd, select.POLLIN
            events[fd] = events.get(fd, 0) | event
        poller = select.poll()
        for fd, mask in events.items():
            poller.register(fd, mask)
        while not self._stopped:
            remaining = self.last + self._idle - time.monotonic()
            if remaining <= 0:
                with self._lock:
                    idle = not self._stopped
                if idle:
                    self._core.count_idle_close()
                    self.stop()
                return False
            ready = dict(poller.poll(math.ceil(min(remaining, 3600.0) * 1000)))
            if ready:
                for direction in active:
                    # Errors and hang-ups count as ready: the splice then reports them.
                    if ready.get(direction.source_fd, 0) & _POLL_READ:
                        direction.readable = True
                    if ready.get(direction.sink_fd, 0) & _POLL_WRITE:
                        direction.writable = True
                return not self._stopped
        return False
