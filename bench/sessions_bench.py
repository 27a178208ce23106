"""Sessions (docs/sessions.md): `true` in a session, with the default policy's per-command
rlimits and tree kill, next to bare `subprocess.run` (interleaved: one sample of each per
round), and the time to open a session (until its agent said hello) and to close it.

`true` is measured twice: right after the sessions opened (their workspace's top level
changed a moment before, so the host lists it again after every command, see
`backends/stamps.py`), and once it has not changed for 2 s (an agent's session from then on;
the goal, 1.5x bare, is about this one).

    PYTHONPATH=src python bench/sessions_bench.py [--runs 300] [--fresh-runs 100] [--opens 30]
"""

from __future__ import annotations

import argparse
import os
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
from mechasandbox.backends.stamps import SETTLE_NS
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
    with tempfile.TemporaryDirectory() as parent:
        # A workspace per session, as an agent has: one session's placeholders (bubblewrap)
        # would otherwise be the other's to list and carve around.
        workspaces = {backend.name: os.path.join(parent, backend.name) for backend in backends}
        for workspace in workspaces.values():
            os.mkdir(workspace)
        sessions: dict[str, BackendSession] = {}
        for backend in backends:
            workspace = workspaces[backend.name]
            opened = await open_session(backend, workspace, POLICY, SessionSettings())
            if isinstance(opened, Failure):
                print(f"{backend.name}: no session here ({opened.failure().message})")
                continue
            sessions[backend.name] = opened.unwrap()
        settled_at = time.time() + SETTLE_NS / 1e9 + 0.1

        def bare() -> Awaitable[None]:
            async def once() -> None:
                subprocess.run(["true"], check=True)

            return once()

        contenders: dict[str, Callable[[], Awaitable[object]]] = {"subprocess.run": bare}
        for name, session in sessions.items():
            request = RunRequest(argv=("true",), workspace=workspaces[name])
            contenders[f"{name} session"] = lambda s=session, r=request: s.run(r)
        for _ in range(20):  # warm up
            for call in contenders.values():
                await call()

        async def rounds(count: int, title: str) -> None:
            samples: dict[str, list[float]] = {name: [] for name in contenders}
            for _ in range(count):
                for name, call in contenders.items():
                    started = time.perf_counter()
                    await call()
                    samples[name].append((time.perf_counter() - started) * 1000)
            base = statistics.median(samples["subprocess.run"])
            print(f"`true`, {count} interleaved rounds, {title} (ms):")
            for name, values in samples.items():
                p50, p95 = quantiles(values)
                print(f"  {name:<22} p50 {p50:6.3f}  p95 {p95:6.3f}  ({p50 / base:.2f}x bare)")

        # Right after the sessions opened, the workspace's top level changed a moment ago
        # (bubblewrap's placeholders): what the host keeps of it between commands is not
        # trusted yet (`stamps.settled`), so each command lists it again.
        await rounds(args.fresh_runs, "the workspace changed < 2 s ago")
        await anyio.sleep(max(0.0, settled_at - time.time()))
        # An agent's session from then on: its workspace's top level changes seldom.
        await rounds(args.runs, "the workspace's top level unchanged for 2 s")
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
                    await open_session(backend, workspaces[backend.name], POLICY, SessionSettings())
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
    parser.add_argument("--fresh-runs", type=int, default=100)
    parser.add_argument("--opens", type=int, default=30)
    anyio.run(main, parser.parse_args())
    sys.exit(0)
