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

import contextlib
import errno
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
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import anyio
import attrs
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled
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
    # A tunnel is relayed by the event loop until it has carried this many bytes (both
    # directions together), then spliced in the kernel by a worker thread (Linux).
    splice_after_bytes: int = 256 * 1024
    listen_tcp: bool = False
    socket_mode: int = 0o600


@attrs.frozen(kw_only=True)
class ProxyStats:
    """Counters since the proxy started.

    `tunnels` counts relays; `spliced`, those of them that carried enough bytes to move
    from the event loop to a splice thread.
    """

    accepted: int
    active: int
    refused: int
    tunnels: int
    spliced: int
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
    spliced: int = 0
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
        # One splice thread per tunnel at most; anyio's default limiter (40) would make
        # tunnels wait for each other.
        self.relay_threads = anyio.CapacityLimiter(settings.max_connections)
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

    async def handle(self, raw: _SocketStream, *, needs_auth: bool) -> None:
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

    async def open_upstream(self, target: Target, verb: str) -> _SocketStream | _Refused:
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
    ) -> _SocketStream | _Refused:
        last_error: OSError | None = None
        with anyio.move_on_after(self.settings.connect_timeout_s):
            for address in addresses:
                try:
                    return await _connect_tcp(address, target.port)
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

    def add_bytes(self, size: int, up: bool) -> None:
        """Count relayed bytes; splice threads count too, hence the lock."""
        with self.counters_lock:
            if up:
                self.counters.bytes_up += size
            else:
                self.counters.bytes_down += size

    def count_idle_close(self) -> None:
        with self.counters_lock:
            self.counters.idle_closed += 1

    async def relay(self, client: BufferedByteStream, upstream: _SocketStream) -> None:
        """Copy bytes both ways until both sides finish or nothing moves for idle_timeout.

        Half-closes are passed on (EOF from one side shuts down the sending side of the
        other), so request/response protocols that shut down their sending side still
        work; a failure on either side ends the tunnel both ways. The bytes the handshake
        parser read ahead go first.

        A tunnel starts on the event loop (`_LoopRelay`), which takes no thread or pipe,
        so short connections never leave it. Once it has carried `splice_after_bytes`
        (and on Linux only), it moves to one worker thread that splices both directions
        in the kernel (`_Tunnel`).
        """
        self.counters.tunnels += 1
        raw = client.receive_stream
        if not isinstance(raw, _SocketStream):
            raise TypeError("the proxy relays only its own socket streams")
        async with upstream:
            loop_relay = _LoopRelay(self, raw.socket, upstream.socket)
            with loop_relay.idle_scope:
                while client.buffer:
                    data = await client.receive(self.settings.relay_chunk_bytes)
                    await upstream.send(data)
                    self.add_bytes(len(data), up=True)
                await loop_relay.run()
            if loop_relay.idle_scope.cancelled_caught:
                self.count_idle_close()
                return
            if loop_relay.switching and not loop_relay.failed and any(loop_relay.open.values()):
                await self._splice_relay(raw.socket, upstream.socket, loop_relay.open)

    async def _splice_relay(
        self, client: socket.socket, upstream: socket.socket, still_open: dict[bool, bool]
    ) -> None:
        """Run the tunnel's splice thread; cancellation shuts both sockets down."""
        self.counters.spliced += 1
        tunnel = _Tunnel(self, client, upstream, up=still_open[True], down=still_open[False])

        async def stop_when_cancelled() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                tunnel.stop()

        async with anyio.create_task_group() as group:
            group.start_soon(stop_when_cancelled)
            await anyio.to_thread.run_sync(tunnel.run, limiter=self.relay_threads)
            group.cancel_scope.cancel()

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


class _SocketStream(ByteStream):
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
            await _send_all(self.socket, item)
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


async def _send_all(sock: socket.socket, data: bytes) -> None:
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


async def _connect_tcp(address: IPAddress, port: int) -> _SocketStream:
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
    return _SocketStream(sock)


_ACCEPT_RESOURCE_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


async def _accept_loop(
    listener: socket.socket,
    group: TaskGroup,
    serve: Callable[[_SocketStream], Coroutine[Any, Any, None]],
    *,
    tcp: bool,
) -> None:
    """Accept connections for as long as the group runs, one task each.

    Running out of descriptors or memory pauses accepting briefly instead of ending the
    proxy; the pending connections wait in the listen queue.
    """
    listener.setblocking(False)
    in_a_row = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            in_a_row = 0
            await anyio.wait_readable(listener)
            continue
        except ConnectionAbortedError:
            continue
        except OSError as error:
            if error.errno not in _ACCEPT_RESOURCE_ERRORS:
                raise
            await anyio.sleep(0.1)
            continue
        stream = _SocketStream(conn)
        if tcp:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            group.start_soon(serve, stream)
        except BaseException:
            conn.close()
            raise
        in_a_row += 1
        if in_a_row >= 16:  # a flood of connections must not starve the tunnels
            in_a_row = 0
            await checkpoint()


_CAN_SPLICE = hasattr(os, "splice") and hasattr(select, "poll")
_LOOP_READ_BYTES = 64 * 1024
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


class _LoopRelay:
    """A tunnel relayed by the event loop: one pump per direction, no thread.

    Each pump tries `recv` first and waits for readability only when the socket is
    empty, then sends the chunk whole before reading again, so no byte is ever held
    here between chunks. `idle_scope` ends the relay when nothing has moved for the idle
    timeout. When the tunnel has carried `splice_after_bytes`, the pump that noticed
    sets `switching` and cancels the other pump's wait for input (never a send); both
    then return, and `open` tells which directions still await their EOF.
    """

    def __init__(self, core: _ProxyCore, client: socket.socket, upstream: socket.socket) -> None:
        settings = core.settings
        self._core = core
        self._client = client
        self._upstream = upstream
        # Small reads: recv allocates its whole size first, which costs far more above
        # the allocator's mmap threshold; bulk transfers move to splicing anyway.
        self._chunk = min(settings.relay_chunk_bytes, _LOOP_READ_BYTES)
        self._idle = settings.idle_timeout_s
        self._splice_after = settings.splice_after_bytes if _CAN_SPLICE else math.inf
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
                await _send_all(sink, data)
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


class _Tunnel:
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
        core: _ProxyCore,
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
            spliced=c.spliced,
            upstream_failures=c.upstream_failures,
            idle_closed=c.idle_closed,
            internal_errors=c.internal_errors,
            bytes_up=c.bytes_up,
            bytes_down=c.bytes_down,
            violations_dropped=c.violations_dropped,
        )


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

    async def local_client(stream: _SocketStream) -> None:
        await core.handle(stream, needs_auth=False)

    async def tcp_client(stream: _SocketStream) -> None:
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
        # The listeners' sockets are accepted from here (`_accept_loop`); anyio's
        # listeners only create, bind and close them.
        unix_socket = unix_listener.extra(SocketAttribute.raw_socket)  # noqa: S610 (anyio, not SQL)
        group.start_soon(partial(_accept_loop, unix_socket, group, local_client, tcp=False))
        if tcp_listener is not None:
            tcp_socket = tcp_listener.extra(SocketAttribute.raw_socket)  # noqa: S610 (anyio, not SQL)
            group.start_soon(partial(_accept_loop, tcp_socket, group, tcp_client, tcp=True))
        yield RunningProxy(core, path, tcp_address)
        group.cancel_scope.cancel()
