"""Runs of one backend back to back, nothing else between them: wall time and this host's
CPU time per run of `true`, each contender in turn.

The suite's `latency` section interleaves the contenders, so each backend's helper has had
the other contenders' runs to prepare its next warm child; here it has only the time
between two runs of its own, as for an agent that issues commands in a tight loop.

    PYTHONPATH=src python bench/back_to_back.py [--runs 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # the suite's contenders, set up the same way

NAMES = (
    "subprocess.run",
    "runner (spawn helper)",
    "backend process",
    "backend landlock",
    "backend bubblewrap",
    "direct bwrap (same argv)",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    contenders = suite.Contenders(tempfile.mkdtemp(prefix="mechasandbox-bench-"), {"docker"})
    samplers = contenders.latency_set(heavy=False)
    try:
        print(f"{'':24s} {'wall p50 ms':>12s} {'wall mean ms':>13s} {'host cpu ms':>12s}")
        for name in NAMES:
            if name not in samplers:
                print(f"{name:24s} unavailable")
                continue
            sample = samplers[name]

            async def loop(runs: int, walls: list[float]) -> None:
                for _ in range(runs):
                    started = time.perf_counter()
                    await sample()  # noqa: B023 - run before the loop moves on
                    walls.append(time.perf_counter() - started)

            anyio.run(loop, 20, [])  # warm-up: helper start, probes, warm children
            walls: list[float] = []
            cpu = time.thread_time()
            begun = time.perf_counter()
            anyio.run(loop, args.runs, walls)
            mean = (time.perf_counter() - begun) / args.runs
            host = (time.thread_time() - cpu) / args.runs
            print(
                f"{name:24s} {statistics.median(walls) * 1000:12.2f} "
                f"{mean * 1000:13.2f} {host * 1000:12.2f}"
            )
    finally:
        contenders.close()


if __name__ == "__main__":
    main()
