"""The proxy's own non-blocking sockets: client and upstream streams, sending, connecting."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.lowlevel import checkpoint_if_cancelled

from mechasandbox.network.patterns import IPAddress

# What a stream raises when its peer went away or it was closed: nothing to answer then.
STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class SocketStream(ByteStream):
    """A connected non-blocking socket owned by the proxy.

    Every call tries the system call first and waits on the event loop only when it would
    block, so a request that has already arrived costs one `recv`. Nothing is ever read
    ahead here: bytes the proxy has not asked for stay in the kernel, where the relay
    (or a splice) finds them.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {SocketAttribute.raw_socket: lambda: self.socket}

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await checkpoint_if_cancelled()
        while True:
            try:
                data = self.socket.recv(max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self.socket)
                continue
            except OSError as error:
                raise _stream_error(self.socket, error) from error
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        await checkpoint_if_cancelled()
        try:
            await send_all(self.socket, item)
        except OSError as error:
            raise _stream_error(self.socket, error) from error

    async def send_eof(self) -> None:
        await checkpoint_if_cancelled()
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as error:
            raise _stream_error(self.socket, error) from error

    async def aclose(self) -> None:
        self.socket.close()


def _stream_error(sock: socket.socket, error: OSError) -> Exception:
    if sock.fileno() < 0:
        return anyio.ClosedResourceError()
    return anyio.BrokenResourceError(str(error))


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Send every byte of data, waiting on the loop only when the socket is full."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    view = memoryview(data)[sent:]
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]


def _ready_now(sock: socket.socket, event: int) -> bool:
    """Whether poll(2) reports `event` (or an error) on the socket without waiting."""
    poller = select.poll()
    poller.register(sock, event)
    return bool(poller.poll(0))


async def connect_tcp(address: IPAddress, port: int) -> SocketStream:
    """A non-blocking TCP connection to one address (no resolution: it is an address)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((str(address), port))
        except BlockingIOError:
            # A connection within the host is often complete already: look before
            # handing the wait to the event loop, which costs a pass through it.
            if not _ready_now(sock, select.POLLOUT):
                await anyio.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error)) from None
    except BaseException:
        sock.close()
        raise
    return SocketStream(sock)
