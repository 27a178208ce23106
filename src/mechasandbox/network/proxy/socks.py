"""The proxy's SOCKS5 side (RFC 1928 CONNECT, RFC 1929 user/password with the token)."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteStream

from mechasandbox.network.patterns import Target, parse_host
from mechasandbox.network.proxy.core import ProxyCore
from mechasandbox.network.proxy.relay import relay
from mechasandbox.network.proxy.streams import STREAM_ERRORS
from mechasandbox.network.proxy.upstream import Refused, open_upstream

SOCKS_VERSION = 5
_NO_AUTH, _USER_PASS, _NO_METHOD = 0x00, 0x02, 0xFF
_CMD_CONNECT = 0x01
_ATYP_V4, _ATYP_NAME, _ATYP_V6 = 0x01, 0x03, 0x04
# The reply codes of a refused upstream are in `upstream.py`.
_REPLY_OK, _REPLY_FAILURE = 0x00, 0x01
_REPLY_COMMAND, _REPLY_ADDRESS = 0x07, 0x08
_SOCKS_COMMANDS = {0x02: "BIND", 0x03: "UDP ASSOCIATE"}


async def serve_socks(
    core: ProxyCore, stream: BufferedByteStream, *, needs_auth: bool, over_limit: bool
) -> None:
    """Negotiate, check the request, then tunnel a CONNECT; anything else is refused."""
    try:
        with anyio.fail_after(core.settings.handshake_timeout_s):
            request = await _handshake(core, stream, needs_auth)
    except (anyio.IncompleteRead, TimeoutError):
        return
    if request is None:
        return
    command, target_or_reason = request
    if command != _CMD_CONNECT:
        name = _SOCKS_COMMANDS.get(command, f"command {command}")
        core.refuse(f"refused SOCKS5 {name}: only CONNECT is supported")
        await _socks_reply(stream, _REPLY_COMMAND)
        return
    if isinstance(target_or_reason, str):
        core.refuse(f"refused a malformed SOCKS5 request: {target_or_reason}")
        await _socks_reply(stream, _REPLY_ADDRESS)
        return
    if over_limit:
        core.refuse(f"refused SOCKS5 CONNECT {target_or_reason}: {core.limit_refusal()}")
        await _socks_reply(stream, _REPLY_FAILURE)
        return
    upstream = await open_upstream(core, target_or_reason, "SOCKS5 CONNECT")
    if isinstance(upstream, Refused):
        await _socks_reply(stream, upstream.socks_reply)
        return
    try:
        await _socks_reply(stream, _REPLY_OK)
    except STREAM_ERRORS:
        await upstream.aclose()
        raise
    await relay(core, stream, upstream)


async def _handshake(
    core: ProxyCore, stream: BufferedByteStream, needs_auth: bool
) -> tuple[int, Target | str] | None:
    """Method negotiation, optional user/password, then the request. None: refused."""
    if not await _authenticate(core, stream, needs_auth):
        return None
    version, command, _, address_type = await stream.receive_exactly(4)
    if version != SOCKS_VERSION:
        return command, f"version {version} in the request"
    host = await _socks_address(stream, address_type)
    (port,) = struct.unpack("!H", await stream.receive_exactly(2))
    if host is None:
        return command, f"unknown address type {address_type}"
    if port == 0:
        return command, "port 0"
    parsed = parse_host(host)
    if isinstance(parsed, str):
        return command, parsed
    name, address = parsed
    return command, Target(name=name, address=address, port=port)


async def _authenticate(core: ProxyCore, stream: BufferedByteStream, needs_auth: bool) -> bool:
    """RFC 1928 method choice and RFC 1929 user/password (the password is the token)."""
    _, count = await stream.receive_exactly(2)
    methods = await stream.receive_exactly(count)
    if _NO_AUTH in methods and not needs_auth:
        method = _NO_AUTH
    elif _USER_PASS in methods:
        method = _USER_PASS
    else:
        core.refuse(
            "refused a SOCKS5 client: username/password authentication with this "
            "run's token is required"
        )
        await stream.send(bytes((SOCKS_VERSION, _NO_METHOD)))
        return False
    await stream.send(bytes((SOCKS_VERSION, method)))
    if method == _NO_AUTH:
        return True
    _, user_length = await stream.receive_exactly(2)
    await stream.receive_exactly(user_length)
    (password_length,) = await stream.receive_exactly(1)
    ok = core.token_matches(await stream.receive_exactly(password_length))
    await stream.send(bytes((1, 0 if ok else 1)))
    if not ok:
        core.refuse("refused a SOCKS5 client: wrong proxy credentials")
    return ok


async def _socks_address(stream: BufferedByteStream, address_type: int) -> str | None:
    """The destination as text (a name is checked later like any other host)."""
    if address_type == _ATYP_V4:
        return str(ipaddress.IPv4Address(await stream.receive_exactly(4)))
    if address_type == _ATYP_V6:
        return str(ipaddress.IPv6Address(await stream.receive_exactly(16)))
    if address_type == _ATYP_NAME:
        (length,) = await stream.receive_exactly(1)
        return (await stream.receive_exactly(length)).decode("latin-1")
    return None


async def _socks_reply(stream: ByteStream, code: int) -> None:
    # The bound address is not meaningful through a unix socket: report 0.0.0.0:0.
    with contextlib.suppress(*STREAM_ERRORS):
        await stream.send(bytes((SOCKS_VERSION, code, 0, _ATYP_V4, 0, 0, 0, 0, 0, 0)))
