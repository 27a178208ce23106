"""The proxy against real loopback upstreams started here; names resolve through a fake.

Traffic goes only to 127.0.0.1 and unix sockets: the resolver below maps test names to
loopback servers (or to addresses the proxy must refuse without connecting).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import os
import socket
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
import attrs
import pytest
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.buffered import BufferedByteStream

from mechasandbox.domain.policy import NetworkMode, NetworkPolicy
from mechasandbox.network.addresses import AddressRules
from mechasandbox.network.patterns import IPAddress
from mechasandbox.network.proxy import (
    InvalidProxyPolicyError,
    ProxySettings,
    RunningProxy,
    serve_proxy,
)

pytestmark = pytest.mark.anyio

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
ON_THE_LOOP = 2**62  # splice_after_bytes that no tunnel reaches: it stays on the event loop
METADATA = ipaddress.IPv4Address("169.254.169.254")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short path: unix socket paths are limited to ~108 bytes.
    with tempfile.TemporaryDirectory(prefix="msp-", dir="/tmp") as directory:
        yield Path(directory)


@attrs.define
class FakeResolver:
    table: dict[str, tuple[IPAddress, ...]]
    lookups: list[str] = attrs.Factory(list)

    async def resolve(self, host: str) -> Sequence[IPAddress]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"unknown test name {host}")
        return self.table[host]


@attrs.define
class Upstream:
    port: int
    heads: list[bytes]


@asynccontextmanager
async def http_upstream() -> AsyncIterator[Upstream]:
    """A loopback HTTP server answering every request with its own request head."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    bound = listener.extra_attributes[SocketAttribute.local_address]()
    assert isinstance(bound, tuple)
    upstream = Upstream(port=int(bound[1]), heads=[])

    async def handle(stream: ByteStream) -> None:
        async with stream:
            buffered = BufferedByteStream(stream)
            try:
                head = await buffered.receive_until(b"\r\n\r\n", 65536)
            except (anyio.IncompleteRead, anyio.DelimiterNotFound, anyio.BrokenResourceError):
                return
            upstream.heads.append(head)
            body = b"hello from upstream\n" + head
            await buffered.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                + body
            )

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        yield upstream
        group.cancel_scope.cancel()


@asynccontextmanager
async def proxy(
    socket_dir: Path,
    *,
    allow: tuple[str, ...] = (),
    deny: tuple[str, ...] = (),
    table: dict[str, tuple[IPAddress, ...]] | None = None,
    mode: NetworkMode = NetworkMode.ALLOWLIST,
    settings: ProxySettings | None = None,
    rules: AddressRules | None = None,
) -> AsyncIterator[tuple[RunningProxy, FakeResolver]]:
    resolver = FakeResolver(table or {})
    async with serve_proxy(
        NetworkPolicy(mode=mode, allow=allow, deny=deny),
        socket_path=socket_dir / "proxy.sock",
        resolver=resolver,
        settings=settings,
        address_rules=rules,
        interface_addresses=lambda: (),
    ) as running:
        yield running, resolver


async def read_all(stream: ByteStream, timeout: float = 2.0) -> bytes:
    data = bytearray()
    with anyio.fail_after(timeout):
        while True:
            try:
                data.extend(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return bytes(data)


async def exchange(running: RunningProxy, request: bytes) -> bytes:
    async with await anyio.connect_unix(running.socket_path) as stream:
        await stream.send(request)
        return await read_all(stream)


async def open_connect(running: RunningProxy, authority: str) -> tuple[BufferedByteStream, bytes]:
    stream = BufferedByteStream(await anyio.connect_unix(running.socket_path))
    await stream.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    with anyio.fail_after(2):
        head = await stream.receive_until(b"\r\n\r\n", 65536)
    return stream, head


def get(port: int, host: str = "api.test") -> bytes:
    return f"GET /through HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


def details(running: RunningProxy) -> list[str]:
    return [v.detail for v in running.violations()]


# -- allowed traffic ---------------------------------------------------------------------


async def test_plain_http_to_an_allowed_name(socket_dir: Path) -> None:
    async with (
        http_upstream() as up,
        proxy(
            socket_dir, allow=("api.test", f"127.0.0.1:{up.port}"), table={"api.test": (LOOPBACK,)}
        ) as (running, resolver),
    ):
        answer = await exchange(
            running,
            f"GET http://api.test:{up.port}/hello?x=1 HTTP/1.1\r\nHost: api.test\r\n"
            f"Proxy-Connection: keep-alive\r\n\r\n".encode(),
        )
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert up.heads == [
            f"GET /hello?x=1 HTTP/1.1\r\nHost: api.test:{up.port}\r\nConnection: close".encode()
        ]
        assert running.violations() == ()
        assert resolver.lookups == ["api.test"]
        stats = running.stats()
        assert stats.tunnels == 1
        assert stats.bytes_down == len(answer)


async def test_connect_tunnel_through_the_unix_socket(socket_dir: Path) -> None:
    async with (
        http_upstream() as up,
        proxy(
            socket_dir, allow=("api.test", f"127.0.0.1:{up.port}"), table={"api.test": (LOOPBACK,)}
        ) as (running, _),
    ):
        stream, head = await open_connect(running, f"api.test:{up.port}")
        async with stream:
            assert head == b"HTTP/1.1 200 Connection Established"
            await stream.send(get(up.port))
            answer = await read_all(stream)
        assert b"hello from upstream" in answer
        assert running.violations() == ()


async def socks_connect(
    running: RunningProxy,
    address: bytes,
    port: int,
    *,
    command: int = 1,
    methods: bytes = b"\x00",
    credentials: tuple[bytes, bytes] | None = None,
    stream: ByteStream | None = None,
) -> tuple[BufferedByteStream, bytes]:
    """Run a SOCKS5 handshake; returns the stream and the reply (or method refusal)."""
    raw = stream or await anyio.connect_unix(running.socket_path)
    client = BufferedByteStream(raw)
    with anyio.fail_after(2):
        await client.send(bytes((5, len(methods))) + methods)
        choice = await client.receive_exactly(2)
        if choice[1] == 0xFF:
            return client, choice
        if choice[1] == 2:
            user, password = credentials or (b"", b"")
            await client.send(bytes((1, len(user))) + user + bytes((len(password),)) + password)
            status = await client.receive_exactly(2)
            if status[1] != 0:
                return client, status
        await client.send(bytes((5, command, 0)) + address + struct.pack("!H", port))
        return client, await client.receive_exactly(10)


def socks_name(name: str) -> bytes:
    return bytes((3, len(name))) + name.encode()


async def test_socks5_connect_allowed(socket_dir: Path) -> None:
    async with (
        http_upstream() as up,
        proxy(
            socket_dir, allow=("api.test", f"127.0.0.1:{up.port}"), table={"api.test": (LOOPBACK,)}
        ) as (running, _),
    ):
        client, reply = await socks_connect(running, socks_name("api.test"), up.port)
        async with client:
            assert reply[:2] == b"\x05\x00"
            await client.send(get(up.port))
            assert b"hello from upstream" in await read_all(client)
        assert running.violations() == ()


async def test_socks5_connect_blocked(socket_dir: Path) -> None:
    async with proxy(socket_dir, allow=("api.test",)) as (running, resolver):
        client, reply = await socks_connect(running, socks_name("evil.test"), 443)
        await client.aclose()
        assert reply[1] == 0x02  # connection not allowed by ruleset
        assert details(running) == ["blocked SOCKS5 CONNECT evil.test:443: not in the allowlist"]
        assert resolver.lookups == []


@pytest.mark.parametrize(("command", "name"), [(2, "BIND"), (3, "UDP ASSOCIATE")])
async def test_socks5_bind_and_udp_are_refused(socket_dir: Path, command: int, name: str) -> None:
    async with proxy(socket_dir, allow=("api.test",)) as (running, _):
        client, reply = await socks_connect(running, socks_name("api.test"), 443, command=command)
        await client.aclose()
        assert reply[1] == 0x07
        assert details(running) == [f"refused SOCKS5 {name}: only CONNECT is supported"]


# -- refusals ----------------------------------------------------------------------------


async def test_unlisted_domain_is_blocked(socket_dir: Path) -> None:
    async with proxy(socket_dir, allow=("api.test",)) as (running, resolver):
        stream, head = await open_connect(running, "evil.example:443")
        body = await read_all(stream)
        await stream.aclose()
        assert head.startswith(b"HTTP/1.1 403 Forbidden")
        assert b"not in the allowlist" in body
        assert details(running) == ["blocked CONNECT evil.example:443: not in the allowlist"]
        assert resolver.lookups == []


async def test_look_alikes_are_blocked(socket_dir: Path) -> None:
    async with proxy(socket_dir, allow=("*.github.test",)) as (running, _):
        for authority in ("evil-github.test:443", "github.test.evil.test:443", "github.test:443"):
            stream, head = await open_connect(running, authority)
            await stream.aclose()
            assert head.startswith(b"HTTP/1.1 403"), authority
        assert len(running.violations()) == 3


async def test_ip_literal_blocked_unless_listed(socket_dir: Path) -> None:
    async with http_upstream() as up:
        async with proxy(socket_dir, allow=("api.test",)) as (running, _):
            stream, head = await open_connect(running, f"127.0.0.1:{up.port}")
            await stream.aclose()
            assert head.startswith(b"HTTP/1.1 403")
            assert details(running) == [
                f"blocked CONNECT 127.0.0.1:{up.port}: IP literals are refused unless listed "
                "as IP:port in the allowlist"
            ]
        async with proxy(socket_dir, allow=(f"127.0.0.1:{up.port}",)) as (running, _):
            stream, head = await open_connect(running, f"127.0.0.1:{up.port}")
            async with stream:
                assert head == b"HTTP/1.1 200 Connection Established"
                await stream.send(get(up.port, "127.0.0.1"))
                assert b"hello from upstream" in await read_all(stream)


async def test_allowed_name_resolving_to_loopback_is_blocked(socket_dir: Path) -> None:
    async with (
        http_upstream() as up,
        proxy(socket_dir, allow=("api.test",), table={"api.test": (LOOPBACK,)}) as (running, _),
    ):
        stream, head = await open_connect(running, f"api.test:{up.port}")
        body = await read_all(stream)
        await stream.aclose()
        assert head.startswith(b"HTTP/1.1 403")
        assert b"loopback" in body
        assert details(running) == [
            f"blocked CONNECT api.test:{up.port}: it resolves to 127.0.0.1, a loopback address "
            f"(list 127.0.0.1:{up.port} to allow it)"
        ]
        assert up.heads == []


async def test_metadata_address_is_blocked(socket_dir: Path) -> None:
    async with proxy(socket_dir, allow=("meta.test",), table={"meta.test": (METADATA,)}) as (
        running,
        _,
    ):
        answer = await exchange(running, b"GET http://meta.test/latest/ HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 403")
        assert "cloud metadata" in details(running)[0]
        assert running.stats().upstream_failures == 0  # refused before any connect


async def test_only_the_address_that_passed_is_used(socket_dir: Path) -> None:
    async with (
        http_upstream() as up,
        proxy(
            socket_dir,
            allow=("api.test", f"127.0.0.1:{up.port}"),
            table={"api.test": (METADATA, LOOPBACK)},
        ) as (running, resolver),
    ):
        answer = await exchange(
            running, f"GET http://api.test:{up.port}/ HTTP/1.1\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 200")
        assert resolver.lookups == ["api.test"]  # resolved once, no second lookup


async def test_refused_upstream_gets_502(socket_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # nothing listens here once this is closed
    async with proxy(
        socket_dir, allow=("api.test", f"127.0.0.1:{port}"), table={"api.test": (LOOPBACK,)}
    ) as (running, _):
        stream, head = await open_connect(running, f"api.test:{port}")
        await stream.aclose()
        assert head.startswith(b"HTTP/1.1 502 Bad Gateway")
        assert running.stats().upstream_failures == 1
        assert running.stats().tunnels == 0


async def test_deny_wins(socket_dir: Path) -> None:
    async with proxy(socket_dir, allow=("*.corp.test",), deny=("secret.corp.test",)) as (
        running,
        _,
    ):
        stream, head = await open_connect(running, "secret.corp.test:443")
        await stream.aclose()
        assert head.startswith(b"HTTP/1.1 403")
        assert details(running) == [
            "blocked CONNECT secret.corp.test:443: denied by pattern 'secret.corp.test'"
        ]


async def test_network_none_refuses_everything(socket_dir: Path) -> None:
    async with proxy(socket_dir, mode=NetworkMode.NONE, allow=("api.test",)) as (running, _):
        stream, head = await open_connect(running, "api.test:443")
        await stream.aclose()
        assert head.startswith(b"HTTP/1.1 403")
        assert "network access is off" in details(running)[0]


async def test_decision_depends_only_on_the_target(socket_dir: Path) -> None:
    async with (
        http_upstream() as up,
        proxy(
            socket_dir,
            allow=("relay.test", f"127.0.0.1:{up.port}"),
            table={"relay.test": (LOOPBACK,)},
        ) as (running, resolver),
    ):
        # The Host header cannot make an unlisted target acceptable...
        answer = await exchange(
            running, b"GET http://evil.test/ HTTP/1.1\r\nHost: relay.test\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 403")
        # ...nor steer an allowed request to another virtual host upstream.
        await exchange(
            running,
            f"GET http://relay.test:{up.port}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n".encode(),
        )
        assert up.heads[-1].split(b"\r\n")[1] == f"Host: relay.test:{up.port}".encode()
        # A second hop inside a tunnel is only bytes for the allowed upstream to judge.
        stream, head = await open_connect(running, f"relay.test:{up.port}")
        async with stream:
            assert head == b"HTTP/1.1 200 Connection Established"
            await stream.send(b"CONNECT evil.test:443 HTTP/1.1\r\n\r\n")
            assert b"hello from upstream" in await read_all(stream)
        assert up.heads[-1] == b"CONNECT evil.test:443 HTTP/1.1"
        assert "evil.test" not in resolver.lookups
        assert details(running) == ["blocked GET evil.test:80: not in the allowlist"]


# -- bounds and bad input ----------------------------------------------------------------


async def test_connection_bound_is_enforced(socket_dir: Path) -> None:
    settings = ProxySettings(max_connections=1)
    async with (
        http_upstream() as up,
        proxy(
            socket_dir,
            allow=("api.test", f"127.0.0.1:{up.port}"),
            table={"api.test": (LOOPBACK,)},
            settings=settings,
        ) as (running, _),
    ):
        held, head = await open_connect(running, f"api.test:{up.port}")
        assert head == b"HTTP/1.1 200 Connection Established"
        answer = await exchange(
            running, f"GET http://api.test:{up.port}/ HTTP/1.1\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 503")
        assert "too many open proxy connections (limit 1)" in details(running)[0]
        await held.aclose()
        with anyio.fail_after(2):
            while running.stats().active:
                await anyio.sleep(0.01)
        answer = await exchange(
            running, f"GET http://api.test:{up.port}/ HTTP/1.1\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("splice_after", [ON_THE_LOOP, 0], ids=["loop", "splice"])
async def test_idle_tunnel_is_closed(socket_dir: Path, splice_after: int) -> None:
    settings = ProxySettings(idle_timeout_s=0.2, splice_after_bytes=splice_after)
    async with (
        http_upstream() as up,
        proxy(
            socket_dir,
            allow=("api.test", f"127.0.0.1:{up.port}"),
            table={"api.test": (LOOPBACK,)},
            settings=settings,
        ) as (running, _),
    ):
        stream, head = await open_connect(running, f"api.test:{up.port}")
        async with stream:
            assert head == b"HTTP/1.1 200 Connection Established"
            started = anyio.current_time()
            assert await read_all(stream, timeout=2) == b""  # closed by the proxy
            assert anyio.current_time() - started < 1.5
        assert running.stats().idle_closed == 1
        assert running.stats().spliced == (splice_after == 0)


@asynccontextmanager
async def one_client_upstream(serve_client: Callable[[socket.socket], None]) -> AsyncIterator[int]:
    """A loopback server handing its first client to `serve_client` in a thread."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve() -> None:
        with server, contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                serve_client(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    await anyio.to_thread.run_sync(thread.join, 10)


def echo(conn: socket.socket, reset_after: int | None = None) -> None:
    """Echo until EOF; or reset the connection once `reset_after` bytes have arrived."""
    received = 0
    while data := conn.recv(65536):
        received += len(data)
        if reset_after is not None and received >= reset_after:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        conn.sendall(data)


def download(conn: socket.socket, payload: bytes) -> None:
    """On one byte, send payload, then wait for the client's EOF without closing."""
    if conn.recv(1):
        conn.sendall(payload)
        while conn.recv(65536):
            pass


def tunnel_proxy(
    socket_dir: Path, port: int, settings: ProxySettings
) -> contextlib.AbstractAsyncContextManager[tuple[RunningProxy, FakeResolver]]:
    return proxy(
        socket_dir,
        allow=("api.test", f"127.0.0.1:{port}"),
        table={"api.test": (LOOPBACK,)},
        settings=settings,
    )


async def wait_until_idle(running: RunningProxy) -> None:
    with anyio.fail_after(2):
        while running.stats().active:
            await anyio.sleep(0.01)


@pytest.mark.parametrize(
    ("splice_after", "spliced"),
    [(ON_THE_LOOP, 0), (0, 1), (64, 1)],
    ids=["loop", "splice", "switch"],
)
async def test_interactive_tunnel_on_both_paths(
    socket_dir: Path, splice_after: int, spliced: int
) -> None:
    """Small exchanges through one tunnel: on the loop, spliced from the start, and across
    the switch (64 bytes: after the second round trip)."""
    settings = ProxySettings(splice_after_bytes=splice_after)
    async with (
        one_client_upstream(echo) as port,
        tunnel_proxy(socket_dir, port, settings) as (running, _),
    ):
        stream, head = await open_connect(running, f"api.test:{port}")
        async with stream:
            assert head == b"HTTP/1.1 200 Connection Established"
            with anyio.fail_after(5):
                for index in range(20):
                    message = b"message %07d\n" % index
                    await stream.send(message)
                    assert await stream.receive_exactly(len(message)) == message
                await stream.send_eof()
                assert await read_all(stream) == b""  # the upstream's EOF is passed on
        await wait_until_idle(running)
        stats = running.stats()
        assert (stats.bytes_up, stats.bytes_down) == (320, 320)
        assert stats.spliced == spliced
        assert (stats.idle_closed, stats.internal_errors) == (0, 0)


@pytest.mark.parametrize(
    ("splice_after", "spliced"),
    [(ON_THE_LOOP, 0), (0, 1), (100_000, 1)],
    ids=["loop", "splice", "switch"],
)
async def test_download_across_the_switch(
    socket_dir: Path, splice_after: int, spliced: int
) -> None:
    """Bytes flow one way while the client stays silent: the switch must not wait for it."""
    payload = os.urandom(4 * 1024 * 1024)
    settings = ProxySettings(splice_after_bytes=splice_after)
    async with (
        one_client_upstream(partial(download, payload=payload)) as port,
        tunnel_proxy(socket_dir, port, settings) as (running, _),
    ):
        stream, _ = await open_connect(running, f"api.test:{port}")
        async with stream:
            await stream.send(b"T")
            with anyio.fail_after(5):
                assert await stream.receive_exactly(len(payload)) == payload
        await wait_until_idle(running)
        stats = running.stats()
        assert (stats.bytes_up, stats.bytes_down, stats.spliced) == (1, len(payload), spliced)


@pytest.mark.parametrize(
    ("splice_after", "spliced"),
    [(ON_THE_LOOP, 0), (0, 1), (4, 1)],
    ids=["loop", "splice", "switch"],
)
async def test_quiet_tunnel_is_closed_after_traffic(
    socket_dir: Path, splice_after: int, spliced: int
) -> None:
    """After some traffic, nothing moves: the idle timeout ends the tunnel on either path."""
    settings = ProxySettings(idle_timeout_s=0.3, splice_after_bytes=splice_after)
    async with (
        one_client_upstream(echo) as port,
        tunnel_proxy(socket_dir, port, settings) as (running, _),
    ):
        stream, _ = await open_connect(running, f"api.test:{port}")
        async with stream:
            await stream.send(b"ping")
            with anyio.fail_after(2):
                assert await stream.receive_exactly(4) == b"ping"
            started = anyio.current_time()
            assert await read_all(stream, timeout=2) == b""  # closed by the proxy
            assert 0.2 < anyio.current_time() - started < 1.5
        stats = running.stats()
        assert (stats.idle_closed, stats.spliced) == (1, spliced)


@pytest.mark.parametrize("splice_after", [ON_THE_LOOP, 0], ids=["loop", "splice"])
async def test_upstream_reset_ends_the_tunnel(socket_dir: Path, splice_after: int) -> None:
    settings = ProxySettings(splice_after_bytes=splice_after)
    async with (
        one_client_upstream(partial(echo, reset_after=4)) as port,
        tunnel_proxy(socket_dir, port, settings) as (running, _),
    ):
        stream, _ = await open_connect(running, f"api.test:{port}")
        async with stream:
            await stream.send(b"ping")
            assert await read_all(stream, timeout=2) == b""  # the client's side ends too
        await wait_until_idle(running)
        stats = running.stats()
        assert stats.bytes_up == 4
        assert stats.internal_errors == 0


BIG = 64 * 1024 * 1024


def send_and_hash(sock: socket.socket, payload: bytes, first: int = 0) -> str:
    """Send payload[first:] (then EOF) while reading to EOF; the digest of what came back."""
    received = hashlib.sha256()

    def sender() -> None:
        view = memoryview(payload)
        for start in range(first, len(view), 1024 * 1024):
            sock.sendall(view[start : start + 1024 * 1024])
        sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=sender)
    thread.start()
    while data := sock.recv(1024 * 1024):
        received.update(data)
    thread.join()
    return received.hexdigest()


@asynccontextmanager
async def both_ways_upstream(payload: bytes) -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback server sending `payload` to each client while hashing what it gets."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    digests: list[str] = []

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(30)
                digests.append(send_and_hash(conn, payload))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], digests
    await anyio.to_thread.run_sync(thread.join, 30)


@pytest.mark.parametrize(
    ("protocol", "splice_after"),
    [
        ("connect", None),
        ("socks5", None),
        ("connect", 0),
        ("connect", 1000),
        ("connect", ON_THE_LOOP),
    ],
    ids=["connect", "socks5", "splice-at-once", "switch-early", "loop-only"],
)
async def test_large_transfer_arrives_intact_both_ways(
    socket_dir: Path, protocol: str, splice_after: int | None
) -> None:
    up_payload, down_payload = os.urandom(BIG), os.urandom(BIG)
    settings = (
        ProxySettings() if splice_after is None else ProxySettings(splice_after_bytes=splice_after)
    )
    async with (
        both_ways_upstream(down_payload) as (port, upstream_digests),
        tunnel_proxy(socket_dir, port, settings) as (running, _),
    ):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        await anyio.to_thread.run_sync(sock.connect, str(running.socket_path))
        head = b"HTTP/1.1 200 Connection Established\r\n\r\n"
        first = 1000
        if protocol == "connect":
            # The first bytes of the tunnel come with the request: the proxy has read them
            # already and must pass them on before anything else.
            request = f"CONNECT api.test:{port} HTTP/1.1\r\n\r\n".encode()
            sock.sendall(request + up_payload[:first])
        else:
            name = socks_name("api.test")
            sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + name + struct.pack("!H", port))
            sock.sendall(up_payload[:first])
            head = b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6)
        with sock:
            answer = b""
            while len(answer) < len(head):
                answer += await anyio.to_thread.run_sync(sock.recv, len(head) - len(answer))
            assert answer == head
            digest = await anyio.to_thread.run_sync(send_and_hash, sock, up_payload, first)
        # The client can be done before the upstream has all its bytes: closing the proxy
        # now would cut the tunnel short.
        await wait_until_idle(running)
    assert digest == hashlib.sha256(down_payload).hexdigest()
    assert upstream_digests == [hashlib.sha256(up_payload).hexdigest()]
    stats = running.stats()
    assert (stats.bytes_up, stats.bytes_down) == (BIG, BIG)
    assert stats.internal_errors == 0
    assert stats.spliced == (splice_after != ON_THE_LOOP)


@pytest.mark.parametrize("splice_after", [ON_THE_LOOP, 0], ids=["loop", "splice"])
async def test_closing_the_proxy_ends_an_active_tunnel(socket_dir: Path, splice_after: int) -> None:
    settings = ProxySettings(splice_after_bytes=splice_after)
    async with http_upstream() as up:
        async with proxy(
            socket_dir,
            allow=("api.test", f"127.0.0.1:{up.port}"),
            table={"api.test": (LOOPBACK,)},
            settings=settings,
        ) as (running, _):
            stream, head = await open_connect(running, f"api.test:{up.port}")
            assert head == b"HTTP/1.1 200 Connection Established"
            await stream.send(b"GET /partial HTTP/1.1\r\n")  # the upstream waits for more
            await anyio.sleep(0.2)
            started = anyio.current_time()
        async with stream:
            assert anyio.current_time() - started < 1.5  # closing did not wait for the tunnel
            assert await read_all(stream, timeout=2) == b""
    assert running.stats().spliced == (splice_after == 0)


async def test_silent_client_is_dropped_after_the_handshake_timeout(socket_dir: Path) -> None:
    settings = ProxySettings(handshake_timeout_s=0.2)
    async with proxy(socket_dir, settings=settings) as (running, _):
        stream = await anyio.connect_unix(running.socket_path)
        async with stream:
            await stream.send(b"GET http://a.test/ HTTP/1.1\r\n")  # never finishes
            assert await read_all(stream) == b""


@pytest.mark.parametrize(
    ("request_bytes", "problem"),
    [
        (b"\x16\x03\x01\x00\xa5garbage\r\n\r\n", b"malformed request line"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"not an absolute http:// URL"),
        (b"GET http://a.test/ HTTP/1.1\r\nX-Long: " + b"a" * 5000 + b"\r\n\r\n", b"larger than"),
        (b"CONNECT [::1 HTTP/1.1\r\n\r\n", b"missing ']'"),
        (b"CONNECT a.test HTTP/1.1\r\n\r\n", b"a port is required"),
    ],
)
async def test_bad_requests_get_400_and_the_proxy_survives(
    socket_dir: Path, request_bytes: bytes, problem: bytes
) -> None:
    settings = ProxySettings(max_header_bytes=1024)
    async with (
        http_upstream() as up,
        proxy(
            socket_dir,
            allow=("api.test", f"127.0.0.1:{up.port}"),
            table={"api.test": (LOOPBACK,)},
            settings=settings,
        ) as (running, _),
    ):
        answer = await exchange(running, request_bytes)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request")
        assert problem in answer
        assert details(running)[0].startswith("refused ")
        answer = await exchange(
            running, f"GET http://api.test:{up.port}/ HTTP/1.1\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 200")
        assert running.stats().internal_errors == 0


# -- the TCP listener and its token ------------------------------------------------------


async def test_tcp_listener_requires_the_token(socket_dir: Path) -> None:
    async with (
        http_upstream() as up,
        proxy(
            socket_dir,
            allow=("api.test", f"127.0.0.1:{up.port}"),
            table={"api.test": (LOOPBACK,)},
            settings=ProxySettings(listen_tcp=True),
        ) as (running, _),
    ):
        assert running.tcp_address is not None
        host, port = running.tcp_address
        assert host == "127.0.0.1"
        assert running.tcp_url == f"http://sandbox:{running.token}@127.0.0.1:{port}"
        request = f"GET http://api.test:{up.port}/ HTTP/1.1\r\n"
        for credential, status in ((None, b"407"), ("wrong", b"407"), (running.token, b"200")):
            async with await anyio.connect_tcp(host, port) as stream:
                auth = ""
                if credential is not None:
                    token = base64.b64encode(f"sandbox:{credential}".encode()).decode()
                    auth = f"Proxy-Authorization: Basic {token}\r\n"
                await stream.send(f"{request}{auth}\r\n".encode())
                answer = await read_all(stream)
            assert answer.startswith(b"HTTP/1.1 " + status), credential
        # SOCKS5 over TCP: no-auth is not offered, user/password must carry the token.
        stream = await anyio.connect_tcp(host, port)
        client, reply = await socks_connect(running, socks_name("api.test"), up.port, stream=stream)
        await client.aclose()
        assert reply == b"\x05\xff"
        stream = await anyio.connect_tcp(host, port)
        client, reply = await socks_connect(
            running,
            socks_name("api.test"),
            up.port,
            stream=stream,
            methods=b"\x02",
            credentials=(b"sandbox", b"wrong"),
        )
        await client.aclose()
        assert reply == b"\x01\x01"
        stream = await anyio.connect_tcp(host, port)
        client, reply = await socks_connect(
            running,
            socks_name("api.test"),
            up.port,
            stream=stream,
            methods=b"\x00\x02",
            credentials=(b"sandbox", running.token.encode()),
        )
        async with client:
            assert reply[:2] == b"\x05\x00"
            await client.send(get(up.port))
            assert b"hello from upstream" in await read_all(client)
        assert sum("token" in d or "credentials" in d for d in details(running)) == 4


async def test_socket_file_is_private_and_removed(socket_dir: Path) -> None:
    async with proxy(socket_dir) as (running, _):
        assert running.socket_path.stat().st_mode & 0o777 == 0o600
        assert running.tcp_address is None
    assert not running.socket_path.exists()


async def test_invalid_policy_is_refused(socket_dir: Path) -> None:
    with pytest.raises(InvalidProxyPolicyError, match=r"\*\.com"):
        async with proxy(socket_dir, allow=("*.com",)):
            pass
