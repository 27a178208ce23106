"""Proxy overhead on loopback: tunnel throughput and added connect latency.

The proxy runs in this process's event loop, as it does in the library. The upstream
server and the client each run in their own process, as the remote server and the
sandboxed command do in real use, so the figures measure the proxy rather than three
parties sharing one interpreter. Only 127.0.0.1 and a unix socket are used.

One client process measures both paths, interleaved: each throughput round and each
latency sample takes the direct path and the proxied one back to back, alternating which
goes first, after a warm-up of each. Load from other work on the machine therefore hits
both alike. Throughput is timed from asking for the bytes to EOF, through a connection
or tunnel already open (connecting is the latency figure's part); the figures are medians
over the rounds (min-max in brackets), and the ratio is the median of each round's
proxied/direct ratio, so that a slow spell affects both halves of a ratio alike.
Targets: tunnel throughput >= 50% of direct, added connect p50 <= 2 ms.

    PYTHONPATH=src python bench/proxy_bench.py [--mib 256] [--connections 300] [--rounds 25]
        [--read-bytes 65536]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from mechasandbox.domain.policy import NetworkMode, NetworkPolicy
from mechasandbox.network.patterns import IPAddress
from mechasandbox.network.proxy import serve_proxy

CHUNK = b"x" * (256 * 1024)
WARM_UP_CONNECTIONS = 20
VIAS = ("direct", "proxy")


# -- the upstream server process (blocking sockets, one thread per connection) -----------


def serve(mib: int) -> None:
    total = mib * 1024 * 1024
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(server.getsockname()[1], flush=True)

    def one(conn: socket.socket) -> None:
        with conn:
            command = conn.recv(1)
            if command == b"T":
                sent = 0
                while sent < total:
                    conn.sendall(CHUNK)
                    sent += len(CHUNK)
            else:
                conn.sendall(b"k")

    while True:
        conn, _ = server.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


# -- the client process -------------------------------------------------------------------


def open_stream(via: str, port: int, socket_path: str) -> socket.socket:
    if via == "direct":
        return socket.create_connection(("127.0.0.1", port))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    sock.sendall(f"CONNECT bench.test:{port} HTTP/1.1\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # the upstream sends nothing before "T" or "L"
        data = sock.recv(4096)
        assert data, head
        head += data
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def transfer(via: str, port: int, socket_path: str, read_bytes: int) -> float:
    """MB/s through an open tunnel (or connection): from asking for the bytes to EOF.

    Reads as a typical client does, `recv` of a fixed size into a new buffer each time.
    (`recv_into` one long-lived buffer was tried and dropped: where that buffer starts
    within its page changed the direct path's rate by up to three times on this
    machine, which measured the buffer's address rather than the proxy.)
    """
    with open_stream(via, port, socket_path) as sock:
        started = time.perf_counter()
        sock.sendall(b"T")
        received = 0
        while data := sock.recv(read_bytes):
            received += len(data)
    return received / (time.perf_counter() - started) / 1e6


def connect_to_first_byte(via: str, port: int, socket_path: str) -> float:
    started = time.perf_counter()
    with open_stream(via, port, socket_path) as sock:
        sock.sendall(b"L")
        assert sock.recv(1) == b"k"
    return (time.perf_counter() - started) * 1000


def client(port: int, socket_path: str, connections: int, rounds: int, read_bytes: int) -> None:
    rates: dict[str, list[float]] = {via: [] for via in VIAS}
    latencies: dict[str, list[float]] = {via: [] for via in VIAS}
    for via in VIAS:  # warm-up, not counted
        transfer(via, port, socket_path, read_bytes)
        for _ in range(WARM_UP_CONNECTIONS):
            connect_to_first_byte(via, port, socket_path)
    for index in range(rounds):
        for via in VIAS if index % 2 == 0 else VIAS[::-1]:
            rates[via].append(transfer(via, port, socket_path, read_bytes))
    for index in range(connections):
        for via in VIAS if index % 2 == 0 else VIAS[::-1]:
            latencies[via].append(connect_to_first_byte(via, port, socket_path))
    print(json.dumps({"mb_s": rates, "latencies_ms": latencies}))


# -- the driver (runs the proxy) ---------------------------------------------------------


class BenchResolver:
    async def resolve(self, host: str) -> Sequence[IPAddress]:
        return (ipaddress.IPv4Address("127.0.0.1"),)


def spread(values: Sequence[float], digits: int) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


async def drive(mib: int, connections: int, rounds: int, read_bytes: int) -> None:
    me = [sys.executable, __file__]
    async with await anyio.open_process([*me, "--serve", "--mib", str(mib)]) as server:
        assert server.stdout is not None
        port = int((await server.stdout.receive()).decode().split()[0])
        policy = NetworkPolicy(
            mode=NetworkMode.ALLOWLIST, allow=("bench.test", f"127.0.0.1:{port}")
        )
        with tempfile.TemporaryDirectory(prefix="msb-", dir="/tmp") as directory:
            path = Path(directory) / "p.sock"
            async with serve_proxy(
                policy, socket_path=path, resolver=BenchResolver(), interface_addresses=lambda: ()
            ) as proxy:
                command = [
                    *me,
                    "--client",
                    "--port",
                    str(port),
                    "--path",
                    str(path),
                    "--connections",
                    str(connections),
                    "--rounds",
                    str(rounds),
                    "--read-bytes",
                    str(read_bytes),
                ]
                with anyio.fail_after(600):
                    done = await anyio.run_process(command)
                results = json.loads(done.stdout)
                stats = proxy.stats()
                # Older trees (to compare against) do not count spliced tunnels.
                spliced = getattr(stats, "spliced", "-")
                violations = len(proxy.violations())
        server.kill()

    rates: dict[str, list[float]] = results["mb_s"]
    lat: dict[str, list[float]] = results["latencies_ms"]
    rate = {via: statistics.median(v) for via, v in rates.items()}
    p50 = {via: statistics.median(v) for via, v in lat.items()}
    p95 = {via: statistics.quantiles(v, n=20)[-1] for via, v in lat.items()}
    pairs = zip(rates["direct"], rates["proxy"], strict=True)
    ratios = [proxied / direct for direct, proxied in pairs]
    ratio = statistics.median(ratios)
    added = p50["proxy"] - p50["direct"]
    print(f"{'measure':<40}{'direct':>18}{'proxy':>18}{'result':>16}")
    print(
        f"{f'throughput, {mib} MiB, median of {rounds} (MB/s)':<40}"
        f"{rate['direct']:>8.0f} ({spread(rates['direct'], 0):>9}){rate['proxy']:>8.0f}"
        f" ({spread(rates['proxy'], 0):>9}){f'{ratio:.0%} (>=50%)':>16}"
    )
    print(f"{'  proxied/direct per round':<40}{'':>36}{spread(ratios, 2):>16}")
    print(
        f"{'connect to first byte p50 (ms)':<40}{p50['direct']:>18.3f}{p50['proxy']:>18.3f}"
        f"{f'{added:+.3f} (<=2)':>16}"
    )
    print(f"{'connect to first byte p95 (ms)':<40}{p95['direct']:>18.3f}{p95['proxy']:>18.3f}")
    expected = rounds + connections + 1 + WARM_UP_CONNECTIONS
    print(
        f"{connections} connections each; client reads of {read_bytes} bytes; "
        f"proxy tunnels: {stats.tunnels} (expected {expected}), spliced: {spliced}, "
        f"violations: {violations}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--read-bytes", type=int, default=64 * 1024, help="client recv size")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--client", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="")
    args = parser.parse_args()
    if args.serve:
        serve(args.mib)
    elif args.client:
        client(args.port, args.path, args.connections, args.rounds, args.read_bytes)
    else:
        anyio.run(drive, args.mib, args.connections, args.rounds, args.read_bytes)
