"""Docker and podman sessions on real engines (backends/oci/session.py): one container whose
process is the session agent; state persists, limits, timeouts and the tree kill hold per
command, the container's cgroup limits for the session; a command attacking its session
(the agent, the channel, the next command, the engine's hardening) gets nowhere; the
caller's death leaves no container. The contract suite inside a session:
test_oci_sessions_contract.py."""

from __future__ import annotations

import pathlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import attrs
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.base import Backend
from mechasandbox.backends.oci import DockerBackend, PodmanBackend, Runtime
from mechasandbox.backends.oci.cli import owner_id
from mechasandbox.backends.oci.compiler import LABEL_OWNER
from mechasandbox.backends.session_base import SessionSettings, open_session
from mechasandbox.domain.errors import (
    BackendUnavailable,
    MemoryLimit,
    SpawnFailed,
    Timeout,
)
from mechasandbox.domain.limits import MIB, Limits
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.sandbox import Sandbox
from mechasandbox.sandbox_session import SyncSession
from tests.backends.oci_contract import TEST_IMAGE
from tests.conftest import require_available, require_session_agent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux engines")
ENGINES = ["docker", "podman"]  # not gVisor: see test_under_gvisor_a_session_is_refused
POLICY = Policy(enforcement=Enforcement.BEST_EFFORT, limits=Limits(timeout_s=30))


def make_backend(name: str, runner: HelperProcessRunner) -> Backend:
    require_session_agent()
    if name == "podman":
        backend: Backend = PodmanBackend(runner=runner, image=TEST_IMAGE)
    else:
        backend = DockerBackend(runner=runner, image=TEST_IMAGE)
    require_available(backend)
    return backend


def leftovers(cli: str) -> list[str]:
    """Containers of this test process still known to the engine."""
    listed = subprocess.run(
        [cli, "ps", "--all", "--quiet", "--filter", f"label={LABEL_OWNER}={owner_id()}"],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    return listed.stdout.split()


@pytest.fixture(params=ENGINES)
def backend(request: pytest.FixtureRequest, runner: HelperProcessRunner) -> Iterator[Backend]:
    backend = make_backend(request.param, runner)
    yield backend
    assert leftovers(backend.name) == []


@pytest.fixture
def session(backend: Backend, tmp_path: pathlib.Path) -> Iterator[SyncSession]:
    with Sandbox(backend=backend, policy=POLICY).session_sync(workspace=str(tmp_path)) as opened:
        assert isinstance(opened.opened, Success), opened.opened
        yield opened


def sh(session: SyncSession, script: str, **options: object) -> bytes:
    return session.run(["sh", "-c", script], **options).unwrap().stdout  # type: ignore[arg-type]


# --- state and limits ---------------------------------------------------------------------
def test_private_tmp_and_home_persist(session: SyncSession, tmp_path: pathlib.Path) -> None:
    sh(session, "echo kept > /tmp/state; echo home > $HOME/.note; echo ws > made")
    assert sh(session, "cat /tmp/state $HOME/.note") == b"kept\nhome\n"
    assert (tmp_path / "made").read_text() == "ws\n"
    # one container: the agent is its PID 1, each command a child of it
    assert sh(session, "cat /proc/1/cmdline | tr '\\0' ' '").startswith(b"/run/mechasandbox/agent")


def test_a_failing_command_never_ends_the_session(session: SyncSession) -> None:
    assert session.run(["sh", "-c", "exit 7"]).unwrap().exit_code == 7
    missing = session.run(["no-such-command"])
    assert isinstance(missing, Failure) and isinstance(missing.failure(), SpawnFailed)
    killed = session.run(["sh", "-c", "kill -KILL $$"]).unwrap()
    assert killed.signal == 9
    assert sh(session, "echo alive") == b"alive\n"


def test_the_timeout_kills_the_tree_and_the_next_command_runs(session: SyncSession) -> None:
    token = secrets.token_hex(6)
    slow = session.run(
        ["sh", "-c", f"(sleep 1000; : {token}) & sleep 1000"], limits=Limits(timeout_s=1)
    )
    assert isinstance(slow, Failure) and isinstance(slow.failure(), Timeout), slow
    assert token.encode() not in sh(session, "ps -o args")
    assert sh(session, "echo next") == b"next\n"


def test_a_process_left_running_dies_with_its_command(session: SyncSession) -> None:
    token = secrets.token_hex(6)
    sh(session, f"(setsid sleep 1000 {token} &) ; nohup sleep 1001 {token} >/dev/null 2>&1 &")
    assert token.encode() not in sh(session, "ps -o args")


def test_limits_are_each_commands_own(session: SyncSession) -> None:
    # (a command's limits may only narrow the session's: each is the session's, narrowed)
    def narrowed(**limits: int) -> Limits:
        return attrs.evolve(POLICY.limits, **limits)

    capped = session.run(
        ["sh", "-c", "head -c 100000 /dev/zero"], limits=narrowed(max_output_bytes=10)
    )
    assert capped.unwrap().stdout_truncated
    assert sh(session, "ulimit -n", limits=narrowed(max_open_files=64)) == b"64\n"
    assert sh(session, "ulimit -n", limits=narrowed(max_open_files=128)) == b"128\n"


def test_an_oom_kill_is_that_commands_and_the_session_goes_on(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    policy = Policy(
        enforcement=Enforcement.BEST_EFFORT, limits=Limits(memory_bytes=48 * MIB, timeout_s=30)
    )
    eat = "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived"
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(tmp_path)) as s:
        eaten = s.run(["sh", "-c", eat])
        assert isinstance(eaten, Failure) and isinstance(eaten.failure(), MemoryLimit), eaten
        assert s.run(["echo", "fine"]).unwrap().stdout == b"fine\n"


def test_the_process_limit_is_the_containers(backend: Backend, tmp_path: pathlib.Path) -> None:
    policy = Policy(
        enforcement=Enforcement.BEST_EFFORT, limits=Limits(max_processes=20, timeout_s=30)
    )
    spawn = "for i in $(seq 40); do sleep 5 & done 2>/dev/null; sleep 1; ps -o pid | wc -l"
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(tmp_path)) as s:
        counted = s.run(["sh", "-c", spawn])
        # the fork bomb is bounded (its result or a process-limit violation), then all is gone
        if isinstance(counted, Success) and counted.unwrap().exit_code == 0:
            assert int(counted.unwrap().stdout) <= 22
        assert s.run(["echo", "fine"]).unwrap().stdout == b"fine\n"


# --- attacks from inside --------------------------------------------------------------------
def test_a_command_cannot_end_trace_or_read_the_agent(
    backend: Backend, session: SyncSession
) -> None:
    signals = ["kill -TERM 1", "kill -INT 1", "kill -HUP 1", "kill -STOP 1", "kill -KILL 1"]
    for attack in signals:
        session.run(["sh", "-c", attack]).unwrap()
        assert sh(session, "echo alive") == b"alive\n", attack
    attacks = [
        "echo x > /run/mechasandbox/agent",
        "cp /bin/busybox /run/mechasandbox/agent",
        "cat /proc/1/environ",
        "head -c1 /proc/1/mem",
        "readlink /proc/1/fd/0",
        "echo x > /proc/1/fd/0",
        "echo x > /proc/1/fd/1",
    ]
    for attack in attacks:
        ran = session.run(["sh", "-c", attack]).unwrap()
        assert ran.exit_code != 0, (attack, ran)
    # its descriptors are its stdio only: the channel is closed in every command
    assert sh(session, "ls /proc/self/fd").split() in ([b"0", b"1", b"2"], [b"0", b"1", b"2", b"3"])
    # output that looks like the protocol is only output
    fake = b"\x00\x00\x00\x05X\x00\x00\x00\x00"
    assert session.run(["cat"], stdin=fake).unwrap().stdout == fake
    assert sh(session, "echo still") == b"still\n"


def test_under_gvisor_a_session_is_refused_with_the_reason(
    runner: HelperProcessRunner, tmp_path: pathlib.Path
) -> None:
    """runsc's /proc lets a command write its PID 1's descriptors (the test below): in a
    session it could forge the agent's EXITED and run on past the disarm that follows
    (`session.GVISOR_NO_SESSIONS`). Refused, with the reason, before anything starts."""
    require_session_agent()
    backend = DockerBackend(runner=runner, image=TEST_IMAGE, runtime=Runtime.RUNSC)
    if isinstance(backend.probe(), Failure):
        pytest.skip(f"gVisor unavailable: {backend.probe()}")
    with Sandbox(backend=backend, policy=POLICY).session_sync(workspace=str(tmp_path)) as s:
        assert isinstance(s.opened, Failure), s.opened
        error = s.opened.failure()
        assert isinstance(error, BackendUnavailable), error
        assert "gVisor" in error.reason and "/proc/1/fd" in error.reason
    assert leftovers("docker") == []


def test_under_gvisor_a_command_can_write_its_pid_1s_descriptors(
    runner: HelperProcessRunner, tmp_path: pathlib.Path
) -> None:
    """Why sessions are refused under gVisor, kept true: a command opens its PID 1's stdout
    through /proc (under runc the kernel refuses: the agent is not dumpable, tested with
    the sessions above). When runsc stops allowing it, this fails: sessions may come back."""
    backend = DockerBackend(runner=runner, image=TEST_IMAGE, runtime=Runtime.RUNSC)
    if isinstance(backend.probe(), Failure):
        pytest.skip(f"gVisor unavailable: {backend.probe()}")
    script = "printf 'from-the-command ' > /proc/1/fd/1 && echo wrote"
    request = RunRequest(argv=["sh", "-c", script], workspace=str(tmp_path))
    result = anyio.run(backend.run, request, POLICY).unwrap()
    assert b"wrote" in result.stdout, result


def test_the_containers_hardening_holds_in_every_command(
    session: SyncSession, tmp_path: pathlib.Path
) -> None:
    sh(session, "echo x > f")
    for attack in (
        "chmod u+s f",  # the seccomp profile: no setuid files
        "unshare -r true",
        "mount -t tmpfs none /tmp",
        "echo x > /etc/evil",  # read-only root
        "ip link set lo down",
    ):
        ran = session.run(["sh", "-c", attack]).unwrap()
        assert ran.exit_code != 0, (attack, ran)
    assert not (tmp_path / "f").stat().st_mode & 0o4000
    # no network but loopback
    assert sh(session, "ls /sys/class/net") in (b"lo\n", b"")
    assert sh(session, "grep -c CapEff /proc/self/status; grep CapEff /proc/self/status") == (
        b"1\nCapEff:\t0000000000000000\n"
    )


def test_protected_paths_stay_protected_for_the_session(
    session: SyncSession, tmp_path: pathlib.Path
) -> None:
    for attack in ("mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit", "echo x > .envrc"):
        session.run(["sh", "-c", attack]).unwrap()
    assert not (tmp_path / ".git" / "hooks" / "pre-commit").exists()
    assert not (tmp_path / ".envrc").is_file()


# --- lifecycle ----------------------------------------------------------------------------
CALLER = """
import sys, anyio
from mechasandbox.sandbox import Sandbox
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.test_oci_sessions import POLICY, make_backend

async def main() -> None:
    backend = make_backend(sys.argv[1], HelperProcessRunner())
    async with Sandbox(backend=backend, policy=POLICY).session(workspace=sys.argv[2]) as s:
        print(s.opened, flush=True)
        await s.run_async(["sh", "-c", "echo started; sleep 1000"],
                          on_stdout=lambda chunk: print("ready", flush=True))

anyio.run(main)
"""


@pytest.mark.parametrize("after_s", [0.05, 0.2, 0.5])
def test_a_session_cancelled_while_it_opens_leaves_no_container(
    backend: Backend, tmp_path: pathlib.Path, after_s: float
) -> None:
    """The caller gives up while the container starts (its timeout, a cancelled task):
    nothing of it is left, whichever step it was at (the fixture checks the engine)."""

    async def opening() -> None:
        with anyio.move_on_after(after_s):
            opened = await open_session(backend, str(tmp_path), POLICY, SessionSettings())
            if isinstance(opened, Success):  # quicker than the delay: closed as usual
                await opened.unwrap().aclose()

    anyio.run(opening)
    assert leftovers(backend.name) == []


def test_the_callers_death_leaves_no_container(backend: Backend, tmp_path: pathlib.Path) -> None:
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, backend.name, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert caller.stdout is not None
    assert b"Success" in caller.stdout.readline()
    assert caller.stdout.readline() == b"ready\n"
    label = f"label={LABEL_OWNER}={owner_id().rsplit(':', 1)[0]}:{caller.pid}"
    listing = [backend.name, "ps", "--all", "--quiet", "--filter", label]

    def listed() -> list[str]:
        return subprocess.run(listing, check=True, capture_output=True, text=True).stdout.split()

    assert listed() != []
    caller.kill()
    caller.wait()
    caller.stdout.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if listed() == []:
            break
        time.sleep(0.2)
    assert listed() == []


# --- the warm pool of sessions ------------------------------------------------------------
def test_the_pool_hands_out_ready_sessions_never_one_used_before(
    runner: HelperProcessRunner, tmp_path: pathlib.Path
) -> None:
    from mechasandbox.backends.oci import PooledBackend, PoolSettings

    docker = make_backend("docker", runner)
    assert isinstance(docker, DockerBackend)
    pooled = PooledBackend(backend=docker, settings=PoolSettings(size=1))
    settings = SessionSettings()
    try:
        pooled.sessions.warm(str(tmp_path), POLICY, settings)
        deadline = time.monotonic() + 30
        while pooled.sessions.ready() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pooled.sessions.ready() == 1
        sandbox = Sandbox(backend=pooled, policy=POLICY)
        seen = []
        for _ in range(2):
            with sandbox.session_sync(workspace=str(tmp_path), settings=settings) as s:
                seen.append(sh(s, "hostname; cat /proc/1/cpuset 2>/dev/null; ls /tmp"))
                sh(s, "touch /tmp/left-behind")
        assert b"left-behind" not in seen[1]  # a fresh container each time
        deadline = time.monotonic() + 30
        while pooled.sessions.ready() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pooled.close()
    assert leftovers("docker") == []


def test_a_pin_the_host_replaced_between_commands_is_no_way_in(
    runner: HelperProcessRunner, tmp_path: pathlib.Path
) -> None:
    """`git config` on the host between two commands replaces the pinned `.git/config` by
    a rename: its read-only cover is gone, and a quick command could append to it before
    the watcher's first look (the host's git then runs what it wrote). The session stops
    such a command before it starts, as a run is stopped."""
    backend = make_backend("docker", runner)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    marker = tmp_path / "planted-ran"
    plant = f"printf '[core]\\n\\tfsmonitor = \"touch {marker}; false\"\\n' >> .git/config"
    with Sandbox(backend=backend, policy=POLICY).session_sync(workspace=str(tmp_path)) as s:
        assert s.run(["true"]).unwrap().exit_code == 0
        subprocess.run(["git", "-C", str(tmp_path), "config", "user.name", "x"], check=True)
        ran = s.run(["sh", "-c", plant])
        assert isinstance(ran, Failure), ran
        assert "replaced on the host" in str(ran.failure())
    subprocess.run(["git", "status"], cwd=tmp_path, capture_output=True, check=False)
    assert not marker.exists()
    assert leftovers(backend.name) == []
