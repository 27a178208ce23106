"""Spawn cost of `true`: bare subprocess vs the runner, from a small and a 2 GiB parent.

The runner forks in its small spawn helper, so its cost should not grow with the caller's
heap, while `subprocess.run(..., preexec_fn=...)` (a real fork of the caller) does.
Run: `make bench` or `python bench/spawn_cost.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import anyio

from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import SpawnSpec

ENV = (("PATH", "/usr/bin:/bin"),)


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def time_subprocess(runs: int, *, preexec: bool) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["true"], check=True, preexec_fn=(lambda: None) if preexec else None)
        samples.append(time.perf_counter() - started)
    return p50_ms(samples)


def time_runner(runs: int) -> float:
    runner = HelperProcessRunner()

    async def main() -> list[float]:
        spec = SpawnSpec(argv=("true",), env=ENV, cwd="/", executable="/bin/true")
        await runner.run(spec)  # start the helper outside the measurement
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            (await runner.run(spec)).unwrap()
            samples.append(time.perf_counter() - started)
        return samples

    try:
        return p50_ms(anyio.run(main))
    finally:
        runner.close()


def measure(runs: int) -> dict[str, float]:
    return {
        "subprocess.run": time_subprocess(runs, preexec=False),
        "subprocess.run + preexec_fn": time_subprocess(runs, preexec=True),
        "mechasandbox runner": time_runner(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--heap-gib", type=float, default=2.0)
    args = parser.parse_args()
    small = measure(args.runs)
    heap = bytearray(int(args.heap_gib * 1024**3))
    for offset in range(0, len(heap), 4096):  # touch every page so it is really resident
        heap[offset] = 1
    big = measure(args.runs)
    print(f"p50 latency of `true` over {args.runs} runs (ms)")
    print(f"{'':32} {'small parent':>14} {f'{args.heap_gib:g} GiB parent':>16}")
    for name in small:
        print(f"{name:32} {small[name]:14.2f} {big[name]:16.2f}")
    del heap


if __name__ == "__main__":
    main()
