"""Sessions on real sandboxes (docs/sessions.md): state persists from command to command,
limits, timeouts and the tree kill hold per command, a command's failure never ends the
session; and a command attacking the session (its agent, its channel, the next command, the
protected paths) gets nowhere. The contract suite inside a session:
test_sessions_contract.py."""

from __future__ import annotations

import os
import pathlib
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import anyio
import attrs
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.base import Backend
from mechasandbox.backends.session_base import SessionSettings
from mechasandbox.domain.errors import (
    BackendFailed,
    ConfigInvalid,
    MemoryLimit,
    SpawnFailed,
    Timeout,
)
from mechasandbox.domain.limits import MIB, Limits
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.runner.proctable import alive_with_marker
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.sandbox import Sandbox
from mechasandbox.sandbox_session import SyncSession
from tests.conftest import require_available, require_session_agent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")
BACKENDS = ["bubblewrap", "landlock"]


def make_backend(name: str, runner: HelperProcessRunner) -> Backend:
    require_session_agent()
    if name == "bubblewrap":
        from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

        backend: Backend = BubblewrapBackend(runner=runner)
    else:
        from mechasandbox.backends.linux.landlock import LandlockBackend

        backend = LandlockBackend(runner=runner)
    require_available(backend)
    return backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, runner: HelperProcessRunner) -> Backend:
    return make_backend(request.param, runner)


@pytest.fixture
def workspace(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "work").mkdir()  # landlock: the top level takes no new entries
    return tmp_path


@pytest.fixture
def session(backend: Backend, workspace: pathlib.Path) -> Iterator[SyncSession]:
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(workspace)) as opened:
        assert isinstance(opened.opened, Success), opened.opened
        yield opened


def sh(session: SyncSession, script: str, **options: object) -> bytes:
    return session.run(["sh", "-c", script], **options).unwrap().stdout  # type: ignore[arg-type]


# --- state and limits ---------------------------------------------------------------------
def test_private_tmp_and_home_persist(session: SyncSession) -> None:
    # (bubblewrap: a private /tmp; landlock: a private TMPDIR; both: a private HOME)
    sh(session, 'echo kept > "${TMPDIR:-/tmp}/state"; echo home > ~/.here; mkdir -p ~/pkg/lib')
    assert sh(session, 'cat "${TMPDIR:-/tmp}/state" ~/.here; ls ~/pkg') == b"kept\nhome\nlib\n"


def test_a_failing_command_never_ends_the_session(session: SyncSession) -> None:
    assert session.run(["sh", "-c", "exit 3"]).unwrap().exit_code == 3
    missing = session.run(["no-such-command-anywhere"])
    assert isinstance(missing, Failure) and isinstance(missing.failure(), SpawnFailed)
    slow = session.run(["sleep", "30"], limits=Limits(timeout_s=0.3))
    assert isinstance(slow, Failure) and isinstance(slow.failure(), Timeout)
    killed = session.run(["sh", "-c", "kill -9 $$"]).unwrap()
    assert killed.signal == signal.SIGKILL
    assert sh(session, "echo still") == b"still\n"


def test_limits_are_each_commands_own(session: SyncSession) -> None:
    few = Limits(max_open_files=64)
    assert sh(session, "ulimit -n", limits=few) == b"64\n"
    assert sh(session, "ulimit -n") == b"1024\n"


def test_a_commands_limits_may_only_narrow_the_sessions(
    backend: Backend, workspace: pathlib.Path
) -> None:
    limits = Limits(cpu_time_s=30, max_open_files=256, timeout_s=30)
    policy = Policy(enforcement=Enforcement.BEST_EFFORT, limits=limits)
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(workspace)) as s:
        narrow = attrs.evolve(limits, cpu_time_s=5, max_open_files=128)
        assert sh(s, "ulimit -t; ulimit -n", limits=narrow) == b"5\n128\n"
        for wider, field in (
            (attrs.evolve(limits, cpu_time_s=60), "limits.cpu_time"),
            (attrs.evolve(limits, max_open_files=None), "limits.max_open_files"),
            (attrs.evolve(limits, timeout_s=31), "limits.timeout"),
        ):
            refused = s.run(["true"], limits=wider)
            assert isinstance(refused, Failure), refused
            error = refused.failure()
            assert isinstance(error, ConfigInvalid) and error.field == field, error
        assert sh(s, "ulimit -t; ulimit -n") == b"30\n256\n"
        # The agent runs under no command's limits (bubblewrap: pid 2; landlock: the
        # command's parent): its CPU time, whatever the commands make it do, is bounded by
        # none of the policy's.
        agent = "/proc/2/limits" if backend.name == "bubblewrap" else "/proc/$PPID/limits"
        said = sh(s, f"grep -E 'Max (cpu time|open files)' {agent}").decode()
        assert "unlimited" in said.splitlines()[0] and "256" not in said, said


def test_a_process_left_running_dies_with_its_command(
    session: SyncSession, workspace: pathlib.Path
) -> None:
    token = secrets.token_hex(6)
    script = (
        f"(sleep 0.5; touch work/late-{token}) & "
        f"setsid sh -c 'sleep 0.5; touch work/setsid-{token}' & "
        f"nohup sh -c 'sleep 0.5; touch work/nohup-{token}' >/dev/null 2>&1 &"
    )
    assert session.run(["sh", "-c", script]).unwrap().exit_code == 0
    # the next command sees none of them (bubblewrap: nor anything but the sandbox's own)
    listing = sh(session, "ps -eo args")
    assert token.encode() not in listing, listing
    if session.opened.unwrap().name == "bubblewrap":
        assert b"sleep" not in listing, listing
    time.sleep(0.8)
    assert list((workspace / "work").iterdir()) == []
    assert alive_with_marker(token) == []


# A subreaper inside the command's tree: its orphan becomes its child, and the agent's (a
# subreaper too) once it exits, so the orphan is never out of the agent's reach.
SUBREAPER = """
import ctypes, os, sys, time
if os.fork():
    sys.exit(0)
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
if os.fork() == 0:
    if os.fork() == 0:
        time.sleep(0.6)
        open(sys.argv[1], "w").close()
    os._exit(0)
time.sleep(0.05)
"""


def test_an_orphan_of_a_subreaper_in_the_tree_dies_with_its_command(
    session: SyncSession, workspace: pathlib.Path
) -> None:
    token = secrets.token_hex(6)
    marker = f"work/subreaper-{token}"
    for _ in range(3):
        ran = session.run(["python3", "-c", SUBREAPER, marker, token]).unwrap()
        assert ran.exit_code == 0, ran
        assert alive_with_marker(token) == []
    time.sleep(0.8)
    assert not (workspace / marker).exists()


# A fork bomb that keeps forking whatever fails: its first process exits at once (the tree
# kill starts while the rest fork: "leave") or runs until its timeout ("stay").
# "hop": processes that each fork their successor and exit at once, so that a walk of the
# tree always finds the one before.
FORK_BOMB = """
import os, sys, time
if sys.argv[1] != "stay" and os.fork():
    sys.exit(0)
if sys.argv[1] == "hop":
    for _ in range(8):
        if os.fork() == 0:
            break
    while True:
        try:
            if os.fork():
                os._exit(0)
        except OSError:
            pass
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.001)
"""


@pytest.mark.parametrize("how", ["leave", "stay", "hop"])
def test_a_fork_bomb_cannot_outrun_the_tree_kill(
    backend: Backend, workspace: pathlib.Path, how: str
) -> None:
    """Under the session's process limit, the next command meets none of a fork bomb's
    processes, or the session has ended with a typed error (fail closed), never both."""
    token = secrets.token_hex(6)
    policy = Policy(
        enforcement=Enforcement.BEST_EFFORT, limits=Limits(max_processes=64, timeout_s=30)
    )
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(workspace)) as s:
        for _round in range(3):
            bomb = s.run(["python3", "-c", FORK_BOMB, how, token], limits=Limits(timeout_s=1))
            after = s.run(["sh", "-c", f"sleep 0.2; ps -eo args | grep -c '^python3.*{token}'"])
            if isinstance(after, Failure):  # the session ended rather than carry on
                assert isinstance(bomb, Failure) and "could not all be killed" in str(bomb)
                assert isinstance(after.failure(), BackendFailed)
                assert "session over" in after.failure().message
                break
            assert after.unwrap().stdout == b"0\n", after
            assert alive_with_marker(token) == []
    assert alive_with_marker(token) == []


def test_the_timeout_kills_the_tree_and_the_next_command_runs(
    session: SyncSession, workspace: pathlib.Path
) -> None:
    token = secrets.token_hex(6)
    script = f"setsid sh -c 'sleep 1; touch work/{token}' & sleep 30"
    slow = session.run(["sh", "-c", script], limits=Limits(timeout_s=0.3))
    assert isinstance(slow, Failure) and isinstance(slow.failure(), Timeout)
    time.sleep(1.3)
    assert not (workspace / "work" / token).exists()
    assert sh(session, "echo after") == b"after\n"


def test_output_streams_to_callbacks(session: SyncSession) -> None:
    seen: list[bytes] = []
    ran = session.run(["sh", "-c", "echo one; echo two >&2"], on_stdout=seen.append)
    assert ran.unwrap().stderr == b"two\n" and seen == [b"one\n"]


def test_an_oom_kill_is_that_commands_and_the_session_goes_on(
    backend: Backend, workspace: pathlib.Path
) -> None:
    policy = Policy(
        enforcement=Enforcement.BEST_EFFORT, limits=Limits(memory_bytes=64 * MIB, timeout_s=30)
    )
    eat = "import sys; b = bytearray(400 * 1024 * 1024); sys.stdout.write('survived')"
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(workspace)) as s:
        eaten = s.run(["python3", "-c", eat])
        assert isinstance(eaten, Failure) and isinstance(eaten.failure(), MemoryLimit), eaten
        after = s.run(["echo", "fine"]).unwrap()
        assert after.stdout == b"fine\n" and after.violations == ()


# --- attacks from inside --------------------------------------------------------------------
# The agent's pid, found as a command would: the process whose command line starts with
# the agent's path (bwrap's own, pid 1, names it further on).
AGENT_PIDS = (
    "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null "
    "| grep -q '^[^ ]*\\(/run/mechasandbox/agent\\|mechasandbox-agent\\) ' "
    "&& echo ${p#/proc/}; done"
)


def test_a_command_cannot_signal_trace_or_read_the_agent(session: SyncSession) -> None:
    pids = sh(session, AGENT_PIDS).split()
    assert pids, "the agent is visible as a process (its pid namespace is the session's)"
    agent = pids[0].decode()
    for attack in (
        f"kill -KILL {agent}",
        f"kill -STOP {agent}",
        f"kill -TERM {agent}",
        f"cat /proc/{agent}/environ",
        f"head -c1 /proc/{agent}/mem",
        f"readlink /proc/{agent}/fd/0",
        "readlink /proc/1/fd/0",  # bwrap's pid 1 holds the channel too: no way in there
        "head -c1 /proc/1/mem",
    ):
        ran = session.run(["sh", "-c", attack]).unwrap()
        assert ran.exit_code != 0, (attack, ran)
    tracer = textwrap.dedent(
        f"""
        import ctypes, sys
        libc = ctypes.CDLL(None, use_errno=True)
        for request in (16, 0x4206):  # PTRACE_ATTACH, PTRACE_SEIZE
            if libc.ptrace(request, {agent}, 0, 0) == 0:
                sys.exit("traced")
        """
    )
    assert session.run(["python3", "-c", tracer]).unwrap().exit_code == 0
    assert sh(session, "echo alive") == b"alive\n"


def test_a_command_cannot_reach_the_channel(session: SyncSession) -> None:
    # its descriptors are its stdio only (the channel is closed in every command)
    assert sh(session, "ls /proc/self/fd").split() in ([b"0", b"1", b"2"], [b"0", b"1", b"2", b"3"])
    # no socket of the session's in its file system; the agent's binary is read-only
    if session.opened.unwrap().name == "bubblewrap":
        assert sh(session, "ls -A /run/mechasandbox") == b"agent\n"
    agent = sh(session, AGENT_PIDS).split()[0].decode()
    overwrite = session.run(["sh", "-c", f"echo x > /proc/{agent}/exe"]).unwrap()
    assert overwrite.exit_code != 0
    # output that looks like the protocol is only output
    fake = b"\x00\x00\x00\x05X\x00\x00\x00\x00"
    assert session.run(["cat"], stdin=fake).unwrap().stdout == fake
    assert sh(session, "echo still") == b"still\n"


def test_protected_paths_stay_protected_for_the_session(
    session: SyncSession, workspace: pathlib.Path
) -> None:
    for attack in (
        "mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit",
        "echo evil > .envrc",
        "echo 'export EVIL=1' > .bashrc",
    ):
        session.run(["sh", "-c", attack]).unwrap()
    assert not (workspace / ".git" / "hooks" / "pre-commit").exists()
    assert not (workspace / ".envrc").is_file()
    assert not (workspace / ".bashrc").is_file()


def test_the_idle_timeout_ends_the_session(backend: Backend, workspace: pathlib.Path) -> None:
    settings = SessionSettings(idle_timeout_s=0.3)
    sandbox = Sandbox(backend=backend, policy=Policy(enforcement=Enforcement.BEST_EFFORT))
    with sandbox.session_sync(workspace=str(workspace), settings=settings) as s:
        assert s.run(["true"]).unwrap().exit_code == 0
        time.sleep(0.8)
        late = s.run(["true"])
        assert isinstance(late, Failure) and isinstance(late.failure(), BackendFailed)
        assert "idle timeout" in late.failure().message


def test_the_maximum_lifetime_ends_a_command_under_way(
    backend: Backend, workspace: pathlib.Path
) -> None:
    settings = SessionSettings(max_lifetime_s=1.0)
    sandbox = Sandbox(backend=backend, policy=Policy(enforcement=Enforcement.BEST_EFFORT))
    with sandbox.session_sync(workspace=str(workspace), settings=settings) as s:
        slow = s.run(["sleep", "30"])
        assert isinstance(slow, Failure) and "lifetime" in slow.failure().message


CALLER = """
import sys, anyio
from mechasandbox.sandbox import Sandbox
from mechasandbox.domain.policy import Policy, Enforcement
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.test_sessions import make_backend

async def main() -> None:
    backend = make_backend(sys.argv[1], HelperProcessRunner())
    sandbox = Sandbox(backend=backend, policy=Policy(enforcement=Enforcement.BEST_EFFORT))
    async with sandbox.session(workspace=sys.argv[2]) as session:
        print(session.opened, flush=True)
        await session.run_async(["sh", "-c", "echo started; sleep 1000; : " + sys.argv[3]],
                                on_stdout=lambda chunk: print("ready", flush=True))

anyio.run(main)
"""


def test_the_callers_death_ends_the_session(backend: Backend, workspace: pathlib.Path) -> None:
    token = secrets.token_hex(8)
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, backend.name, str(workspace), token],
        stdout=subprocess.PIPE,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert caller.stdout is not None
    assert b"Success" in caller.stdout.readline()
    assert caller.stdout.readline() == b"ready\n"
    assert alive_with_marker(token) != []
    caller.kill()
    caller.wait()
    caller.stdout.close()
    deadline = time.monotonic() + 5
    while (alive_with_marker(token) or alive_with_marker(str(workspace))) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert alive_with_marker(token) == []
    assert alive_with_marker(str(workspace)) == []  # bwrap's argv names it; so does the agent's cwd


def test_a_session_needs_one_workspace(
    session: SyncSession, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert anyio is not None
    assert os.path.isdir(session.opened.unwrap().workspace)
