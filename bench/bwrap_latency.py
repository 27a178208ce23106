"""Latency of `true`: bare subprocess, a direct bwrap call with our flags, and our backend.

Usage: PYTHONPATH=src python bench/bwrap_latency.py [runs]   (default 200 runs each)
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from returns.result import Success

import mechasandbox
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend, seccomp_program
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import SpawnSpec


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1000
    p90 = ordered[int(len(ordered) * 0.9)] * 1000
    return f"p50 {p50:6.2f} ms   p90 {p90:6.2f} ms"


def timed(function: Callable[[], object], runs: int) -> list[float]:
    function()  # warm up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    runner = HelperProcessRunner()
    # Start the spawn helper from the package's parent so it imports this checkout (it runs
    # with -E, which drops PYTHONPATH).
    previous = os.getcwd()
    os.chdir(Path(mechasandbox.__file__).resolve().parents[1])
    anyio.run(runner.run, SpawnSpec(argv=("true",), env=(("PATH", "/usr/bin:/bin"),), cwd="/"))
    os.chdir(previous)
    backend = BubblewrapBackend(runner=runner)
    policy = Policy()
    with tempfile.TemporaryDirectory() as workspace:
        request = RunRequest(argv=["true"], workspace=workspace)
        plan = backend.plan(request, policy, backend.host).unwrap()
        argv = dict(plan.sections)["bwrap"]
        bwrap_argv = shlex.split(argv)
        program = seccomp_program()

        def bare() -> None:
            subprocess.run(["true"], check=True)

        def direct() -> None:
            read_end, write_end = os.pipe()
            os.write(write_end, program)
            os.close(write_end)
            if read_end != 3:
                os.dup2(read_end, 3)
                os.close(read_end)
            try:
                subprocess.run(bwrap_argv, check=True, pass_fds=(3,), cwd=workspace)
            finally:
                os.close(3)

        def ours() -> None:
            result = anyio.run(backend.run, request, policy)
            assert isinstance(result, Success), result

        async def ours_loop() -> list[float]:
            samples = []
            for _ in range(runs):
                started = time.perf_counter()
                result = await backend.run(request, policy)
                samples.append(time.perf_counter() - started)
                assert isinstance(result, Success), result
            return samples

        print(f"{runs} runs of `true` each")
        print(f"bare subprocess.run(['true'])  {percentiles(timed(bare, runs))}")
        print(f"direct bwrap (same argv)       {percentiles(timed(direct, runs))}")
        ours()
        print(f"bubblewrap backend             {percentiles(anyio.run(ours_loop))}")
    runner.close()


if __name__ == "__main__":
    main()
