"""The proxy's HTTP side: `CONNECT host:port` tunnels and absolute-form requests."""

from __future__ import annotations

import contextlib

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteStream
from returns.result import Failure

from mechasandbox.network.httpparse import (
    RequestHead,
    basic_password,
    forward_head,
    parse_absolute_url,
    parse_request_head,
)
from mechasandbox.network.patterns import Target, parse_target
from mechasandbox.network.proxy.core import ProxyCore
from mechasandbox.network.proxy.relay import relay
from mechasandbox.network.proxy.streams import STREAM_ERRORS, SocketStream
from mechasandbox.network.proxy.upstream import Refused, open_upstream

_LINGER_S = 1.0
_LINGER_BYTES = 1024 * 1024
_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


async def serve_http(
    core: ProxyCore, stream: BufferedByteStream, *, needs_auth: bool, over_limit: bool
) -> None:
    """Read one request head, check it, then tunnel (CONNECT) or forward the request."""
    limit = core.settings.max_header_bytes
    raw_head: bytes | None = None
    try:
        with anyio.fail_after(core.settings.handshake_timeout_s):
            raw_head = await stream.receive_until(b"\r\n\r\n", limit)
    except anyio.DelimiterNotFound:
        pass
    except (anyio.IncompleteRead, TimeoutError):
        return
    malformed = "refused a malformed proxy request"
    if raw_head is None or len(raw_head) > limit:  # one read can carry more than limit
        await _refuse(core, stream, malformed, 400, f"request head larger than {limit} bytes")
        return
    parsed = parse_request_head(raw_head)
    if isinstance(parsed, Failure):
        await _refuse(core, stream, malformed, 400, parsed.failure())
        return
    request = parsed.unwrap()
    refused = f"refused {request.method} {request.target[:200]}"
    if over_limit:
        await _refuse(core, stream, refused, 503, core.limit_refusal())
        return
    if needs_auth and not core.token_matches(basic_password(request.header("Proxy-Authorization"))):
        reason = "proxy authentication with this run's token is required"
        challenge = ("Proxy-Authenticate", 'Basic realm="mechasandbox"')
        await _refuse(core, stream, refused, 407, reason, challenge)
        return
    if request.method == "CONNECT":
        await _connect(core, stream, request)
    else:
        await _forward(core, stream, request, refused)


async def _connect(core: ProxyCore, stream: BufferedByteStream, request: RequestHead) -> None:
    target = parse_target(request.target)
    if isinstance(target, Failure):
        await _refuse(core, stream, "refused a malformed CONNECT", 400, target.failure())
        return
    upstream = await _open(core, stream, target.unwrap(), "CONNECT")
    if upstream is None:
        return
    try:
        await stream.send(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    except STREAM_ERRORS:
        await upstream.aclose()
        raise
    await relay(core, stream, upstream)


async def _forward(
    core: ProxyCore, stream: BufferedByteStream, request: RequestHead, refused: str
) -> None:
    forward = parse_absolute_url(request.target)
    if isinstance(forward, Failure):
        await _refuse(core, stream, refused, 400, forward.failure())
        return
    destination = forward.unwrap()
    upstream = await _open(core, stream, destination.target, request.method)
    if upstream is None:
        return
    try:
        await upstream.send(forward_head(request, destination))
    except STREAM_ERRORS:
        await upstream.aclose()
        await _http_reply(stream, 502, f"{destination.target} closed the connection")
        return
    await relay(core, stream, upstream)


async def _open(
    core: ProxyCore, stream: ByteStream, target: Target, verb: str
) -> SocketStream | None:
    """The upstream, or None once the client has been told why there is none."""
    upstream = await open_upstream(core, target, verb)
    if isinstance(upstream, Refused):
        await _http_reply(stream, upstream.status, upstream.reason)
        return None
    return upstream


async def _refuse(
    core: ProxyCore,
    stream: ByteStream,
    refused: str,
    status: int,
    reason: str,
    *extra: tuple[str, str],
) -> None:
    """Record `refused: reason` as a violation and answer the client with the reason."""
    core.refuse(f"{refused}: {reason}")
    await _http_reply(stream, status, reason, *extra)


async def _http_reply(
    stream: ByteStream, status: int, reason: str, *extra: tuple[str, str]
) -> None:
    """A short plain-text answer for the agent; the connection closes after it."""
    body = f"mechasandbox proxy: {reason}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {_PHRASES[status]}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{key}: {value}" for key, value in extra),
    ]
    with contextlib.suppress(*STREAM_ERRORS):
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await _linger(stream)


async def _linger(stream: ByteStream) -> None:
    """Half-close, then drain what the client is still sending, briefly.

    Closing a socket with unread input makes the kernel reset the connection, and the
    client may then lose the answer explaining the refusal before it reads it.
    """
    await stream.send_eof()
    drained = 0
    with anyio.move_on_after(_LINGER_S):
        while drained < _LINGER_BYTES:
            try:
                drained += len(await stream.receive())
            except anyio.EndOfStream:
                return
