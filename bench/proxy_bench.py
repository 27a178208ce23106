"""Proxy overhead on loopback: tunnel throughput and added connect latency.

The proxy runs in this process's event loop, as it does in the library. The upstream
server and the client each run in their own process, as the remote server and the
sandboxed command do in real use, so the figures measure the proxy rather than three
parties sharing one interpreter. Only 127.0.0.1 and a unix socket are used.
Targets: tunnel throughput >= 50% of direct, added connect p50 <= 2 ms.

    PYTHONPATH=src python bench/proxy_bench.py [--mib 256] [--connections 300]
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


# -- the upstream server process (blocking sockets, one thread per connection) -----------


def serve(mib: int) -> None:
    total = mib * 1024 * 1024
    server = socket.create_server(("127.0.0.1", 0))
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
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def client(via: str, port: int, socket_path: str, connections: int, rounds: int) -> None:
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        with open_stream(via, port, socket_path) as sock:
            sock.sendall(b"T")
            received = 0
            while data := sock.recv(1024 * 1024):
                received += len(data)
        best = max(best, received / (time.perf_counter() - started) / 1e6)
    latencies = []
    for _ in range(connections):
        started = time.perf_counter()
        with open_stream(via, port, socket_path) as sock:
            sock.sendall(b"L")
            assert sock.recv(1) == b"k"
        latencies.append((time.perf_counter() - started) * 1000)
    print(json.dumps({"mb_s": best, "latencies_ms": latencies}))


# -- the driver (runs the proxy) ---------------------------------------------------------


class BenchResolver:
    async def resolve(self, host: str) -> Sequence[IPAddress]:
        return (ipaddress.IPv4Address("127.0.0.1"),)


async def drive(mib: int, connections: int) -> None:
    me = [sys.executable, __file__]
    async with await anyio.open_process([*me, "--serve", "--mib", str(mib)]) as server:
        assert server.stdout is not None
        port = int((await server.stdout.receive()).decode().split()[0])
        policy = NetworkPolicy(
            mode=NetworkMode.ALLOWLIST, allow=("bench.test", f"127.0.0.1:{port}")
        )
        results: dict[str, dict[str, object]] = {}
        with tempfile.TemporaryDirectory(prefix="msb-", dir="/tmp") as directory:
            path = Path(directory) / "p.sock"
            async with serve_proxy(
                policy, socket_path=path, resolver=BenchResolver(), interface_addresses=lambda: ()
            ) as proxy:
                with anyio.fail_after(180):
                    for via in ("direct", "proxy"):
                        command = [
                            *me,
                            "--client",
                            via,
                            "--port",
                            str(port),
                            "--path",
                            str(path),
                            "--connections",
                            str(connections),
                        ]
                        done = await anyio.run_process(command)
                        results[via] = json.loads(done.stdout)
                stats = proxy.stats()
                violations = len(proxy.violations())
        server.kill()

    rate = {via: float(str(r["mb_s"])) for via, r in results.items()}
    lat = {via: [float(x) for x in r["latencies_ms"]] for via, r in results.items()}  # type: ignore[attr-defined]
    p50 = {via: statistics.median(v) for via, v in lat.items()}
    p95 = {via: statistics.quantiles(v, n=20)[-1] for via, v in lat.items()}
    ratio = rate["proxy"] / rate["direct"]
    added = p50["proxy"] - p50["direct"]
    print(f"{'measure':<36}{'direct':>10}{'proxy':>10}{'result':>16}")
    print(
        f"{f'throughput, {mib} MiB, best of 3 (MB/s)':<36}{rate['direct']:>10.0f}"
        f"{rate['proxy']:>10.0f}{f'{ratio:.0%} (>=50%)':>16}"
    )
    print(
        f"{'connect to first byte p50 (ms)':<36}{p50['direct']:>10.3f}{p50['proxy']:>10.3f}"
        f"{f'+{added:.3f} (<=2)':>16}"
    )
    print(f"{'connect to first byte p95 (ms)':<36}{p95['direct']:>10.3f}{p95['proxy']:>10.3f}")
    print(
        f"{connections} connections each; proxy tunnels: {stats.tunnels}, violations: {violations}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--client", choices=("direct", "proxy"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="")
    args = parser.parse_args()
    if args.serve:
        serve(args.mib)
    elif args.client:
        client(args.client, args.port, args.path, args.connections, rounds=3)
    else:
        anyio.run(drive, args.mib, args.connections)
