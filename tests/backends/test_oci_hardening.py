"""docker and podman, real engines: what a command, or a killed caller, must not leave on
the host.

- No setuid/setgid file in the workspace (a container of root's made one `chmod 4755`:
  any host user then ran it as root), by any call: the seccomp profile refuses the mode.
  Nor the kernel interfaces the profile takes away (vsock, io_uring, keyrings, ...).
- Nothing runs on once the caller is gone: `mechasandbox run` killed with SIGKILL or
  SIGTERM, or stuck (SIGSTOP) past its deadline, takes its container with it (the lifeline,
  see `backends.oci.lifeline`); the next run removes the stopped container.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
from returns.result import Failure

from mechasandbox.backends.oci import DockerBackend, OciBackend, PodmanBackend, Runtime
from mechasandbox.backends.oci.compiler import LABEL_OWNER
from mechasandbox.domain import RunRequest
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.oci_contract import TEST_IMAGE, ok, policy
from tests.conftest import require_available

pytestmark = [pytest.mark.anyio]

SRC = str(Path(__file__).resolve().parents[2] / "src")
PROBE_SOURCE = Path(__file__).with_name("programs") / "syscall_probe.c"
SETID = stat.S_ISUID | stat.S_ISGID


@pytest.fixture(scope="session")
def syscall_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """programs/syscall_probe.c, built static (it runs in any image)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the syscall probe")
    binary = tmp_path_factory.mktemp("probe") / "syscall_probe"
    built = subprocess.run(
        [compiler, "-static", "-O1", "-o", str(binary), str(PROBE_SOURCE)],
        capture_output=True,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build the syscall probe static: {built.stderr.decode()[-300:]}")
    return binary


def setid_files(workspace: Path) -> list[str]:
    return sorted(
        f"{path.name} {stat.filemode(path.lstat().st_mode)}"
        for path in workspace.rglob("*")
        if not path.is_symlink() and path.lstat().st_mode & SETID
    )


def probe_lines(stdout: bytes) -> dict[str, str]:
    lines = stdout.decode().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def _alive(pid: int) -> bool:
    """Running (not a zombie) on this host."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class OnEngine:
    """A real engine, and how to look at what a host process of ours left in it."""

    backend_class: ClassVar[type[OciBackend]]
    cli: ClassVar[str]

    @pytest.fixture
    def backend(self, runner: HelperProcessRunner) -> OciBackend:
        backend = self.backend_class(runner=runner, image=TEST_IMAGE)
        require_available(backend)
        return backend

    def owned_by(self, pid: int) -> list[str]:
        """The containers (running or not) of the host process `pid`."""
        owner = f"{socket.gethostname()}:{pid}"
        command = [self.cli, "ps", "--all", "--quiet", "--filter", f"label={LABEL_OWNER}={owner}"]
        listed = subprocess.run(command, capture_output=True, check=True, text=True)
        return listed.stdout.split()

    def running(self, pid: int) -> list[str]:
        """Those whose init process is still alive on this host. (Not the engine's word:
        podman's conmon may have been killed with the caller's process tree, and then
        podman shows a container "Up" whose processes are all gone.)"""
        alive = []
        for name in self.owned_by(pid):
            inspected = subprocess.run(
                [self.cli, "inspect", "--format", "{{.State.Pid}}", name],
                capture_output=True,
                check=False,
                text=True,
            )
            init = inspected.stdout.strip()
            if init.isdigit() and int(init) > 0 and _alive(int(init)):
                alive.append(name)
        return alive

    def start_cli(self, workspace: Path, script: str, *options: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "mechasandbox", "run", "--backend", self.cli]
        command += ["--image", TEST_IMAGE, "--workspace", str(workspace), *options]
        with workspace.with_name(workspace.name + ".log").open("ab") as log:
            return subprocess.Popen(
                [*command, "--", "sh", "-c", script],
                env={**os.environ, "PYTHONPATH": SRC},
                stdout=log,
                stderr=log,
            )

    def wait_for(self, marker: Path, cli: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while not marker.exists():
            log = marker.parent.with_name(marker.parent.name + ".log")
            early = log.read_text()[-500:] if log.exists() else ""
            assert cli.poll() is None, f"the CLI ended early: {early}"
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.02)

    def assert_stops(self, pid: int, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while self.running(pid):
            assert time.monotonic() < deadline, "the container still runs"
            time.sleep(0.2)


class Hardening(OnEngine):
    # -- setuid files ---------------------------------------------------------------------

    async def test_no_setuid_or_setgid_file_can_be_made(
        self, backend: OciBackend, tmp_path: Path
    ) -> None:
        script = (
            "cat /bin/sh > b; chmod 755 b;"
            " chmod 4755 b || echo 4755-refused; chmod 2755 b || echo 2755-refused;"
            " chmod u+s b || echo u+s-refused; chmod g+s b || echo g+s-refused;"
            " mkdir d; chmod g+s d || echo dir-g+s-refused;"
            " touch c; chmod 6777 c || echo 6777-refused; echo end"
        )
        request = RunRequest(argv=["sh", "-c", script], workspace=str(tmp_path))
        result = ok(await backend.run(request, policy()))
        assert result.stdout.endswith(b"end\n"), result
        assert setid_files(tmp_path) == []
        assert result.stdout == (
            b"4755-refused\n2755-refused\nu+s-refused\ng+s-refused\ndir-g+s-refused\n"
            b"6777-refused\nend\n"
        )

    async def test_no_setid_mode_by_any_call_and_no_dangerous_interfaces(
        self, backend: OciBackend, tmp_path: Path, syscall_probe: Path
    ) -> None:
        """chmod, fchmod, fchmodat, fchmodat2 (which an older libseccomp does not know),
        the mode with garbage in its upper half, open(O_CREAT) with a setuid mode; and
        vsock (also behind upper bits), packet sockets, io_uring, keyrings, user
        namespaces, bpf, ptrace, userfaultfd, perf events, device nodes and fifos; setting
        another process's limits (reading them, and setting its own, stay)."""
        shutil.copy(syscall_probe, tmp_path / "probe")
        request = RunRequest(argv=["./probe", "victim"], workspace=str(tmp_path))
        result = ok(await backend.run(request, policy()))
        lines = probe_lines(result.stdout)
        assert setid_files(tmp_path) == [], lines
        refused = {name: outcome for name, outcome in lines.items() if outcome != "ok"}
        assert set(lines) - set(refused) == {
            "socket AF_INET",
            "prlimit pid 1 read",
            "prlimit own",
        }, lines
        # A newer call the engine's libseccomp may not know: refused all the same.
        assert refused["fchmodat2 4755"] in (
            "Operation not permitted",
            "Function not implemented",
        )

    @pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386 and x32 entries: x86_64")
    @pytest.mark.parametrize("entry", ["int80", "x32"])
    async def test_other_system_call_conventions_are_killed(
        self, backend: OciBackend, tmp_path: Path, syscall_probe: Path, entry: str
    ) -> None:
        shutil.copy(syscall_probe, tmp_path / "probe")
        (tmp_path / "victim").write_bytes(b"")
        script = f"./probe victim {entry}; echo status=$?"
        request = RunRequest(argv=["sh", "-c", script], workspace=str(tmp_path))
        result = ok(await backend.run(request, policy()))
        assert result.stdout == b"status=159\n", result  # SIGSYS
        assert setid_files(tmp_path) == []

    async def test_gvisor_applies_the_profile_too(
        self, runner: HelperProcessRunner, tmp_path: Path
    ) -> None:
        """runsc ignores a container's seccomp profile unless told (`--oci-seccomp`)."""
        backend = self.backend_class(runner=runner, image=TEST_IMAGE, runtime=Runtime.RUNSC)
        probed = backend.probe()
        if isinstance(probed, Failure):
            pytest.skip(f"gVisor unavailable: {probed.failure().reason}")
        script = "cat /bin/sh > b; chmod 4755 b || echo refused"
        request = RunRequest(argv=["sh", "-c", script], workspace=str(tmp_path))
        result = ok(await backend.run(request, policy()))
        assert b"refused" in result.stdout, result
        assert setid_files(tmp_path) == []

    # -- a caller that dies -------------------------------------------------------------

    @pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
    def test_a_killed_caller_leaves_nothing_running(
        self, backend: OciBackend, tmp_path: Path, stop: signal.Signals
    ) -> None:
        """The CLI killed while the command runs: the container stops at once (the command
        never writes `late`), and the next run of any process of ours removes it."""
        cli = self.start_cli(tmp_path, "touch started; sleep 3; touch late")
        try:
            self.wait_for(tmp_path / "started", cli)
            started = time.monotonic()
            assert self.running(cli.pid)
            cli.send_signal(stop)
            cli.wait(timeout=20)
            self.assert_stops(cli.pid, within_s=5)
            time.sleep(max(0.0, started + 5 - time.monotonic()))
            assert not (tmp_path / "late").exists()
            # The next process's first run sweeps the stopped container away.
            after = self.start_cli(tmp_path, "true")
            assert after.wait(timeout=60) == 0
            assert self.owned_by(cli.pid) == []
        finally:
            cli.kill()
            cli.wait()
            for name in self.owned_by(cli.pid):
                subprocess.run([self.cli, "rm", "--force", name], capture_output=True, check=False)

    @pytest.mark.parametrize(
        "attack",
        [
            # Kill every other process (the deadline's `sleep` too), stop and kill PID 1.
            "for d in /proc/[0-9]*; do p=${d#/proc/}; case $p in 1|$$|$PPID) ;; "
            "*) kill -9 $p;; esac; done; kill -STOP 1; kill -9 1",
            # Hold the lifeline open: a write end of PID 1's stdin, reopened through /proc.
            "exec 7>/proc/1/fd/0",
        ],
        ids=["signals", "holds-the-pipe"],
    )
    def test_a_command_cannot_cut_its_lifeline(
        self, backend: OciBackend, tmp_path: Path, attack: str
    ) -> None:
        """The command attacks its lifeline, then the caller is killed: the container still
        stops at once. (A watcher under tini was killable, and a command holding the pipe
        kept the watcher from its end-of-file: the command outlived the caller, writing on;
        the spawn helper, outside and alive after the caller, now removes the container.)"""
        attack += (
            "; trap '' TERM HUP INT PIPE; touch started; while :; do date +%s > beat; sleep 1; done"
        )
        cli = self.start_cli(tmp_path, attack, "--timeout", "60s")
        try:
            self.wait_for(tmp_path / "started", cli)
            time.sleep(2)
            assert self.running(cli.pid)  # the attack ended nothing but itself
            cli.send_signal(signal.SIGKILL)
            cli.wait(timeout=20)
            self.assert_stops(cli.pid, within_s=5)
            last = (tmp_path / "beat").read_text()
            time.sleep(3)
            assert (tmp_path / "beat").read_text() == last
        finally:
            cli.kill()
            cli.wait()
            for name in self.owned_by(cli.pid):
                subprocess.run([self.cli, "rm", "--force", name], capture_output=True, check=False)

    def test_a_stuck_caller_is_stopped_by_the_deadline_inside(
        self, backend: OciBackend, tmp_path: Path
    ) -> None:
        """The CLI frozen (SIGSTOP) past its deadline can neither enforce it nor die: the
        watcher in the container does, a few seconds after."""
        cli = self.start_cli(tmp_path, "touch started; sleep 30; touch late", "--timeout", "2s")
        try:
            self.wait_for(tmp_path / "started", cli)
            cli.send_signal(signal.SIGSTOP)
            self.assert_stops(cli.pid, within_s=20)
            assert not (tmp_path / "late").exists()
        finally:
            cli.kill()
            cli.send_signal(signal.SIGCONT)
            cli.wait()
            for name in self.owned_by(cli.pid):
                subprocess.run([self.cli, "rm", "--force", name], capture_output=True, check=False)


@pytest.mark.backend("docker")
class TestDockerHardening(Hardening):
    backend_class = DockerBackend
    cli = "docker"


@pytest.mark.backend("podman")
class TestPodmanHardening(Hardening):
    backend_class = PodmanBackend
    cli = "podman"


_POOLED_HOST = r"""
import anyio, sys
from mechasandbox.backends.oci import DockerBackend, PooledBackend, PoolSettings
from mechasandbox.domain import Limits, Policy, RunRequest
from mechasandbox.runner.runner import HelperProcessRunner

backend = PooledBackend(
    backend=DockerBackend(runner=HelperProcessRunner(), image=sys.argv[2]),
    settings=PoolSettings(size=2),
)
request = RunRequest(argv=("sh", "-c", "touch started; sleep 3; touch late"), workspace=sys.argv[1])
print(anyio.run(backend.run, request, Policy(limits=Limits(timeout_s=60))))
"""


@pytest.mark.backend("docker")
class TestDockerPoolHardening(OnEngine):
    """The warm pool's keepers are tied the same way: the busy one (its command came in by
    `exec`) and the idle one stop with the process that made them."""

    backend_class = DockerBackend
    cli = "docker"

    @pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
    def test_a_killed_pool_host_leaves_nothing_running(
        self, backend: OciBackend, tmp_path: Path, stop: signal.Signals
    ) -> None:
        host = subprocess.Popen(
            [sys.executable, "-c", _POOLED_HOST, str(tmp_path), TEST_IMAGE],
            env={**os.environ, "PYTHONPATH": SRC},
            stdout=subprocess.DEVNULL,
        )
        try:
            self.wait_for(tmp_path / "started", host)
            started = time.monotonic()
            deadline = started + 30
            while len(self.running(host.pid)) < 2:  # the busy keeper and the spare
                assert time.monotonic() < deadline, "the pool never had two containers"
                time.sleep(0.1)
            host.send_signal(stop)
            host.wait(timeout=20)
            self.assert_stops(host.pid, within_s=5)
            time.sleep(max(0.0, started + 5 - time.monotonic()))
            assert not (tmp_path / "late").exists()
        finally:
            host.kill()
            host.wait()
            for name in self.owned_by(host.pid):
                subprocess.run([self.cli, "rm", "--force", name], capture_output=True, check=False)
