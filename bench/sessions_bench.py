"""Sessions (docs/sessions.md): `true` in a session, with the default policy's per-command
rlimits and tree kill, next to bare `subprocess.run` (interleaved: one sample of each per
round), and the time to open a session (until its agent said hello) and to close it.

    PYTHONPATH=src python bench/sessions_bench.py [--runs 300] [--opens 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import anyio
from returns.result import Failure

from mechasandbox.backends.base import Backend
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.backends.session_base import BackendSession, SessionSettings, open_session
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.runner.runner import HelperProcessRunner

POLICY = Policy(enforcement=Enforcement.BEST_EFFORT)


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1]


async def main(args: argparse.Namespace) -> None:
    runner = HelperProcessRunner()
    backends: list[Backend] = [BubblewrapBackend(runner=runner), LandlockBackend(runner=runner)]
    with tempfile.TemporaryDirectory() as workspace:
        sessions: dict[str, BackendSession] = {}
        for backend in backends:
            opened = await open_session(backend, workspace, POLICY, SessionSettings())
            if isinstance(opened, Failure):
                print(f"{backend.name}: no session here ({opened.failure().message})")
                continue
            sessions[backend.name] = opened.unwrap()
        request = RunRequest(argv=("true",), workspace=workspace)

        def bare() -> Awaitable[None]:
            async def once() -> None:
                subprocess.run(["true"], check=True)

            return once()

        contenders: dict[str, Callable[[], Awaitable[object]]] = {"subprocess.run": bare}
        for name, session in sessions.items():
            contenders[f"{name} session"] = lambda s=session: s.run(request)
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(20):  # warm up
            for call in contenders.values():
                await call()
        for _ in range(args.runs):
            for name, call in contenders.items():
                started = time.perf_counter()
                await call()
                samples[name].append((time.perf_counter() - started) * 1000)
        base = statistics.median(samples["subprocess.run"])
        print(f"`true`, {args.runs} interleaved rounds (ms):")
        for name, values in samples.items():
            p50, p95 = quantiles(values)
            print(f"  {name:<22} p50 {p50:6.3f}  p95 {p95:6.3f}  ({p50 / base:.2f}x bare)")
        for session in sessions.values():
            await session.aclose()

        print(f"opening a session (until the agent's hello), {args.opens} each (ms):")
        for backend in backends:
            if backend.name not in sessions:
                continue
            opens: list[float] = []
            closes: list[float] = []
            for _ in range(args.opens):
                started = time.perf_counter()
                session = (
                    await open_session(backend, workspace, POLICY, SessionSettings())
                ).unwrap()
                opened_at = time.perf_counter()
                await session.aclose()
                opens.append((opened_at - started) * 1000)
                closes.append((time.perf_counter() - opened_at) * 1000)
            p50, p95 = quantiles(opens)
            c50, _ = quantiles(closes)
            print(f"  {backend.name:<22} open p50 {p50:6.2f}  p95 {p95:6.2f}  close p50 {c50:6.2f}")
    runner.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--opens", type=int, default=30)
    anyio.run(main, parser.parse_args())
    sys.exit(0)
