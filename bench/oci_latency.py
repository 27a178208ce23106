"""p50 latency of `true`: our backend cold, through the warm pool, and a bare `ENGINE run`.

PYTHONPATH=src python bench/oci_latency.py [docker|podman] [runs] [image]

The three are measured side by side (interleaved, one of each per round), so that a
slower or faster minute of the machine affects them alike. The pool is measured warm:
before each pooled run the bench waits until the pool has replaced the container the
previous run used (the default `discard` mode), which is the interactive case (an agent's
commands are seconds apart); `reuse` is measured back to back.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

import anyio

from mechasandbox.backends.oci import (
    AfterUse,
    DockerBackend,
    OciBackend,
    PodmanBackend,
    PooledBackend,
    PoolSettings,
)
from mechasandbox.domain import Policy, RunRequest
from mechasandbox.runner.runner import HelperProcessRunner


async def timed(backend: OciBackend | PooledBackend, request: RunRequest) -> float:
    started = time.perf_counter()
    result = await backend.run(request, Policy())
    elapsed = time.perf_counter() - started
    assert result.unwrap().exit_code == 0, result
    return elapsed


async def wait_warm(pooled: PooledBackend) -> None:
    while pooled.pool.stats()["idle"] < pooled.settings.size:
        await anyio.sleep(0.02)


def bare(engine: str, image: str) -> float:
    # podman raises NOFILE/NPROC by default, which fails without CAP_SYS_RESOURCE.
    quirks = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=512:512"]
    extra = quirks if engine == "podman" else []
    started = time.perf_counter()
    subprocess.run([engine, "run", "--rm", "--network", "none", *extra, image, "true"], check=True)
    return time.perf_counter() - started


async def rounds(
    engine: str, image: str, runs: int, workspace: str, backend: OciBackend
) -> dict[str, list[float]]:
    request = RunRequest(argv=["true"], workspace=workspace)
    pooled = PooledBackend(backend=backend, settings=PoolSettings(size=2))
    reused = PooledBackend(backend=backend, settings=PoolSettings(size=1, after_use=AfterUse.REUSE))
    times: dict[str, list[float]] = {
        "mechasandbox cold": [],
        "pool (discard, warm)": [],
        "pool (reuse)": [],
        f"bare {engine} run --rm": [],
    }
    await timed(pooled, request)  # the first start, outside the figures
    await timed(reused, request)
    try:
        for _ in range(runs):
            times["mechasandbox cold"].append(await timed(backend, request))
            await wait_warm(pooled)
            times["pool (discard, warm)"].append(await timed(pooled, request))
            times["pool (reuse)"].append(await timed(reused, request))
            times[f"bare {engine} run --rm"].append(bare(engine, image))
    finally:
        pooled.close()
        reused.close()
    return times


def main() -> None:
    engine = sys.argv[1] if len(sys.argv) > 1 else "docker"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    image = sys.argv[3] if len(sys.argv) > 3 else "mechasandbox-test:busybox"
    runner = HelperProcessRunner()
    cls = DockerBackend if engine == "docker" else PodmanBackend
    backend = cls(runner=runner, image=image)
    backend.probe().unwrap()  # warm the probe cache: measured runs are steady state
    with tempfile.TemporaryDirectory() as workspace:
        times = anyio.run(rounds, engine, image, runs, workspace, backend)
    runner.close()
    cold = statistics.median(times["mechasandbox cold"])
    print(f"{engine}, {runs} rounds, p50 / min / max in ms, ratio to mechasandbox cold")
    for label, values in times.items():
        ms = sorted(v * 1000 for v in values)
        p50 = statistics.median(ms)
        print(
            f"{label:28s} p50 {p50:6.1f}  min {ms[0]:6.1f}  max {ms[-1]:6.1f}"
            f"  x{p50 / 1000 / cold:.2f}"
        )


if __name__ == "__main__":
    main()
