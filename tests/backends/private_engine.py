"""A dockerd of the test's own, to kill, stop and restart without touching the shared one.

Its own data root, exec root (and so its own containerd), pid file and API socket, all in
a short temporary directory (unix socket paths are limited to 108 bytes); no bridge and no
iptables, as `scripts/ci-engines.sh` starts the shared one. The test image is copied in
from the shared engine (`docker save | docker load`, offline). At teardown it is continued
(SIGCONT), stopped, and everything it started that is still there (its containerd, the
shims of its containers) is killed by pid, found by the directory in their command lines.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from mechasandbox.backends.base import HostContext
from tests.backends.oci_contract import TEST_IMAGE
from tests.conftest import required_backends, skip_if_left_to_another_run

_START_S = 60.0


@attrs.define
class PrivateEngine:
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def environment(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.socket}

    def host(self) -> HostContext:
        """This process's host facts, with the engine CLI pointed at this engine."""
        current = HostContext.current()
        env = {**dict(current.env), "DOCKER_HOST": self.socket}
        return attrs.evolve(current, env=tuple(sorted(env.items())))

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start it (again): a restart right after a SIGKILL may find the old containerd
        still going away, and dockerd then gives up on its own: tried three times."""
        for attempt in range(3):
            try:
                self._start()
            except RuntimeError:
                if attempt == 2:
                    raise
                self.stop()
            else:
                return

    def _start(self) -> None:
        config = self.root / "daemon.json"
        config.write_text("{}\n")
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [
                "dockerd",
                "--config-file", str(config),
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"),
                "--host", self.socket,
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                # A container still running when it stops is killed after this long.
                "--shutdown-timeout", "2",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        end = time.monotonic() + _START_S
        while self.docker("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the private dockerd did not come up: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
        return ""

    def load_test_image(self) -> None:
        saved = subprocess.run(
            ["docker", "save", TEST_IMAGE], capture_output=True, check=True, timeout=120
        )
        subprocess.run(
            ["docker", "load"],
            input=saved.stdout,
            env=self.environment(),
            capture_output=True,
            check=True,
            timeout=120,
        )

    def signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def wait_gone(self, timeout_s: float = 30.0) -> None:
        assert self.process is not None
        self.process.wait(timeout=timeout_s)

    def containers(self) -> list[str]:
        """Every container this engine has (names), running or not."""
        listed = self.docker("ps", "--all", "--format", "{{.Names}}")
        return listed.stdout.split()

    def started_processes(self) -> list[int]:
        """Processes running from this engine's directory (its containerd, its shims)."""
        marker = str(self.root).encode()
        found: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
        return found

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
            names = self.docker("ps", "--all", "--quiet", check=False).stdout.split()
            if names:
                self.docker("rm", "--force", *names, check=False)
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        # What outlived it (a shim after SIGKILL): the containers' processes, then the rest.
        started = self.started_processes()
        for pid in [*_children_of(started), *started]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        self.process = None


def _children_of(parents: list[int]) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            if int(stat[1]) in parents:
                found.append(int(entry))
    return found


def _unmount_below(root: Path) -> None:
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounts = [line.split()[4] for line in handle]
    for mount_point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)


def private_engine_or_skip() -> PrivateEngine:
    """A started private engine with the test image, or a skip saying why not (a failure
    where CI requires docker)."""
    skip_if_left_to_another_run("docker")
    reason = None
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        reason = "dockerd is not installed"
    elif os.geteuid() != 0:
        reason = "a private dockerd needs root"
    if reason is not None:
        if "docker" in required_backends() and os.geteuid() == 0:
            pytest.fail(f"required backend 'docker': {reason}")
        pytest.skip(reason)
    engine = PrivateEngine(root=Path(tempfile.mkdtemp(prefix="msd-", dir="/tmp")))
    try:
        engine.start()
        engine.load_test_image()
    except (RuntimeError, subprocess.SubprocessError) as error:
        tear_down(engine)
        if "docker" in required_backends():
            pytest.fail(f"cannot start a private dockerd: {error}")
        pytest.skip(f"cannot start a private dockerd: {error}")
    return engine


def tear_down(engine: PrivateEngine) -> None:
    engine.stop()
    _unmount_below(engine.root)
    shutil.rmtree(engine.root, ignore_errors=True)


@contextlib.contextmanager
def private_engine() -> Iterator[PrivateEngine]:
    """A started private engine (see `private_engine_or_skip`), torn down after."""
    engine = private_engine_or_skip()
    try:
        yield engine
    finally:
        tear_down(engine)
