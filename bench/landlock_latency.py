"""Latency of `true`: bare subprocess.run vs the process and landlock backends (p50, p90).

Run: PYTHONPATH=src python bench/landlock_latency.py [runs]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

import anyio

from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.backends.process import ProcessBackend
from mechasandbox.domain import Enforcement, Policy, RunRequest
from mechasandbox.runner.runner import HelperProcessRunner


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1000
    p90 = ordered[int(len(ordered) * 0.9)] * 1000
    return f"p50 {p50:6.2f} ms  p90 {p90:6.2f} ms"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    bare = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["true"], check=True)
        bare.append(time.perf_counter() - start)
    print(f"subprocess.run(['true'])  {percentiles(bare)}")

    runner = HelperProcessRunner()
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    with tempfile.TemporaryDirectory() as workspace:
        request = RunRequest(argv=["true"], workspace=workspace)
        for backend in (ProcessBackend(runner=runner), LandlockBackend(runner=runner)):

            async def loop(backend: ProcessBackend | LandlockBackend = backend) -> list[float]:
                samples = []
                await backend.run(request, policy)  # warm-up: helper start, hook import
                for _ in range(runs):
                    start = time.perf_counter()
                    result = await backend.run(request, policy)
                    samples.append(time.perf_counter() - start)
                    assert result.unwrap().exit_code == 0
                return samples

            samples = anyio.run(loop)
            ratio = statistics.median(samples) / statistics.median(bare)
            print(f"{backend.name + ' backend':<25} {percentiles(samples)}  ({ratio:.1f}x bare)")
    runner.close()


if __name__ == "__main__":
    main()
