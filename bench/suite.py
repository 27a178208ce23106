"""`make bench`: every figure of the benchmark issue, measured side by side in one run.

Prints a table and writes the same figures as JSON to `bench/results/` (gitignored).

1. latency of `true` (p50/p95) per available backend, next to bare `subprocess.run`,
   `anyio.run_process`, a direct `bwrap` with our flags and a cold `docker run`; the
   contenders are interleaved (one sample of each per round), so that load from other work
   on the machine hits all of them alike;
   then the same with runs a quiet spell apart, as an agent's commands are;
2. the same from a host holding a resident heap (2 GiB by default), as a ratio;
3. throughput (runs/s) at concurrency 1, 4 and 16 per backend vs bare subprocess;
4. 1 GiB of output through a 1 MiB cap: drain rate and host RSS growth;
5. CLI wall time of `mechasandbox run --backend bubblewrap -- true` and of `doctor`;
6. the proxy's figures (`bench/proxy_bench.py`, small sizes), and the docker warm pool's
   next to our cold run and a bare `docker run --rm` (`bench/oci_latency.py`);
7. sessions: `true` in a session next to bare `subprocess.run`, and a session's opening
   (`bench/sessions_bench.py`).
8. the `ray` backend on a two-node cluster in network namespaces (`bench/ray_bench.py`,
   root and the `ray` extra): the latency it adds to `true`, throughput on one node and two.
   (`bench/sessions_bench.py`);
9. containers: 20 one-shot runs back to back through docker's warm pool next to a cold
   `docker run`, and `true` in docker and podman sessions next to llm-sandbox's session
   (`bench/pool_back_to_back.py`, `bench/oci_sessions_bench.py`).

    PYTHONPATH=src python bench/suite.py [--quick] [--runs N] [--seconds S] [--skip docker,...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from returns.result import Success

import mechasandbox
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.bwrap_compiler import ARGS_FD, SECCOMP_FD
from mechasandbox.backends.linux.bwrap_hooks import seccomp_program
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.backends.process import ProcessBackend
from mechasandbox.backends.template import Job
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import SpawnSpec

HERE = Path(__file__).resolve().parent
SRC = Path(mechasandbox.__file__).resolve().parents[1]  # the tree under test (PYTHONPATH)
RESULTS = HERE / "results"
IMAGE = "mechasandbox-test:busybox"
ENV = (("PATH", "/usr/bin:/bin"),)
POLICY = Policy(enforcement=Enforcement.BEST_EFFORT)
NO_CGROUP = "left out by the bench"

Sample = Callable[[], Awaitable[None]]


# --- statistics ------------------------------------------------------------------------------
def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000,
        "min_ms": ordered[0] * 1000,
    }


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# --- contenders ------------------------------------------------------------------------------
class Contenders:
    """Every way of running `true` that this host offers, as async one-sample callables."""

    def __init__(self, workspace: str, skip: set[str]) -> None:
        self.runner = HelperProcessRunner()
        # Each backend is set up as an application using it would be: a spawn helper and a
        # cgroup pool of its own, so that its warm children are prepared like its runs (a
        # helper shared by backends that alternate run by run prepares generic ones).
        self.runners = [self.runner]

        def own(kind: Any, **options: Any) -> Callable[[], Any]:
            def make() -> Any:
                runner = HelperProcessRunner()
                self.runners.append(runner)
                cgroups = options.pop("cgroups", None) or CgroupManager.probe()
                return kind(runner=runner, cgroups=cgroups, **options)

            return make

        self.backends: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        candidates: dict[str, Callable[[], Any]] = {
            "process": own(ProcessBackend),
            "landlock": own(LandlockBackend),
            "bubblewrap": own(BubblewrapBackend),
            "docker": self._docker,
        }
        # The same without a cgroup: on cgroup v1, joining one waits for an RCU grace period
        # when no other migration happened lately (see docs/performance.md).
        candidates |= {
            "process, no cgroup": own(ProcessBackend, cgroups=NO_CGROUP),
            "bubblewrap, no cgroup": own(BubblewrapBackend, cgroups=NO_CGROUP),
        }
        for name, make in candidates.items():
            if name.split(",")[0] in skip:
                continue
            try:
                backend = make()
                backend.probe().unwrap()
            except Exception as error:
                self.unavailable[name] = str(error)[:200]
                continue
            self.backends[name] = backend
        self.bwrap_argv: list[str] | None = None
        self.bwrap_fds: dict[int, bytes] = {}  # what bwrap reads from descriptors
        # The backends run in `workspace/backend`, the direct bwrap calls in a workspace of
        # their own: the mount points bwrap makes for missing protected paths stay there
        # (nobody removes them), and in the backend's workspace they would change what the
        # backend finds and does. The backend removes its own after each run: that is part
        # of its cost, measured here.
        self.workspace = os.path.join(workspace, "backend")
        self.direct_workspace = os.path.join(workspace, "direct")
        for path in (self.workspace, self.direct_workspace):
            os.mkdir(path)
        self.request = RunRequest(argv=["true"], workspace=self.workspace)
        if "bubblewrap" in self.backends:
            direct = RunRequest(argv=["true"], workspace=self.direct_workspace)
            bubblewrap = self.backends["bubblewrap"]
            job = Job(
                request=direct,
                policy=POLICY,
                host=self.runner_host(),
                workspace=os.path.realpath(self.direct_workspace),
            )
            compiled = bubblewrap.compile(job, bubblewrap.plan_setting(POLICY))
            command, _ = compiled.unwrap().compiled
            self.bwrap_argv = list(command.argv)
            self.bwrap_fds = {SECCOMP_FD: seccomp_program(), ARGS_FD: command.arguments_on_fd}
        self.docker = shutil.which("docker") if "docker" in self.backends else None
        self.direct_cgroups = CgroupManager.probe()

    def runner_host(self) -> Any:
        return self.backends["bubblewrap"].host

    def _docker(self) -> Any:
        from mechasandbox.backends.oci import DockerBackend

        return DockerBackend(runner=self.runner, image=IMAGE)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()

    # one sample each
    @staticmethod
    async def bare() -> None:
        subprocess.run(["true"], check=True)

    @staticmethod
    async def preexec() -> None:
        subprocess.run(["true"], check=True, preexec_fn=lambda: None)

    @staticmethod
    async def anyio_process() -> None:
        await anyio.run_process(["true"])

    async def runner_only(self) -> None:
        spec = SpawnSpec(argv=("true",), env=ENV, cwd="/", executable="/bin/true")
        (await self.runner.run(spec)).unwrap()

    async def direct_bwrap(self) -> None:
        self._bwrap()

    def _bwrap(self, preexec: Callable[[], None] | None = None) -> None:
        """bwrap with the backend's argv, environment (none) and descriptors."""
        assert self.bwrap_argv is not None
        saved: dict[int, int | None] = {}
        for fd, data in self.bwrap_fds.items():
            read_end, write_end = os.pipe()
            os.write(write_end, data)
            os.close(write_end)
            saved[fd] = os.dup(fd) if _fd_open(fd) else None
            os.dup2(read_end, fd)
            os.close(read_end)
        try:
            subprocess.run(
                self.bwrap_argv,
                check=True,
                pass_fds=tuple(self.bwrap_fds),
                cwd=self.direct_workspace,
                env={},
                preexec_fn=preexec,
            )
        finally:
            for fd, kept in saved.items():
                os.close(fd)
                if kept is not None:
                    os.dup2(kept, fd)
                    os.close(kept)

    async def direct_bwrap_in_cgroup(self) -> None:
        """The same, joined to a cgroup like our runs: a memory cgroup makes the kernel's
        namespace and mount setup dearer, and that is no overhead of ours."""
        # A manager of its own: our runs' pooled cgroups hold warm children, which a run
        # that is not ours would kill when it empties the cgroup.
        manager = self.direct_cgroups
        assert isinstance(manager, CgroupManager)
        run = manager.create(POLICY.limits)

        def join() -> None:
            for procs in run.procs_files:
                with open(procs, "w") as handle:
                    handle.write("0")

        try:
            self._bwrap(preexec=join)
        finally:
            manager.destroy(run)

    async def cold_docker(self) -> None:
        assert self.docker is not None
        subprocess.run(
            [self.docker, "run", "--rm", "--network", "none", IMAGE, "true"],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def backend_sample(self, name: str, workspace: str | None = None) -> Sample:
        backend = self.backends[name]
        request = RunRequest(argv=["true"], workspace=workspace) if workspace else self.request

        async def sample() -> None:
            result = await backend.run(request, POLICY)
            assert isinstance(result, Success), result
            assert result.unwrap().exit_code == 0, result

        return sample

    def latency_set(self, *, heavy: bool) -> dict[str, Sample]:
        """Name -> sampler. `heavy`: include the slow docker contenders."""
        chosen: dict[str, Sample] = {
            "subprocess.run": self.bare,
            "anyio.run_process": self.anyio_process,
            "subprocess.run + preexec_fn": self.preexec,
            "runner (spawn helper)": self.runner_only,
        }
        for name in (
            "process",
            "process, no cgroup",
            "landlock",
            "bubblewrap",
            "bubblewrap, no cgroup",
        ):
            if name in self.backends:
                chosen[f"backend {name}"] = self.backend_sample(name)
        if self.bwrap_argv is not None:
            chosen["direct bwrap (same argv)"] = self.direct_bwrap
            if isinstance(self.direct_cgroups, CgroupManager):
                chosen["direct bwrap, in a cgroup"] = self.direct_bwrap_in_cgroup
        if heavy and "docker" in self.backends:
            chosen["backend docker"] = self.backend_sample("docker")
            chosen["cold docker run --rm"] = self.cold_docker
        return chosen


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def interleaved(samplers: dict[str, Sample], runs: dict[str, int]) -> dict[str, list[float]]:
    """One sample of each contender per round, so that load spikes hit all alike."""
    for sample in samplers.values():
        await sample()  # warm-up: helper start, probes, hook imports
    out: dict[str, list[float]] = {name: [] for name in samplers}
    for round_ in range(max(runs.values())):
        for name, sample in samplers.items():
            if round_ >= runs[name]:
                continue
            started = time.perf_counter()
            await sample()
            out[name].append(time.perf_counter() - started)
    return out


# --- sections --------------------------------------------------------------------------------
def latency(contenders: Contenders, args: argparse.Namespace) -> dict[str, Any]:
    samplers = contenders.latency_set(heavy=True)
    runs = {name: args.docker_runs if "docker" in name else args.runs for name in samplers}
    samples = anyio.run(interleaved, samplers, runs)
    return {name: summary(values) for name, values in samples.items()}


def sporadic(contenders: Contenders, args: argparse.Namespace) -> dict[str, Any]:
    """Runs a quiet spell apart, as an agent's commands are: one run of each contender per
    round, rounds `--gap-ms` apart (kernel work such as a cgroup join's RCU grace period is
    then paid by every run, where a tight loop shares it)."""
    samplers = {
        name: sample
        for name, sample in contenders.latency_set(heavy=False).items()
        if name.startswith("backend")
        or name in ("subprocess.run", "runner (spawn helper)", "direct bwrap (same argv)")
    }
    out: dict[str, list[float]] = {name: [] for name in samplers}

    async def main() -> None:
        for sample in samplers.values():
            await sample()
        for _ in range(args.sporadic_runs):
            for name, sample in samplers.items():
                await anyio.sleep(args.gap_ms / 1000)
                started = time.perf_counter()
                await sample()
                out[name].append(time.perf_counter() - started)

    anyio.run(main)
    return {"gap_ms": args.gap_ms} | {name: summary(values) for name, values in out.items()}


def heap_ratio(contenders: Contenders, args: argparse.Namespace) -> dict[str, Any]:
    """Small host vs a host with `--heap-gib` resident, alternating twice."""
    samplers = {
        name: sample
        for name, sample in contenders.latency_set(heavy=False).items()
        if "in a cgroup" not in name  # forks this host: a reference for the latency table only
    }
    runs = {name: max(10, args.runs // 2) for name in samplers}
    small: dict[str, list[float]] = {name: [] for name in samplers}
    big: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(2):
        for name, values in anyio.run(interleaved, samplers, runs).items():
            small[name] += values
        heap = bytearray(int(args.heap_gib * 1024**3))
        heap[::4096] = b"\1" * len(range(0, len(heap), 4096))  # make every page resident
        resident_gib = rss_kib() / 1024**2
        for name, values in anyio.run(interleaved, samplers, runs).items():
            big[name] += values
        del heap
    result: dict[str, Any] = {"heap_gib": args.heap_gib, "resident_gib": resident_gib}
    for name in samplers:
        s, b = summary(small[name]), summary(big[name])
        result[name] = {
            "small_p50_ms": s["p50_ms"],
            "big_p50_ms": b["p50_ms"],
            "ratio": b["p50_ms"] / s["p50_ms"],
        }
    return result


async def _throughput_one(samples: list[Sample], concurrency: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(sample: Sample) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await sample()
            done += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(concurrency):
            group.start_soon(worker, samples[index % len(samples)])
    return done / (time.perf_counter() - started)


def throughput(contenders: Contenders, args: argparse.Namespace) -> dict[str, Any]:
    async def bare_threads() -> None:
        await anyio.to_thread.run_sync(lambda: subprocess.run(["true"], check=True))

    # One workspace per worker: concurrent bubblewrap runs in one workspace race on the
    # placeholder directories (see docs/performance.md).
    workspaces = [tempfile.mkdtemp(prefix="msbench-") for _ in range(16)]
    samplers: dict[str, list[Sample]] = {
        "subprocess.run (threads)": [bare_threads],
        "anyio.run_process": [contenders.anyio_process],
        "runner (spawn helper)": [contenders.runner_only],
    }
    for name in ("process", "landlock", "bubblewrap"):
        if name in contenders.backends:
            samplers[f"backend {name}"] = [
                contenders.backend_sample(name, path) for path in workspaces
            ]

    async def main() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {name: {} for name in samplers}
        for concurrency in (1, 4, 16):
            for name, samples in samplers.items():
                rate = await _throughput_one(samples, concurrency, args.seconds)
                out[name][str(concurrency)] = rate
        return out

    try:
        return anyio.run(main)
    finally:
        for path in workspaces:
            shutil.rmtree(path, ignore_errors=True)


def output_cap(contenders: Contenders, args: argparse.Namespace) -> dict[str, Any]:
    """`head -c 1GiB /dev/zero` with a 1 MiB cap: rate and peak RSS growth of this host."""
    total = args.output_mib * 1024 * 1024
    cap = 1024 * 1024
    argv = ("head", "-c", str(total), "/dev/zero")
    result: dict[str, Any] = {"bytes": total, "cap_bytes": cap}

    def measured(label: str, run: Callable[[], None]) -> None:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
        before = rss_kib()
        started = time.perf_counter()
        run()
        elapsed = time.perf_counter() - started
        result[label] = {
            "seconds": elapsed,
            "mib_s": total / elapsed / 1024**2,
            "rss_growth_mib": max(0, rss_kib("VmHWM") - before) / 1024,
        }

    def bare_pipe() -> None:
        with subprocess.Popen(list(argv), stdout=subprocess.PIPE) as child:
            assert child.stdout is not None
            kept = bytearray()
            while chunk := child.stdout.read1(256 * 1024):
                if len(kept) < cap:
                    kept += chunk[: cap - len(kept)]

    def through_runner() -> None:
        spec = SpawnSpec(
            argv=argv, env=ENV, cwd="/", executable="/usr/bin/head", max_output_bytes=cap
        )
        outcome = anyio.run(contenders.runner.run, spec).unwrap()
        assert outcome.stdout_truncated
        assert len(outcome.stdout) == cap

    def through_backend(name: str) -> Callable[[], None]:
        backend = contenders.backends[name]
        policy = Policy(
            enforcement=Enforcement.BEST_EFFORT,
            limits=Limits(max_output_bytes=cap),
        )
        request = RunRequest(argv=list(argv), workspace=contenders.workspace)

        def run() -> None:
            outcome = anyio.run(backend.run, request, policy).unwrap()
            assert outcome.stdout_truncated, outcome

        return run

    measured("subprocess pipe, read and drop", bare_pipe)
    measured("runner (spawn helper)", through_runner)
    for name in ("process", "bubblewrap"):
        if name in contenders.backends:
            measured(f"backend {name}", through_backend(name))
    return result


def cli(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    commands = {
        "python -c pass (interpreter start)": [sys.executable, "-c", "pass"],
        "mechasandbox run --backend bubblewrap -- true": [
            sys.executable,
            "-m",
            "mechasandbox",
            "run",
            "--backend",
            "bubblewrap",
            "--",
            "true",
        ],
        "mechasandbox doctor": [sys.executable, "-m", "mechasandbox", "doctor"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.cli_runs):
            for name, argv in commands.items():
                started = time.perf_counter()
                subprocess.run(
                    argv,
                    check=False,
                    env=env,
                    cwd=cwd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                samples[name].append(time.perf_counter() - started)
    return {name: summary(values) for name, values in samples.items()}


def proxy(args: argparse.Namespace) -> dict[str, Any]:
    script = HERE / "proxy_bench.py"
    sizes = ["--mib", "32", "--connections", "50"] if args.quick else ["--mib", "128"]
    done = subprocess.run(
        [sys.executable, str(script), *sizes],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return {"command": f"bench/proxy_bench.py {' '.join(sizes)}", "output": done.stdout.strip()}


def warm_pool(contenders: Contenders, args: argparse.Namespace) -> dict[str, Any]:
    """The docker backend's warm pool next to our cold run and a bare `docker run --rm`
    (`bench/oci_latency.py`, interleaved rounds); skipped without a docker engine."""
    if contenders.docker is None:
        return {"command": "bench/oci_latency.py", "output": "(skipped: no docker backend here)"}
    rounds = "5" if args.quick else "10"
    script = HERE / "oci_latency.py"
    done = subprocess.run(
        [sys.executable, str(script), "docker", rounds, IMAGE],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout.strip() or f"(failed: {done.stderr.strip()[-300:]})"
    return {"command": f"bench/oci_latency.py docker {rounds}", "output": output}


def containers(contenders: Contenders, args: argparse.Namespace) -> dict[str, Any]:
    """Docker's one-shot pool back to back (`bench/pool_back_to_back.py`), and container
    sessions next to llm-sandbox's and a cold `docker run` (`bench/oci_sessions_bench.py`,
    which installs llm-sandbox in a venv of its own); skipped without a docker engine."""
    scripts = (
        ("pool_back_to_back.py", ["--rounds", "2" if args.quick else "4"]),
        ("oci_sessions_bench.py", ["--rounds", "3" if args.quick else "8", "--podman"]),
    )
    if contenders.docker is None:
        return {"command": "", "output": "(skipped: no docker backend here)"}
    outputs, commands = [], []
    for script, options in scripts:
        done = subprocess.run(
            [sys.executable, str(HERE / script), *options],
            env={**os.environ, "PYTHONPATH": str(SRC)},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        outputs.append(done.stdout.strip() or f"(failed: {done.stderr.strip()[-300:]})")
        commands.append(f"bench/{script} {' '.join(options)}")
    return {"command": "; ".join(commands), "output": "\n\n".join(outputs)}


def sessions(args: argparse.Namespace) -> dict[str, Any]:
    """Sessions (`bench/sessions_bench.py`): `true` in a bubblewrap and a landlock session
    next to bare `subprocess.run`, interleaved; the time to open one."""
    sizes = ["--runs", "100", "--opens", "10"] if args.quick else ["--runs", "300"]
    done = subprocess.run(
        [sys.executable, str(HERE / "sessions_bench.py"), *sizes],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout.strip() or f"(failed: {done.stderr.strip()[-300:]})"
    return {"command": f"bench/sessions_bench.py {' '.join(sizes)}", "output": output}


def ray(args: argparse.Namespace) -> dict[str, Any]:
    """`bench/ray_bench.py` (it says itself why it is skipped where it cannot run)."""
    rounds, runs = ("20", "50") if args.quick else ("60", "100")
    done = subprocess.run(
        [sys.executable, str(HERE / "ray_bench.py"), rounds, runs],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = done.stdout.strip() or f"(failed: {done.stderr.strip()[-300:]})"
    return {"command": f"bench/ray_bench.py {rounds} {runs}", "output": output}


# --- report ----------------------------------------------------------------------------------
def print_report(report: dict[str, Any]) -> None:
    print(f"\n# mechasandbox bench ({report['host']['when']}, {report['host']['cpus']} cpus)")
    if report.get("unavailable"):
        for name, reason in report["unavailable"].items():
            print(f"  (skipped {name}: {reason})")
    if "latency" in report:
        lat = report["latency"]
        base = lat["subprocess.run"]["p50_ms"]
        print("\n## latency of `true` (interleaved rounds)")
        print(f"{'':34}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}{'x bare':>9}")
        for name, row in lat.items():
            ratio = row["p50_ms"] / base
            print(
                f"{name:34}{row['n']:>5}{row['p50_ms']:>10.2f}{row['p95_ms']:>10.2f}{ratio:>9.2f}"
            )
        for direct in ("direct bwrap (same argv)", "direct bwrap, in a cgroup"):
            if direct in lat and "backend bubblewrap" in lat:
                ratio = lat["backend bubblewrap"]["p50_ms"] / lat[direct]["p50_ms"]
                label = "bwrap backend / " + direct.replace(" (same argv)", "")
                print(f"{label:34}{'':25}{ratio:>9.2f}")
    if "sporadic" in report:
        spo = report["sporadic"]
        print(f"\n## latency of `true`, runs {spo['gap_ms']} ms apart (as an agent's commands)")
        print(f"{'':34}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}")
        for name, row in spo.items():
            if isinstance(row, dict):
                print(f"{name:34}{row['n']:>5}{row['p50_ms']:>10.2f}{row['p95_ms']:>10.2f}")
    if "heap" in report:
        heap = report["heap"]
        print(f"\n## host holding {heap['heap_gib']:g} GiB resident (p50 ms; goal ratio <= 1.3)")
        print(f"{'':34}{'small':>10}{'big':>10}{'ratio':>9}")
        for name, row in heap.items():
            if isinstance(row, dict):
                print(
                    f"{name:34}{row['small_p50_ms']:>10.2f}{row['big_p50_ms']:>10.2f}"
                    f"{row['ratio']:>9.2f}"
                )
    if "throughput" in report:
        print("\n## throughput (runs/s) at concurrency")
        print(f"{'':34}{'1':>9}{'4':>9}{'16':>9}")
        for name, row in report["throughput"].items():
            print(f"{name:34}" + "".join(f"{row[c]:>9.0f}" for c in ("1", "4", "16")))
    if "output" in report:
        out = report["output"]
        mib = out["bytes"] // 1024**2
        print(f"\n## {mib} MiB of output through a 1 MiB cap (goal: RSS growth <= 32 MiB)")
        print(f"{'':34}{'MiB/s':>9}{'RSS +MiB':>10}")
        for name, row in out.items():
            if isinstance(row, dict):
                print(f"{name:34}{row['mib_s']:>9.0f}{row['rss_growth_mib']:>10.1f}")
    if "cli" in report:
        print("\n## CLI wall time (goal: run <= 150 ms)")
        print(f"{'':48}{'p50 ms':>9}{'p95 ms':>9}")
        for name, row in report["cli"].items():
            print(f"{name:48}{row['p50_ms']:>9.0f}{row['p95_ms']:>9.0f}")
    if "proxy" in report:
        print(f"\n## proxy ({report['proxy']['command']})")
        print(report["proxy"]["output"])
    if "pool" in report:
        print(f"\n## docker warm pool ({report['pool']['command']})")
        print(report["pool"]["output"])
    if "sessions" in report:
        print(f"\n## sessions ({report['sessions']['command']})")
        print(report["sessions"]["output"])
    if "ray" in report:
        print(f"\n## ray backend ({report['ray']['command']})")
        print(report["ray"]["output"])
    if "containers" in report:
        print(f"\n## container pool and sessions ({report['containers']['command']})")
        print(report["containers"]["output"])


SECTIONS = (
    "latency",
    "sporadic",
    "heap",
    "throughput",
    "output",
    "cli",
    "proxy",
    "pool",
    "sessions",
    "ray",
    "containers",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (about a minute)")
    parser.add_argument("--runs", type=int, help="samples per latency contender")
    parser.add_argument("--docker-runs", type=int, help="samples of the docker contenders")
    parser.add_argument("--seconds", type=float, help="seconds per throughput cell")
    parser.add_argument("--cli-runs", type=int, help="samples per CLI command")
    parser.add_argument("--sporadic-runs", type=int, help="rounds of the sporadic section")
    parser.add_argument("--gap-ms", type=int, default=150, help="quiet spell between runs")
    parser.add_argument("--heap-gib", type=float, default=2.0)
    parser.add_argument("--output-mib", type=int, default=1024)
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--skip", default="", help="sections or backends to leave out")
    parser.add_argument("--label", default="", help="added to the JSON file name")
    parser.add_argument(
        "--workspace-in",
        default=None,
        help="directory to make the workspaces in (default: the temp dir); its file "
        "system sets the cost of the placeholders bubblewrap makes and removes",
    )
    args = parser.parse_args()
    quick = args.quick
    args.runs = args.runs or (40 if quick else 120)
    args.docker_runs = args.docker_runs or (3 if quick else 10)
    args.seconds = args.seconds or (1.0 if quick else 2.0)
    args.cli_runs = args.cli_runs or (5 if quick else 15)
    args.sporadic_runs = args.sporadic_runs or (8 if quick else 15)
    skip = {s for s in args.skip.split(",") if s}
    only = {s for s in args.only.split(",") if s} or set(SECTIONS)
    wanted = [s for s in SECTIONS if s in only and s not in skip]

    started = time.perf_counter()
    now = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "host": {
            "when": now.isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "options": {k: v for k, v in vars(args).items() if k not in {"only", "skip"}},
    }
    with tempfile.TemporaryDirectory(dir=args.workspace_in) as workspace:
        contenders = Contenders(workspace, skip)
        report["unavailable"] = contenders.unavailable
        try:
            for section in wanted:
                section_started = time.perf_counter()
                print(f"[bench] {section}...", file=sys.stderr, flush=True)
                if section == "latency":
                    report[section] = latency(contenders, args)
                elif section == "sporadic":
                    report[section] = sporadic(contenders, args)
                elif section == "heap":
                    report[section] = heap_ratio(contenders, args)
                elif section == "throughput":
                    report[section] = throughput(contenders, args)
                elif section == "output":
                    report[section] = output_cap(contenders, args)
                elif section == "cli":
                    report[section] = cli(args)
                elif section == "proxy":
                    report[section] = proxy(args)
                elif section == "pool":
                    report[section] = warm_pool(contenders, args)
                elif section == "sessions":
                    report[section] = sessions(args)
                elif section == "ray":
                    report[section] = ray(args)
                elif section == "containers":
                    report[section] = containers(contenders, args)
                report.setdefault("section_seconds", {})[section] = round(
                    time.perf_counter() - section_started, 1
                )
        finally:
            contenders.close()
    report["host"]["load_after"] = os.getloadavg()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print_report(report)
    RESULTS.mkdir(exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    name = f"bench-{stamp}{'-' + args.label if args.label else ''}.json"
    for path in (RESULTS / name, RESULTS / "latest.json"):
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n(total {report['total_seconds']} s; JSON: {RESULTS / name})")


if __name__ == "__main__":
    main()
