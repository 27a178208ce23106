"""Length-prefixed JSON frames over a unix stream socket, with file descriptors attached.

Shared by the spawn helper and its client. Stream sockets (not SEQPACKET) because macOS
has no SEQPACKET unix sockets. File descriptors travel with a frame's first byte.
"""

from __future__ import annotations

import array
import json
import socket
import struct

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the spawn helper does not import `typing`
if TYPE_CHECKING:
    from typing import Any

# The environment variable that gives the spawn helper its control socket's descriptor
# (here, not in `helper`, so that the host does not import the helper's ctypes).
CONTROL_FD_ENV = "MECHASANDBOX_HELPER_FD"
_HEADER = struct.Struct("!I")
MAX_FRAME = 8 * 1024 * 1024
MAX_FDS = 64


class FrameError(Exception):
    """The peer closed the socket or sent something that is not a frame."""


class PeerClosed(FrameError):
    """The peer closed the socket."""


def encode_text(value: Any) -> str:
    """The JSON text frames carry `value` as."""
    return json.dumps(value, separators=(",", ":"))


def encode(message: dict[str, Any]) -> bytes:
    payload = encode_text(message).encode()
    if len(payload) > MAX_FRAME:
        raise FrameError(f"message of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(payload)) + payload


def rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """The ancillary data that passes `fds` with a `sendmsg` (none for no fds)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    send_frame(sock, encode(message), fds)


def send_frame(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    """Send an encoded frame whole, `fds` with its first byte."""
    sent = sock.sendmsg([data], rights(fds or []))
    if sent < len(data):
        sock.sendall(data[sent:])


def _recv_exact(sock: socket.socket, count: int, fds: list[int]) -> bytes:
    chunks: list[bytes] = []
    remaining = count
    while remaining:
        data, ancillary, _flags, _addr = sock.recvmsg(remaining, socket.CMSG_SPACE(MAX_FDS * 4))
        for level, kind, blob in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(blob[: len(blob) - (len(blob) % received.itemsize)])
                fds.extend(received)
        if not data:
            raise PeerClosed("peer closed the socket")
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


def receive_frame(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Read one whole frame (header included) from a blocking socket, and any fds."""
    fds: list[int] = []
    header = _recv_exact(sock, _HEADER.size, fds)
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return header + _recv_exact(sock, length, fds), fds


def decode(frame: bytes) -> dict[str, Any]:
    message = json.loads(frame[_HEADER.size :])
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    return message


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Read one frame from a blocking socket; returns the message and any attached fds."""
    frame, fds = receive_frame(sock)
    return decode(frame), fds
