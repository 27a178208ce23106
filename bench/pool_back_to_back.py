"""Back-to-back one-shot runs through the docker warm pool, next to a cold `docker run`.

    PYTHONPATH=src python bench/pool_back_to_back.py [--rounds 3] [--burst 20] [--size 2]

Each round: `--cold` cold `docker run --rm --network none IMAGE true`, then a burst of `--burst`
runs of `true` through the pool (the default `discard`: every run gets a fresh container),
each started as soon as the previous one answered, as an agent's tight loop would. The
pool is at rest before each round (its `size` containers ready, no removal left); what a
burst then costs includes waiting for replacements if the pool cannot keep up. Goal (issue 18):
pool p50 <= 0.5x the cold run's p50.

`--sessions`: also the same burst as one-shot runs on ready sessions (`WarmSessions`, the
same size): each run takes a session opened ahead, runs its command, and closes it (its
container removed in the background, never used again), which is what the pool would do
with session agents as its members instead of keepers taking an `exec`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time

import anyio
from returns.result import Success

from mechasandbox.backends.oci import DockerBackend, PooledBackend, PoolSettings
from mechasandbox.backends.oci.session_pool import WarmSessions
from mechasandbox.backends.session_base import SessionSettings
from mechasandbox.domain import Policy, RunRequest
from mechasandbox.runner.runner import HelperProcessRunner

IMAGE = "mechasandbox-test:busybox"


def cold(image: str) -> float:
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "none", image, "true"], check=True)
    return time.perf_counter() - started


async def burst(pooled: PooledBackend, request: RunRequest, runs: int) -> list[float]:
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        result = await pooled.run(request, Policy())
        walls.append(time.perf_counter() - started)
        assert result.unwrap().exit_code == 0, result
    return walls


async def session_burst(
    sessions: WarmSessions, request: RunRequest, runs: int, closing: anyio.abc.TaskGroup
) -> list[float]:
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        opened = await sessions.open_session(request.workspace, Policy(), SessionSettings())
        assert isinstance(opened, Success), opened
        session = opened.unwrap()
        result = await session.run(request)
        walls.append(time.perf_counter() - started)
        assert result.unwrap().exit_code == 0, result
        closing.start_soon(session.aclose)  # the container goes, in the background
    return walls


async def session_bursts(sessions: WarmSessions, request: RunRequest, runs: int) -> list[float]:
    async with anyio.create_task_group() as closing:
        return await session_burst(sessions, request, runs, closing)


def wait_sessions(sessions: WarmSessions, size: int) -> None:
    while sessions.ready() < size:
        time.sleep(0.02)


async def wait_warm(pooled: PooledBackend) -> None:
    """Until the pool is at rest: its `size` ready, no removal left (a removal under way
    would slow the cold runs that follow, and flatter the pool's ratio)."""
    while True:
        stats = pooled.pool.stats()
        if stats["idle"] >= pooled.settings.size and stats["removing"] == 0:
            return
        await anyio.sleep(0.02)


def line(label: str, values: list[float], reference: float) -> str:
    ms = sorted(v * 1000 for v in values)
    p50 = statistics.median(ms)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return (
        f"{label:34s} p50 {p50:7.1f}  p90 {p90:7.1f}  min {ms[0]:7.1f}  max {ms[-1]:7.1f}"
        f"  x{p50 / 1000 / reference:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--cold", type=int, default=5, help="cold runs per round")
    parser.add_argument("--size", type=int, default=2, help="the pool's size")
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--sessions", action="store_true", help="also on ready sessions")
    args = parser.parse_args()
    runner = HelperProcessRunner()
    backend = DockerBackend(runner=runner, image=args.image)
    backend.probe().unwrap()
    pooled = PooledBackend(backend=backend, settings=PoolSettings(size=args.size))
    sessions = WarmSessions(backend, size=args.size, idle_timeout_s=300.0)
    colds: list[float] = []
    pooled_walls: list[float] = []
    session_walls: list[float] = []
    with tempfile.TemporaryDirectory() as workspace:
        request = RunRequest(argv=["true"], workspace=workspace)
        try:
            anyio.run(burst, pooled, request, 1)  # the first start, outside the figures
            anyio.run(wait_warm, pooled)
            if args.sessions:
                sessions.warm(workspace, Policy(), SessionSettings())
            for _ in range(args.rounds):
                anyio.run(wait_warm, pooled)
                colds += [cold(args.image) for _ in range(args.cold)]
                pooled_walls += anyio.run(burst, pooled, request, args.burst)
                if args.sessions:
                    wait_sessions(sessions, args.size)
                    session_walls += anyio.run(session_bursts, sessions, request, args.burst)
        finally:
            sessions.close()
            pooled.close()
            runner.close()
    reference = statistics.median(colds)
    print(
        f"docker, {args.rounds} rounds of {args.cold} cold runs + {args.burst} pooled runs "
        f"back to back (pool size {args.size}); ms, ratio to the cold run's p50"
    )
    print(line("cold docker run --rm --network none", colds, reference))
    print(line("pool, back to back (discard)", pooled_walls, reference))
    if session_walls:
        print(line("ready sessions, one command each", session_walls, reference))


if __name__ == "__main__":
    main()
