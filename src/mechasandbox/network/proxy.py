"""The egress proxy: HTTP (absolute-form and CONNECT) and SOCKS5 on one listener.

Sandboxes in `allowlist` mode have no route out; they reach this proxy through a unix
socket bind-mounted into the sandbox (and, optionally, a loopback TCP port guarded by a
per-run token). For every connection the proxy

1. decides from the requested target alone (`Allowlist`), never from anything the
   upstream says later, so an allowed host that is itself a proxy cannot steer *this*
   proxy elsewhere; bytes inside a tunnel are only bytes to that one upstream;
2. resolves an allowed name once through the injected `Resolver`, checks every address
   (`check_address`), and connects to an address that passed; there is no second
   lookup for a rebinding attacker to answer differently;
3. records each refusal as a `Violation(kind="network")` worded for the agent.

The protocol is chosen by the first byte: 0x05 is SOCKS5, anything else is HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import ipaddress
import math
import os
import secrets
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

import anyio
import attrs
from anyio.abc import ByteStream, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteStream
from returns.result import Failure

from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import NetworkMode, NetworkPolicy
from mechasandbox.domain.result import Violation
from mechasandbox.network.addresses import (
    AddressRules,
    InterfaceAddresses,
    check_address,
    host_interface_addresses,
)
from mechasandbox.network.httpparse import (
    RequestHead,
    basic_password,
    forward_head,
    parse_absolute_url,
    parse_request_head,
)
from mechasandbox.network.patterns import (
    Allowlist,
    IPAddress,
    Target,
    compile_allowlist,
    parse_host,
    parse_target,
)

_LINGER_S = 1.0
_LINGER_BYTES = 1024 * 1024
_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# SOCKS5 (RFC 1928 / RFC 1929) constants.
_SOCKS_VERSION = 5
_NO_AUTH, _USER_PASS, _NO_METHOD = 0x00, 0x02, 0xFF
_CMD_CONNECT = 0x01
_ATYP_V4, _ATYP_NAME, _ATYP_V6 = 0x01, 0x03, 0x04
_REPLY_OK, _REPLY_FAILURE, _REPLY_RULESET = 0x00, 0x01, 0x02
_REPLY_UNREACHABLE, _REPLY_REFUSED = 0x04, 0x05
_REPLY_COMMAND, _REPLY_ADDRESS = 0x07, 0x08
_SOCKS_COMMANDS = {0x02: "BIND", 0x03: "UDP ASSOCIATE"}


class Resolver(Protocol):
    """Turns a host name into addresses. Injected so tests never touch real DNS."""

    async def resolve(self, host: str) -> Sequence[IPAddress]: ...


class SystemResolver:
    """The host's resolver (`getaddrinfo` in a worker thread)."""

    async def resolve(self, host: str) -> Sequence[IPAddress]:
        infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        found: dict[IPAddress, None] = {}
        for info in infos:
            text = str(info[4][0]).split("%", 1)[0]
            found[ipaddress.ip_address(text)] = None
        return tuple(found)


class InvalidProxyPolicyError(ValueError):
    """The policy's patterns do not parse; validate with `compile_allowlist` first."""

    def __init__(self, error: ConfigInvalid) -> None:
        super().__init__(error.message)
        self.error = error


@attrs.frozen(kw_only=True)
class ProxySettings:
    """Bounds on what one run's proxy will do; the defaults suit package installs."""

    max_connections: int = 128
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    handshake_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    max_violations: int = 1000
    relay_chunk_bytes: int = 256 * 1024
    listen_tcp: bool = False
    socket_mode: int = 0o600


@attrs.frozen(kw_only=True)
class ProxyStats:
    accepted: int
    active: int
    refused: int
    tunnels: int
    upstream_failures: int
    idle_closed: int
    internal_errors: int
    bytes_up: int
    bytes_down: int
    violations_dropped: int


@attrs.define
class _Counters:
    accepted: int = 0
    active: int = 0
    over_limit: int = 0
    refused: int = 0
    tunnels: int = 0
    upstream_failures: int = 0
    idle_closed: int = 0
    internal_errors: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    violations_dropped: int = 0


@attrs.frozen(kw_only=True)
class _Refused:
    """Why no upstream was opened, with the matching HTTP status and SOCKS5 reply code."""

    status: int
    socks_reply: int
    reason: str


class _ProxyCore:
    """Per-run state shared by every connection: policy, counters and violations."""

    def __init__(
        self,
        *,
        policy: NetworkPolicy,
        allowlist: Allowlist,
        rules: AddressRules,
        resolver: Resolver,
        settings: ProxySettings,
        token: str,
    ) -> None:
        self.mode = policy.mode
        self.allowlist = allowlist
        self.rules = rules
        self.resolver = resolver
        self.settings = settings
        self.token = token.encode()
        self.counters = _Counters()
        self.counters_lock = threading.Lock()
        # Two relay threads per tunnel at most; anyio's default limiter (40) would make
        # tunnels wait for each other.
        self.relay_threads = anyio.CapacityLimiter(2 * settings.max_connections)
        self.violations: list[Violation] = []

    # -- bookkeeping ---------------------------------------------------------------

    def refuse(self, detail: str) -> None:
        self.counters.refused += 1
        if len(self.violations) >= self.settings.max_violations:
            self.counters.violations_dropped += 1
            return
        self.violations.append(Violation(kind="network", detail=detail))

    def token_matches(self, password: bytes | None) -> bool:
        return password is not None and hmac.compare_digest(password, self.token)

    # -- connections ---------------------------------------------------------------

    async def handle(self, raw: ByteStream, *, needs_auth: bool) -> None:
        """Serve one client connection; never raises (a crash here would stop the server)."""
        counters = self.counters
        counters.accepted += 1
        over_limit = counters.active >= self.settings.max_connections
        if over_limit:
            if counters.over_limit >= self.settings.max_connections:
                await raw.aclose()  # far over the bound: do not even read the request
                self.refuse("refused a connection: too many open proxy connections")
                return
            counters.over_limit += 1
        else:
            counters.active += 1
        try:
            async with raw:
                await self._dispatch(BufferedByteStream(raw), needs_auth, over_limit)
        except _STREAM_ERRORS:
            pass  # the client went away; nothing to answer
        except Exception:
            counters.internal_errors += 1
        finally:
            if over_limit:
                counters.over_limit -= 1
            else:
                counters.active -= 1

    async def _dispatch(self, stream: BufferedByteStream, needs_auth: bool, over: bool) -> None:
        first = b""
        with anyio.move_on_after(self.settings.handshake_timeout_s):
            first = await stream.receive()
        if not first:
            return
        stream.feed_data(first)
        if first[0] == _SOCKS_VERSION:
            await self._socks(stream, needs_auth=needs_auth, over_limit=over)
        else:
            await self._http(stream, needs_auth=needs_auth, over_limit=over)

    def _limit_refusal(self) -> str:
        return (
            f"too many open proxy connections (limit {self.settings.max_connections}); "
            "retry when some have finished"
        )

    # -- upstream ------------------------------------------------------------------

    async def open_upstream(self, target: Target, verb: str) -> ByteStream | _Refused:
        """Decide, resolve once, check every address, connect to one that passed."""
        blocked = f"blocked {verb} {target}"
        if self.mode is NetworkMode.NONE:
            reason = "network access is off for this run (--network none)"
            self.refuse(f"{blocked}: {reason}")
            return _Refused(status=403, socks_reply=_REPLY_RULESET, reason=reason)
        if self.mode is NetworkMode.ALLOWLIST:
            decision = self.allowlist.decide_target(target)
            if not decision.allowed:
                self.refuse(f"{blocked}: {decision.reason}")
                return _Refused(status=403, socks_reply=_REPLY_RULESET, reason=decision.reason)
        addresses = await self._resolve(target)
        if isinstance(addresses, _Refused):
            return addresses
        passed: list[IPAddress] = []
        first_problem = ""
        for address in addresses:
            verdict = check_address(
                address, target.port, allowlist=self.allowlist, rules=self.rules
            )
            if verdict.allowed:
                passed.append(address)
            elif not first_problem:
                first_problem = verdict.reason
        if not passed:
            self.refuse(f"{blocked}: {first_problem}")
            return _Refused(status=403, socks_reply=_REPLY_RULESET, reason=first_problem)
        return await self._connect(target, passed)

    async def _resolve(self, target: Target) -> Sequence[IPAddress] | _Refused:
        if target.address is not None:
            return (target.address,)
        assert target.name is not None
        try:
            with anyio.fail_after(self.settings.connect_timeout_s):
                addresses = await self.resolver.resolve(target.name)
        except TimeoutError:
            reason = f"resolving {target.name} timed out"
            return self._upstream_failed(504, _REPLY_UNREACHABLE, reason)
        except OSError as error:
            reason = f"cannot resolve {target.name}: {error}"
            return self._upstream_failed(502, _REPLY_UNREACHABLE, reason)
        if not addresses:
            reason = f"{target.name} has no addresses"
            return self._upstream_failed(502, _REPLY_UNREACHABLE, reason)
        return addresses

    async def _connect(
        self, target: Target, addresses: Sequence[IPAddress]
    ) -> ByteStream | _Refused:
        last_error: OSError | None = None
        with anyio.move_on_after(self.settings.connect_timeout_s):
            for address in addresses:
                try:
                    return await anyio.connect_tcp(address, target.port)
                except OSError as error:
                    last_error = error
        if last_error is None:
            reason = f"connecting to {target} timed out after {self.settings.connect_timeout_s:g}s"
            return self._upstream_failed(504, _REPLY_UNREACHABLE, reason)
        reason = f"cannot connect to {target}: {last_error}"
        return self._upstream_failed(502, _REPLY_REFUSED, reason)

    def _upstream_failed(self, status: int, reply: int, reason: str) -> _Refused:
        self.counters.upstream_failures += 1
        return _Refused(status=status, socks_reply=reply, reason=reason)

    # -- relay ---------------------------------------------------------------------

    async def relay(self, client: ByteStream, upstream: ByteStream) -> None:
        """Copy bytes both ways until both sides finish or nothing moves for idle_timeout.

        Half-closes are passed on (EOF from one side becomes send_eof on the other), so
        request/response protocols that shut down their sending side still work.

        On Linux, once the bytes already read into this process are passed on, the two
        sockets are spliced in the kernel by two worker threads (`_splice_relay`);
        elsewhere, or when the streams are not plain sockets, bytes go through the loop.
        """
        self.counters.tunnels += 1
        async with upstream:
            sockets = await self._hand_over(client, upstream)
            if sockets is None:
                await self._stream_relay(client, upstream)
                return
            if not sockets:
                return  # the idle timeout passed while handing over
            try:
                await self._splice_relay(*sockets)
            finally:
                for sock in sockets:
                    sock.close()

    async def _hand_over(
        self, client: ByteStream, upstream: ByteStream
    ) -> tuple[socket.socket, socket.socket] | tuple[()] | None:
        """Pass on every byte held in this process, then duplicate both sockets.

        None: relay through the loop (no splice, or bytes may be held where they cannot
        be seen). An empty tuple: nothing moved for idle_timeout while passing bytes on.
        """
        if not hasattr(os, "splice"):
            return None
        counters = self.counters
        with anyio.move_on_after(self.settings.idle_timeout_s):
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                while True:
                    pending = _holds_bytes(source)
                    if pending is None:
                        return None
                    if not pending:
                        break
                    data = await source.receive(self.settings.relay_chunk_bytes)
                    await sink.send(data)
                    if up:
                        counters.bytes_up += len(data)
                    else:
                        counters.bytes_down += len(data)
            try:
                duplicates = [
                    stream.extra(SocketAttribute.raw_socket).dup()  # noqa: S610 (anyio, not SQL)
                    for stream in (client, upstream)
                ]
            except (anyio.TypedAttributeLookupError, OSError):
                return None
            for sock in duplicates:
                sock.setblocking(False)
            return duplicates[0], duplicates[1]
        counters.idle_closed += 1
        return ()

    async def _splice_relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Run one splice thread per direction; cancellation shuts both sockets down."""
        tunnel = _Tunnel(self, client, upstream)
        limiter = self.relay_threads

        async def pump(source: socket.socket, sink: socket.socket, up: bool) -> None:
            await anyio.to_thread.run_sync(tunnel.pump, source, sink, up, limiter=limiter)

        async def stop_when_cancelled() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                tunnel.stop()

        async with anyio.create_task_group() as group:
            group.start_soon(stop_when_cancelled)
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(pump, client, upstream, True)
                pumps.start_soon(pump, upstream, client, False)
            group.cancel_scope.cancel()

    async def _stream_relay(self, client: ByteStream, upstream: ByteStream) -> None:
        counters = self.counters
        chunk = self.settings.relay_chunk_bytes
        idle = self.settings.idle_timeout_s
        state = {"last": anyio.current_time(), "open": 2}

        async with anyio.create_task_group() as group:

            async def pump(source: ByteStream, sink: ByteStream, up: bool) -> None:
                try:
                    while True:
                        try:
                            data = await source.receive(chunk)
                        except anyio.EndOfStream:
                            break
                        state["last"] = anyio.current_time()
                        await sink.send(data)
                        if up:
                            counters.bytes_up += len(data)
                        else:
                            counters.bytes_down += len(data)
                    with contextlib.suppress(*_STREAM_ERRORS):
                        await sink.send_eof()
                except _STREAM_ERRORS:
                    group.cancel_scope.cancel()
                    return
                state["open"] -= 1
                if state["open"] == 0:
                    group.cancel_scope.cancel()

            async def watchdog() -> None:
                while True:
                    remaining = state["last"] + idle - anyio.current_time()
                    if remaining <= 0:
                        counters.idle_closed += 1
                        group.cancel_scope.cancel()
                        return
                    await anyio.sleep(remaining)

            group.start_soon(pump, client, upstream, True)
            group.start_soon(pump, upstream, client, False)
            group.start_soon(watchdog)

    # -- HTTP ----------------------------------------------------------------------

    async def _http(
        self, stream: BufferedByteStream, *, needs_auth: bool, over_limit: bool
    ) -> None:
        limit = self.settings.max_header_bytes
        raw_head: bytes | None = None
        try:
            with anyio.fail_after(self.settings.handshake_timeout_s):
                raw_head = await stream.receive_until(b"\r\n\r\n", limit)
        except anyio.DelimiterNotFound:
            pass
        except (anyio.IncompleteRead, TimeoutError):
            return
        if raw_head is None or len(raw_head) > limit:  # one read can carry more than limit
            reason = f"request head larger than {limit} bytes"
            self.refuse(f"refused a malformed proxy request: {reason}")
            await _http_reply(stream, 400, reason)
            return
        parsed = parse_request_head(raw_head)
        if isinstance(parsed, Failure):
            self.refuse(f"refused a malformed proxy request: {parsed.failure()}")
            await _http_reply(stream, 400, parsed.failure())
            return
        request = parsed.unwrap()
        if over_limit:
            self.refuse(f"refused {request.method} {request.target[:200]}: {self._limit_refusal()}")
            await _http_reply(stream, 503, self._limit_refusal())
            return
        if needs_auth and not self.token_matches(
            basic_password(request.header("Proxy-Authorization"))
        ):
            reason = "proxy authentication with this run's token is required"
            self.refuse(f"refused {request.method} {request.target[:200]}: {reason}")
            await _http_reply(
                stream, 407, reason, ("Proxy-Authenticate", 'Basic realm="mechasandbox"')
            )
            return
        if request.method == "CONNECT":
            await self._http_connect(stream, request)
        else:
            await self._http_forward(stream, request)

    async def _http_connect(self, stream: BufferedByteStream, request: RequestHead) -> None:
        target = parse_target(request.target)
        if isinstance(target, Failure):
            self.refuse(f"refused a malformed CONNECT: {target.failure()}")
            await _http_reply(stream, 400, target.failure())
            return
        upstream = await self.open_upstream(target.unwrap(), "CONNECT")
        if isinstance(upstream, _Refused):
            await _http_reply(stream, upstream.status, upstream.reason)
            return
        try:
            await stream.send(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        except _STREAM_ERRORS:
            await upstream.aclose()
            raise
        await self.relay(stream, upstream)

    async def _http_forward(self, stream: BufferedByteStream, request: RequestHead) -> None:
        forward = parse_absolute_url(request.target)
        if isinstance(forward, Failure):
            self.refuse(f"refused {request.method} {request.target[:200]}: {forward.failure()}")
            await _http_reply(stream, 400, forward.failure())
            return
        destination = forward.unwrap()
        upstream = await self.open_upstream(destination.target, request.method)
        if isinstance(upstream, _Refused):
            await _http_reply(stream, upstream.status, upstream.reason)
            return
        try:
            await upstream.send(forward_head(request, destination))
        except _STREAM_ERRORS:
            await upstream.aclose()
            await _http_reply(stream, 502, f"{destination.target} closed the connection")
            return
        await self.relay(stream, upstream)

    # -- SOCKS5 --------------------------------------------------------------------

    async def _socks(
        self, stream: BufferedByteStream, *, needs_auth: bool, over_limit: bool
    ) -> None:
        try:
            with anyio.fail_after(self.settings.handshake_timeout_s):
                request = await self._socks_handshake(stream, needs_auth)
        except (anyio.IncompleteRead, TimeoutError):
            return
        if request is None:
            return
        command, target_or_reason = request
        if command != _CMD_CONNECT:
            name = _SOCKS_COMMANDS.get(command, f"command {command}")
            self.refuse(f"refused SOCKS5 {name}: only CONNECT is supported")
            await _socks_reply(stream, _REPLY_COMMAND)
            return
        if isinstance(target_or_reason, str):
            self.refuse(f"refused a malformed SOCKS5 request: {target_or_reason}")
            await _socks_reply(stream, _REPLY_ADDRESS)
            return
        if over_limit:
            self.refuse(f"refused SOCKS5 CONNECT {target_or_reason}: {self._limit_refusal()}")
            await _socks_reply(stream, _REPLY_FAILURE)
            return
        upstream = await self.open_upstream(target_or_reason, "SOCKS5 CONNECT")
        if isinstance(upstream, _Refused):
            await _socks_reply(stream, upstream.socks_reply)
            return
        try:
            await _socks_reply(stream, _REPLY_OK)
        except _STREAM_ERRORS:
            await upstream.aclose()
            raise
        await self.relay(stream, upstream)

    async def _socks_handshake(
        self, stream: BufferedByteStream, needs_auth: bool
    ) -> tuple[int, Target | str] | None:
        """Method negotiation, optional user/password, then the request. None: refused."""
        if not await self._socks_authenticate(stream, needs_auth):
            return None
        version, command, _, address_type = await stream.receive_exactly(4)
        if version != _SOCKS_VERSION:
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

    async def _socks_authenticate(self, stream: BufferedByteStream, needs_auth: bool) -> bool:
        """RFC 1928 method choice and RFC 1929 user/password (the password is the token)."""
        _, count = await stream.receive_exactly(2)
        methods = await stream.receive_exactly(count)
        if _NO_AUTH in methods and not needs_auth:
            method = _NO_AUTH
        elif _USER_PASS in methods:
            method = _USER_PASS
        else:
            self.refuse(
                "refused a SOCKS5 client: username/password authentication with this "
                "run's token is required"
            )
            await stream.send(bytes((_SOCKS_VERSION, _NO_METHOD)))
            return False
        await stream.send(bytes((_SOCKS_VERSION, method)))
        if method == _NO_AUTH:
            return True
        _, user_length = await stream.receive_exactly(2)
        await stream.receive_exactly(user_length)
        (password_length,) = await stream.receive_exactly(1)
        ok = self.token_matches(await stream.receive_exactly(password_length))
        await stream.send(bytes((1, 0 if ok else 1)))
        if not ok:
            self.refuse("refused a SOCKS5 client: wrong proxy credentials")
        return ok


def _holds_bytes(stream: ByteStream) -> bool | None:
    """Whether bytes already read from the socket wait in this process; None: unknown.

    Two places can hold them: a `BufferedByteStream`'s buffer (the handshake parsers read
    ahead) and the read queue of anyio's asyncio socket stream. That stream's transport
    may still be reading (an accepted socket reads from the start, and a receive that
    found data queued leaves it so), so reading is paused first: after that nothing new
    arrives in the queue, and the rest stays in the kernel for the splice to take.
    Any other kind of stream is not recognised and keeps the relay on the loop.
    """
    inner: object = stream
    if isinstance(stream, BufferedByteStream):
        if stream.buffer:
            return True
        inner = stream.receive_stream
    if type(inner).__module__ != "anyio._backends._asyncio":
        return None
    transport = getattr(inner, "_transport", None)
    queue = getattr(getattr(inner, "_protocol", None), "read_queue", None)
    if not isinstance(transport, asyncio.Transport) or not isinstance(queue, deque):
        return None
    transport.pause_reading()
    return bool(queue)


_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


class _Tunnel:
    """The state two splice threads share: last activity, stop, and the counters.

    Both sockets are non-blocking; each thread waits with poll(2) for at most the time
    left before the idle timeout, so a quiet tunnel ends without help from the loop.
    `stop` shuts both sockets down, which wakes a thread in poll at once.
    """

    def __init__(self, core: _ProxyCore, client: socket.socket, upstream: socket.socket) -> None:
        self._core = core
        self._sockets = (client, upstream)
        self._lock = threading.Lock()
        self._stopped = False
        self._idle = core.settings.idle_timeout_s
        self._chunk = min(core.settings.relay_chunk_bytes, 1024 * 1024)
        self.last = time.monotonic()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _wait(self, poller: select.poll) -> bool:
        """True when the socket is ready; False when stopped or idle for too long."""
        while not self._stopped:
            remaining = self.last + self._idle - time.monotonic()
            if remaining <= 0:
                with self._lock:
                    idle = not self._stopped
                if idle:
                    with self._core.counters_lock:
                        self._core.counters.idle_closed += 1
                    self.stop()
                return False
            if poller.poll(math.ceil(min(remaining, 3600.0) * 1000)):
                return True
        return False

    def _count(self, size: int, up: bool) -> None:
        self.last = time.monotonic()
        counters = self._core.counters
        with self._core.counters_lock:
            if up:
                counters.bytes_up += size
            else:
                counters.bytes_down += size

    def pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        """Splice source -> pipe -> sink until EOF (passed on as a half-close) or failure."""
        readable = select.poll()
        readable.register(source, select.POLLIN)
        writable = select.poll()
        writable.register(sink, select.POLLOUT)
        pipe_out, pipe_in = os.pipe()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe_in, fcntl.F_SETPIPE_SZ, self._chunk)
            while True:
                if not self._wait(readable):
                    return
                try:
                    size = os.splice(source.fileno(), pipe_in, self._chunk, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    continue
                if size == 0:
                    break
                self._count(size, up)
                while size:
                    try:
                        size -= os.splice(pipe_out, sink.fileno(), size, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        if not self._wait(writable):
                            return
                    else:
                        self.last = time.monotonic()
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        except OSError:
            self.stop()  # one side failed: end the tunnel both ways
        finally:
            os.close(pipe_out)
            os.close(pipe_in)


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
    with contextlib.suppress(*_STREAM_ERRORS):
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


async def _socks_reply(stream: ByteStream, code: int) -> None:
    # The bound address is not meaningful through a unix socket: report 0.0.0.0:0.
    with contextlib.suppress(*_STREAM_ERRORS):
        await stream.send(bytes((_SOCKS_VERSION, code, 0, _ATYP_V4, 0, 0, 0, 0, 0, 0)))


class RunningProxy:
    """A serving proxy: where it listens, its token, and what it refused so far."""

    def __init__(
        self, core: _ProxyCore, socket_path: Path, tcp_address: tuple[str, int] | None
    ) -> None:
        self._core = core
        self.socket_path = socket_path
        self.tcp_address = tcp_address

    @property
    def token(self) -> str:
        """The per-run secret: the password for Proxy-Authorization or SOCKS5 user/pass."""
        return self._core.token.decode()

    @property
    def tcp_url(self) -> str | None:
        """`http://sandbox:TOKEN@127.0.0.1:PORT` when listening on TCP, else None."""
        if self.tcp_address is None:
            return None
        host, port = self.tcp_address
        return f"http://sandbox:{self.token}@{host}:{port}"

    def violations(self) -> tuple[Violation, ...]:
        return tuple(self._core.violations)

    def stats(self) -> ProxyStats:
        c = self._core.counters
        return ProxyStats(
            accepted=c.accepted,
            active=c.active,
            refused=c.refused,
            tunnels=c.tunnels,
            upstream_failures=c.upstream_failures,
            idle_closed=c.idle_closed,
            internal_errors=c.internal_errors,
            bytes_up=c.bytes_up,
            bytes_down=c.bytes_down,
            violations_dropped=c.violations_dropped,
        )


async def _transport_stream(stream: SocketStream) -> SocketStream:
    """Re-wrap an accepted unix connection as a transport-based stream.

    On asyncio, anyio's raw-socket unix stream can raise InvalidStateError from the event
    loop when a pending receive is cancelled in the same iteration as the socket becomes
    readable (our relay and shutdown cancel such receives routinely). The transport-based
    stream anyio uses for TCP has no such race, and works for any connected stream socket.
    """
    raw = stream.extra_attributes[SocketAttribute.raw_socket]()
    duplicate = raw.dup()
    await stream.aclose()
    return await SocketStream.from_socket(duplicate)


@contextlib.asynccontextmanager
async def serve_proxy(
    policy: NetworkPolicy,
    *,
    socket_path: str | Path,
    resolver: Resolver,
    settings: ProxySettings | None = None,
    address_rules: AddressRules | None = None,
    interface_addresses: InterfaceAddresses = host_interface_addresses,
    token: str | None = None,
) -> AsyncIterator[RunningProxy]:
    """Serve the proxy for one run on `socket_path` (and loopback TCP if configured).

    Raises `InvalidProxyPolicyError` when the policy's patterns do not parse: callers are
    expected to have validated them with `compile_allowlist` when the policy was loaded.
    The socket file is removed on exit.
    """
    settings = settings or ProxySettings()
    address_rules = address_rules or AddressRules()
    compiled = compile_allowlist(policy.allow, policy.deny)
    if isinstance(compiled, Failure):
        raise InvalidProxyPolicyError(compiled.failure())
    rules = attrs.evolve(
        address_rules,
        local_addresses=address_rules.local_addresses | frozenset(interface_addresses()),
    )
    core = _ProxyCore(
        policy=policy,
        allowlist=compiled.unwrap(),
        rules=rules,
        resolver=resolver,
        settings=settings,
        token=token or secrets.token_urlsafe(24),
    )
    path = Path(socket_path)

    async def local_client(stream: SocketStream) -> None:
        await core.handle(await _transport_stream(stream), needs_auth=False)

    async def tcp_client(stream: ByteStream) -> None:
        await core.handle(stream, needs_auth=True)

    async with contextlib.AsyncExitStack() as stack:
        stack.callback(path.unlink, missing_ok=True)
        unix_listener = await anyio.create_unix_listener(path, mode=settings.socket_mode)
        await stack.enter_async_context(unix_listener)
        tcp_listener = None
        tcp_address: tuple[str, int] | None = None
        if settings.listen_tcp:
            tcp_listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            await stack.enter_async_context(tcp_listener)
            bound = tcp_listener.extra_attributes[SocketAttribute.local_address]()
            assert isinstance(bound, tuple)
            tcp_address = (str(bound[0]), int(bound[1]))
        # Entered last so it is cancelled before the listeners close.
        group = await stack.enter_async_context(anyio.create_task_group())
        group.start_soon(unix_listener.serve, local_client)
        if tcp_listener is not None:
            group.start_soon(tcp_listener.serve, tcp_client)
        yield RunningProxy(core, path, tcp_address)
        group.cancel_scope.cancel()
