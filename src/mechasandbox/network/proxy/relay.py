"""Relaying an open tunnel: on the event loop first, then (Linux) in a splice thread."""

from __future__ import annotations

import contextlib
import math
import socket

import anyio
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint
from anyio.streams.buffered import BufferedByteStream

from mechasandbox.network.proxy.core import ProxyCore
from mechasandbox.network.proxy.splice import CAN_SPLICE, Tunnel
from mechasandbox.network.proxy.streams import SocketStream, send_all

_LOOP_READ_BYTES = 64 * 1024


async def relay(core: ProxyCore, client: BufferedByteStream, upstream: SocketStream) -> None:
    """Copy bytes both ways until both sides finish or nothing moves for idle_timeout.

    Half-closes are passed on (EOF from one side shuts down the sending side of the
    other), so request/response protocols that shut down their sending side still
    work; a failure on either side ends the tunnel both ways. The bytes the handshake
    parser read ahead go first.

    A tunnel starts on the event loop (`_LoopRelay`), which takes no thread or pipe,
    so short connections never leave it. Once it has carried `splice_after_bytes`
    (and on Linux only), it moves to one worker thread that splices both directions
    in the kernel (`Tunnel`).
    """
    core.counters.tunnels += 1
    raw = client.receive_stream
    if not isinstance(raw, SocketStream):
        raise TypeError("the proxy relays only its own socket streams")
    async with upstream:
        loop_relay = _LoopRelay(core, raw.socket, upstream.socket)
        with loop_relay.idle_scope:
            while client.buffer:
                data = await client.receive(core.settings.relay_chunk_bytes)
                await upstream.send(data)
                core.add_bytes(len(data), up=True)
            await loop_relay.run()
        if loop_relay.idle_scope.cancelled_caught:
            core.count_idle_close()
            return
        if loop_relay.switching and not loop_relay.failed and any(loop_relay.open.values()):
            await _splice_relay(core, raw.socket, upstream.socket, loop_relay.open)


async def _splice_relay(
    core: ProxyCore, client: socket.socket, upstream: socket.socket, still_open: dict[bool, bool]
) -> None:
    """Run the tunnel's splice thread; cancellation shuts both sockets down."""
    core.counters.spliced += 1
    tunnel = Tunnel(core, client, upstream, up=still_open[True], down=still_open[False])

    async def stop_when_cancelled() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            tunnel.stop()

    async with anyio.create_task_group() as group:
        group.start_soon(stop_when_cancelled)
        await anyio.to_thread.run_sync(tunnel.run, limiter=core.relay_threads)
        group.cancel_scope.cancel()


class _LoopRelay:
    """A tunnel relayed by the event loop: one pump per direction, no thread.

    Each pump tries `recv` first and waits for readability only when the socket is
    empty, then sends the chunk whole before reading again, so no byte is ever held
    here between chunks. `idle_scope` ends the relay when nothing has moved for the idle
    timeout. When the tunnel has carried `splice_after_bytes`, the pump that noticed
    sets `switching` and cancels the other pump's wait for input (never a send); both
    then return, and `open` tells which directions still await their EOF.
    """

    def __init__(self, core: ProxyCore, client: socket.socket, upstream: socket.socket) -> None:
        settings = core.settings
        self._core = core
        self._client = client
        self._upstream = upstream
        # Small reads: recv allocates its whole size first, which costs far more above
        # the allocator's mmap threshold; bulk transfers move to splicing anyway.
        self._chunk = min(settings.relay_chunk_bytes, _LOOP_READ_BYTES)
        self._idle = settings.idle_timeout_s
        self._splice_after = settings.splice_after_bytes if CAN_SPLICE else math.inf
        self._moved = 0
        self._waits: dict[bool, anyio.CancelScope] = {}
        self._group: TaskGroup | None = None
        self.idle_scope = anyio.CancelScope(deadline=anyio.current_time() + self._idle)
        self.open = {True: True, False: True}
        self.switching = False
        self.failed = False

    async def run(self) -> None:
        if self._moved >= self._splice_after:
            self.switching = True
            return
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._pump, self._client, self._upstream, True)
            await self._pump(self._upstream, self._client, False)

    def _switch(self) -> None:
        self.switching = True
        for wait in self._waits.values():
            wait.cancel()

    async def _pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        try:
            while not self.switching:
                try:
                    data = source.recv(self._chunk)
                except BlockingIOError:
                    with anyio.CancelScope() as wait:
                        self._waits[up] = wait
                        await anyio.wait_readable(source)
                    del self._waits[up]
                    continue
                if not data:
                    self.open[up] = False
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                await send_all(sink, data)
                self._core.add_bytes(len(data), up)
                self.idle_scope.deadline = anyio.current_time() + self._idle
                self._moved += len(data)
                if self._moved >= self._splice_after:
                    self._switch()
                else:
                    await checkpoint()  # a busy tunnel must not starve the others
        except OSError:
            self.failed = True
            assert self._group is not None
            self._group.cancel_scope.cancel()
