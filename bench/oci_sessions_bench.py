"""Container sessions next to llm-sandbox's, and their creation next to a cold `docker run`.

    PYTHONPATH=src python bench/oci_sessions_bench.py [--rounds 10] [--runs 20] [--podman]

Measured side by side in one run, one round at a time: `--runs` commands `true` in our
docker session (opened once), the same in one llm-sandbox docker session
(`execute_command("true")`, its docker SDK `exec_run` per command) on the same image, and
(`--podman`) in our podman session; then one cold `docker run --rm --network none IMAGE true`
and the opening of a new docker session of ours (closed outside the figure).

llm-sandbox is installed by this bench into a venv of its own (`bench/.venvs/llm-sandbox`,
from PyPI, never the project's venv) and driven there by `llm_sandbox_driver.py`. Its
session needs an image whose CMD keeps the container up: `mechasandbox-bench:llm-sandbox`,
built here from the local test image (`CMD ["sh"]`; nothing is pulled). Every container is
`--network none` (llm-sandbox's through `runtime_configs`).

Goals (issue 18): our session's `true` p50 <= 0.1x llm-sandbox's; opening a session <= one
cold `docker run`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mechasandbox.backends.oci import DockerBackend, PodmanBackend
from mechasandbox.domain import Enforcement, Policy
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.sandbox import Sandbox

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venvs" / "llm-sandbox"
IMAGE = "mechasandbox-test:busybox"
PEER_IMAGE = "mechasandbox-bench:llm-sandbox"
POLICY = Policy(enforcement=Enforcement.BEST_EFFORT)


def peer_python() -> str:
    """llm-sandbox's own venv (made and filled once)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import llm_sandbox, docker"], check=False)
    if probe.returncode != 0:
        pip = [str(python), "-m", "pip", "install", "-q", "llm-sandbox[docker]"]
        subprocess.run(pip, check=True)
    return str(python)


def peer_image(base: str) -> None:
    """The test image with a CMD (llm-sandbox starts the image's own command)."""
    dockerfile = f'FROM {base}\nCMD ["sh"]\n'
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the classic builder: local base, no pull
    build = ["docker", "build", "-q", "--pull=false", "-t", PEER_IMAGE, "-"]
    subprocess.run(build, input=dockerfile.encode(), env=env, check=True, capture_output=True)


class Peer:
    """llm-sandbox's session, in its own process and venv."""

    def __init__(self, python: str) -> None:
        self.process = subprocess.Popen(
            [python, str(HERE / "llm_sandbox_driver.py"), PEER_IMAGE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, line: str) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.ask("close")
        self.process.wait(timeout=60)


def cold_run() -> float:
    started = time.perf_counter()
    argv = ["docker", "run", "--rm", "--network", "none", IMAGE, "true"]
    subprocess.run(argv, check=True)
    return time.perf_counter() - started


async def ours(backend: Any, workspace: str, rounds: int, runs: int, peer: Peer, podman: Any):  # type: ignore[no-untyped-def]
    times: dict[str, list[float]] = {
        "docker session, true (ours)": [],
        "llm-sandbox session, execute_command('true')": [],
        "podman session, true (ours)": [],
        "cold docker run --rm --network none": [],
        "docker session opened (ours)": [],
    }
    docker_sandbox = Sandbox(backend=backend, policy=POLICY)
    podman_sandbox = Sandbox(backend=podman, policy=POLICY) if podman is not None else None

    async def burst(session: Any, into: str) -> None:
        for _ in range(runs):
            started = time.perf_counter()
            result = await session.run_async(["true"])
            times[into].append(time.perf_counter() - started)
            assert result.unwrap().exit_code == 0, result

    async with docker_sandbox.session(workspace=workspace) as session:
        session.opened.unwrap()
        await burst(session, "docker session, true (ours)")  # warm-up, dropped below
        times["docker session, true (ours)"].clear()
        podman_cm = podman_sandbox.session(workspace=workspace) if podman_sandbox else None
        podman_session = await podman_cm.__aenter__() if podman_cm else None
        try:
            for _ in range(rounds):
                await burst(session, "docker session, true (ours)")
                times["llm-sandbox session, execute_command('true')"] += peer.ask(str(runs))
                if podman_session is not None:
                    await burst(podman_session, "podman session, true (ours)")
                times["cold docker run --rm --network none"].append(cold_run())
                started = time.perf_counter()
                async with docker_sandbox.session(workspace=workspace) as fresh:
                    times["docker session opened (ours)"].append(time.perf_counter() - started)
                    fresh.opened.unwrap()
        finally:
            if podman_cm is not None:
                await podman_cm.__aexit__(None, None, None)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20, help="commands per round and session")
    parser.add_argument("--podman", action="store_true", help="also our podman session")
    args = parser.parse_args()
    python = peer_python()
    peer_image(IMAGE)
    runner = HelperProcessRunner()
    backend = DockerBackend(runner=runner, image=IMAGE)
    backend.probe().unwrap()
    podman = PodmanBackend(runner=runner, image=IMAGE) if args.podman else None
    if podman is not None:
        podman.probe().unwrap()
    peer = Peer(python)
    peer_opened = peer.ask("open")
    peer.ask("5")  # warm-up
    try:
        with tempfile.TemporaryDirectory() as workspace:
            times = anyio.run(ours, backend, workspace, args.rounds, args.runs, peer, podman)
    finally:
        peer.close()
        runner.close()
    peer_p50 = statistics.median(times["llm-sandbox session, execute_command('true')"])
    cold_p50 = statistics.median(times["cold docker run --rm --network none"])
    print(
        f"{args.rounds} rounds of {args.runs} commands per session, one cold run and one "
        f"session opened; ms (llm-sandbox's session opened in {peer_opened * 1000:.0f} ms)"
    )
    print(f"{'':46s} {'p50':>8s} {'p90':>8s} {'min':>8s}  ratio")
    for label, values in times.items():
        if not values:
            continue
        ms = sorted(v * 1000 for v in values)
        p50 = statistics.median(ms)
        reference = cold_p50 if "run" in label or "opened" in label else peer_p50
        against = "cold run" if reference is cold_p50 else "llm-sandbox"
        print(
            f"{label:46s} {p50:8.2f} {ms[int(len(ms) * 0.9)]:8.2f} {ms[0]:8.2f}"
            f"  x{p50 / 1000 / reference:.3f} of {against}"
        )


if __name__ == "__main__":
    main()
