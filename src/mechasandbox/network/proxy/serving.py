"""Serving the proxy for one run: listeners, the accept loop, each client's first byte."""

from __future__ import annotations

import contextlib
import errno
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.abc import SocketAttribute, TaskGroup
from anyio.lowlevel import checkpoint
from anyio.streams.buffered import BufferedByteStream
from returns.result import Failure

from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import NetworkPolicy
from mechasandbox.domain.result import Violation
from mechasandbox.network.addresses import (
    AddressRules,
    InterfaceAddresses,
    host_interface_addresses,
)
from mechasandbox.network.patterns import compile_allowlist
from mechasandbox.network.proxy.core import ProxyCore
from mechasandbox.network.proxy.http import serve_http
from mechasandbox.network.proxy.resolver import Resolver
from mechasandbox.network.proxy.settings import ProxySettings
from mechasandbox.network.proxy.socks import SOCKS_VERSION, serve_socks
from mechasandbox.network.proxy.streams import STREAM_ERRORS, SocketStream

_ACCEPT_RESOURCE_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class InvalidProxyPolicyError(ValueError):
    """The policy's patterns do not parse; validate with `compile_allowlist` first."""

    def __init__(self, error: ConfigInvalid) -> None:
        super().__init__(error.message)
        self.error = error


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


class RunningProxy:
    """A serving proxy: where it listens, its token, and what it refused so far."""

    def __init__(
        self, core: ProxyCore, socket_path: Path, tcp_address: tuple[str, int] | None
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

    def take_violations(self) -> tuple[Violation, ...]:
        """What it refused since the last take (a session's proxy: each command's own, and
        the bound on how many are kept applies to each command, not to the session's
        life). Call it on the proxy's own loop."""
        taken = tuple(self._core.violations)
        self._core.violations.clear()
        return taken

    @property
    def open_connections(self) -> int:
        """The client connections it is serving now."""
        return self._core.counters.active + self._core.counters.over_limit

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
    core = ProxyCore(
        policy=policy,
        allowlist=compiled.unwrap(),
        rules=rules,
        resolver=resolver,
        settings=settings,
        token=token or secrets.token_urlsafe(24),
    )
    path = Path(socket_path)

    async def local_client(stream: SocketStream) -> None:
        await _serve_client(core, stream, needs_auth=False)

    async def tcp_client(stream: SocketStream) -> None:
        await _serve_client(core, stream, needs_auth=True)

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


async def _serve_client(core: ProxyCore, raw: SocketStream, *, needs_auth: bool) -> None:
    """Serve one client connection; never raises (a crash here would stop the server)."""
    counters = core.counters
    counters.accepted += 1
    over_limit = counters.active >= core.settings.max_connections
    if over_limit:
        if counters.over_limit >= core.settings.max_connections:
            await raw.aclose()  # far over the bound: do not even read the request
            core.refuse("refused a connection: too many open proxy connections")
            return
        counters.over_limit += 1
    else:
        counters.active += 1
    try:
        async with raw:
            await _dispatch(core, BufferedByteStream(raw), needs_auth, over_limit)
    except STREAM_ERRORS:
        pass  # the client went away; nothing to answer
    except Exception:
        counters.internal_errors += 1
    finally:
        if over_limit:
            counters.over_limit -= 1
        else:
            counters.active -= 1


async def _dispatch(
    core: ProxyCore, stream: BufferedByteStream, needs_auth: bool, over: bool
) -> None:
    """The protocol is chosen by the first byte: 0x05 is SOCKS5, anything else is HTTP."""
    first = b""
    with anyio.move_on_after(core.settings.handshake_timeout_s):
        first = await stream.receive()
    if not first:
        return
    stream.feed_data(first)
    if first[0] == SOCKS_VERSION:
        await serve_socks(core, stream, needs_auth=needs_auth, over_limit=over)
    else:
        await serve_http(core, stream, needs_auth=needs_auth, over_limit=over)


async def _accept_loop(
    listener: socket.socket,
    group: TaskGroup,
    serve: Callable[[SocketStream], Coroutine[Any, Any, None]],
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
        stream = SocketStream(conn)
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
