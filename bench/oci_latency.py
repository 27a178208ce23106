"""p50 latency of `true` through our docker/podman backend vs a bare `ENGINE run --rm`.

PYTHONPATH=src python bench/oci_latency.py [docker|podman] [runs] [image]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

import anyio

from mechasandbox.backends.oci import DockerBackend, OciBackend, PodmanBackend
from mechasandbox.domain import Policy, RunRequest
from mechasandbox.runner.runner import HelperProcessRunner


async def ours(backend: OciBackend, runs: int, workspace: str) -> list[float]:
    request = RunRequest(argv=["true"], workspace=workspace)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = await backend.run(request, Policy())
        times.append(time.perf_counter() - started)
        assert result.unwrap().exit_code == 0, result
    return times


def bare(engine: str, image: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        # podman raises NOFILE/NPROC by default, which fails without CAP_SYS_RESOURCE.
        quirks = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=512:512"]
        extra = quirks if engine == "podman" else []
        subprocess.run(
            [engine, "run", "--rm", "--network", "none", *extra, image, "true"], check=True
        )
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    engine = sys.argv[1] if len(sys.argv) > 1 else "docker"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    image = sys.argv[3] if len(sys.argv) > 3 else "mechasandbox-test:busybox"
    runner = HelperProcessRunner()
    cls = DockerBackend if engine == "docker" else PodmanBackend
    backend = cls(runner=runner, image=image)
    backend.probe().unwrap()  # warm the probe cache: measured runs are steady state
    with tempfile.TemporaryDirectory() as workspace:
        mine = anyio.run(ours, backend, runs, workspace)
    plain = bare(engine, image, runs)
    runner.close()
    for label, values in (("mechasandbox", mine), (f"bare {engine} run --rm", plain)):
        ms = sorted(v * 1000 for v in values)
        print(
            f"{label:28s} p50 {statistics.median(ms):6.1f} ms  min {ms[0]:6.1f}  max {ms[-1]:6.1f}"
        )


if __name__ == "__main__":
    main()
