"""A command (or a sequence of them) attacking its session, on real sandboxes: what a
one-shot run of the same policy stops, a session must stop too, across commands. The
attacks test_sessions.py already makes (signalling, tracing and reading the agent, its
channel, `&`/`setsid`/`nohup` leftovers, the top repository's hooks, a memory bomb) are not
repeated here."""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import attrs
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.base import Backend
from mechasandbox.domain.errors import Timeout
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.runner.proctable import alive_with_marker
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.sandbox import Sandbox
from mechasandbox.sandbox_session import SyncSession
from tests.backends.test_sessions import AGENT_PIDS, BACKENDS, make_backend, sh

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")
HOPPER_SOURCE = pathlib.Path(__file__).with_name("programs") / "fork_hopper.c"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, runner: HelperProcessRunner) -> Backend:
    return make_backend(request.param, runner)


@pytest.fixture
def workspace(tmp_path: pathlib.Path) -> pathlib.Path:
    """A git repository (so that `.git/config` is protected and made repositories are
    disarmed) with a `work` directory (landlock: the top level takes no new entries)."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "work").mkdir()
    return tmp_path


@pytest.fixture
def session(backend: Backend, workspace: pathlib.Path) -> Iterator[SyncSession]:
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(workspace)) as opened:
        assert isinstance(opened.opened, Success), opened.opened
        yield opened


def agent_pid(session: SyncSession) -> str:
    return sh(session, AGENT_PIDS).split()[0].decode()


def processes(session: SyncSession, marker: str) -> bytes:
    """The command lines holding `marker` that the next command sees (but its own)."""
    return sh(session, f"ps -eo args | grep -F {marker} | grep -v grep || true")


# --- the next command's confinement ----------------------------------------------------------
ISOLATION = ("NoNewPrivs", "Seccomp", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def _isolation(status: bytes) -> dict[str, str]:
    fields = dict(line.split(":", 1) for line in status.decode().splitlines() if ":" in line)
    return {name: fields[name].strip() for name in (*ISOLATION, "Seccomp_filters")}


def test_every_command_is_isolated_as_a_one_shot_run_is(
    session: SyncSession, backend: Backend, workspace: pathlib.Path
) -> None:
    """No capability (nor a bounding set to regain one), no_new_privs and the seccomp filter
    hold for every command as for a one-shot run of the policy: landlock's commands inherit
    them from the agent rather than set them up again."""
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    one_shot = Sandbox(backend=backend, policy=policy).run_sync(
        ["cat", "/proc/self/status"], workspace=str(workspace)
    )
    expected = _isolation(one_shot.unwrap().stdout)
    for _ in range(2):
        got = _isolation(sh(session, "cat /proc/self/status"))
        assert {n: got[n] for n in ISOLATION} == {n: expected[n] for n in ISOLATION}
        assert int(got["Seccomp_filters"]) >= int(expected["Seccomp_filters"]) >= 1
        assert got["NoNewPrivs"] == "1" and got["Seccomp"] == "2"
    # the filter refuses in a session what it refuses in a one-shot run
    refused = "unshare --user --map-root-user true 2>/dev/null && echo made || echo refused"
    assert sh(session, refused) == b"refused\n"


def test_a_repository_an_earlier_command_made_is_disarmed_when_a_later_one_arms_it(
    session: SyncSession, workspace: pathlib.Path
) -> None:
    """A one-shot run protects the repositories it finds before it starts, so a second run
    cannot arm one the first made. In a session nothing protects it (its protections were
    set up before it existed), and arming it touches nothing but `.git/hooks/` or the
    config file: the disarm after each command looks at every repository the session made."""
    made = sh(session, "git init -q work/hooks && git init -q work/config && echo made")
    assert made == b"made\n"
    time.sleep(0.1)  # past the coarse file system timestamps of the first command
    arm = (
        "printf '#!/bin/sh\\necho ran\\n' > work/hooks/.git/hooks/post-checkout && "
        "chmod +x work/hooks/.git/hooks/post-checkout && "
        "printf '[core]\\n\\tfsmonitor = echo ran\\n' >> work/config/.git/config && echo armed"
    )
    armed = session.run(["sh", "-c", arm]).unwrap()
    assert armed.stdout == b"armed\n"
    assert not (workspace / "work/hooks/.git").exists()
    assert not (workspace / "work/config/.git").exists()
    said = " ".join(armed.warnings)
    assert "work/hooks/.git" in said and "work/config/.git" in said, armed.warnings
    # and renaming it back is a change of its own, disarmed again
    back = "mv work/hooks/.git-disarmed-1 work/hooks/.git && echo back"
    assert sh(session, back) == b"back\n"
    assert not (workspace / "work/hooks/.git").exists()


def test_a_command_cannot_change_the_agents_limits(session: SyncSession) -> None:
    """prlimit needs the same user ids only (no ptrace check, no Landlock scope, the agent's
    not being dumpable does not matter): a command lowering the agent's RLIMIT_NOFILE made
    every later command fail (its stdio could not be received) and, lowered just before its
    own end, kept the agent from listing the processes it left: they outlived it. bwrap's
    pid 1, and (landlock: no pid namespace) every host process of the user, the caller
    included, were as open to it."""
    agent = agent_pid(session)
    before = sh(session, f"cat /proc/{agent}/limits")
    token = secrets.token_hex(6)
    # bwrap's pid 1; never the host's init (landlock has no pid namespace): should this
    # regress, only the processes this test started may suffer
    init = "1" if session.opened.unwrap().name == "bubblewrap" else agent
    host = subprocess.Popen(["sleep", "60"])
    try:
        host_before = pathlib.Path(f"/proc/{host.pid}/limits").read_text()
        attack = textwrap.dedent(
            f"""
            prlimit --pid {agent} --nofile=3:1024 && echo agent
            prlimit --pid {init} --nofile=3:1024 && echo init
            prlimit --pid {host.pid} --nofile=3:3 && echo host
            setsid sh -c 'sleep 2.5; prlimit --pid {agent} --nofile=1024:; sleep 30; : {token}' \\
                </dev/null >/dev/null 2>&1 &
            sleep 0.3
            """
        )
        ran = session.run(["sh", "-c", attack]).unwrap()
        assert ran.stdout == b"", ran  # refused, all of them
        assert pathlib.Path(f"/proc/{host.pid}/limits").read_text() == host_before
    finally:
        host.kill()
        host.wait()
    after = session.run(["sh", "-c", f"cat /proc/{agent}/limits"])
    assert isinstance(after, Success), after
    assert after.unwrap().stdout == before
    assert processes(session, token) == b""
    assert alive_with_marker(token) == []


PRLIMIT_CALLS = textwrap.dedent(
    """
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prlimit.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long)
    agent, nofile = int(sys.argv[1]), 7
    def call(pid, new, old):
        result = libc.prlimit(pid, nofile, new, old)
        return 0 if result == 0 else ctypes.get_errno()
    limits = (ctypes.c_uint64 * 2)()
    print("read", call(agent, None, ctypes.addressof(limits)))
    libc.prlimit(0, nofile, None, ctypes.addressof(limits))
    print("own", call(0, ctypes.addressof(limits), None))
    print("set", call(agent, ctypes.addressof(limits), None))
    # a pointer whose low half is 0 is not NULL: the filter reads both halves
    page = libc.mmap(ctypes.c_void_p(1 << 32), 4096, 3, 0x22 | 0x10, -1, 0)  # MAP_FIXED
    assert page == 1 << 32, page
    ctypes.memmove(page, limits, 16)
    print("high", call(agent, page, None))
    """
)


def test_prlimit_on_another_process_is_refused_and_reading_stays(session: SyncSession) -> None:
    agent = agent_pid(session)
    ran = session.run(["python3", "-c", PRLIMIT_CALLS, agent]).unwrap()
    assert ran.stdout.decode().split() == ["read", "0", "own", "0", "set", "1", "high", "1"], ran


# --- what a command leaves ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fork_hopper(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """programs/fork_hopper.c, built static (no C library needed inside)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the fork hopper")
    binary = tmp_path_factory.mktemp("hopper") / "fork_hopper"
    built = subprocess.run(
        [compiler, "-static", "-O2", "-o", str(binary), str(HOPPER_SOURCE)],
        capture_output=True,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build the fork hopper static: {built.stderr.decode()[-300:]}")
    return binary


def test_processes_that_keep_forking_away_die_with_their_command(
    session: SyncSession, workspace: pathlib.Path, fork_hopper: pathlib.Path
) -> None:
    """A process that forks and exits in a loop, so that its pid is never the same when a
    tree walk comes to kill it; many of them, from their own sessions."""
    shutil.copy(fork_hopper, workspace / "work" / "hopper")
    token = secrets.token_hex(6)
    ran = session.run(["work/hopper", "32", "work/alive", token]).unwrap()
    assert ran.exit_code == 0 and (workspace / "work" / "alive").exists()
    (workspace / "work" / "alive").unlink()
    assert processes(session, token) == b""
    time.sleep(1.2)  # a survivor writes every second
    assert not (workspace / "work" / "alive").exists()
    assert alive_with_marker(token) == []


def test_stopped_and_hung_up_processes_die_with_their_command(session: SyncSession) -> None:
    token = secrets.token_hex(6)
    script = (
        f"sleep 300 {token} & kill -STOP $!; "
        f"setsid sh -c 'trap \"\" HUP TERM INT; kill -STOP $$; : {token}' & "
        f"sh -c 'trap \"\" HUP TERM; exec sleep 301 {token}' & sleep 0.2"
    )
    # `sleep N TOKEN` is an error for sleep: keep the marker in an argument it ignores
    script = script.replace(f"sleep 300 {token}", f"sh -c 'sleep 300; : {token}'").replace(
        f"exec sleep 301 {token}", f"sleep 301; : {token}"
    )
    assert session.run(["sh", "-c", script]).unwrap().exit_code == 0
    assert processes(session, token) == b""
    assert alive_with_marker(token) == []


def test_a_fork_bomb_is_bounded_and_gone_before_the_next_command(
    backend: Backend, workspace: pathlib.Path
) -> None:
    """The session's process limit bounds it; the tree kill at its timeout finds every
    process; the next command gets its whole share of processes back."""
    token = secrets.token_hex(6)
    policy = Policy(
        enforcement=Enforcement.BEST_EFFORT, limits=Limits(max_processes=64, timeout_s=30)
    )
    bomb = (
        "import os, time\nwhile True:\n    try: os.fork()\n    except OSError: time.sleep(0.001)\n"
    )
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(workspace)) as s:
        # (bubblewrap without a cgroup: the session's rlimits bound its commands' own)
        briefly = attrs.evolve(policy.limits, timeout_s=2)
        exploded = s.run(["python3", "-c", bomb, token], limits=briefly)
        assert isinstance(exploded, Failure) and isinstance(exploded.failure(), Timeout)
        assert processes(s, token) == b""
        forks = "for i in $(seq 40); do sleep 0.2 & done; wait; echo forked"
        assert sh(s, forks) == b"forked\n"
    assert alive_with_marker(token) == []


# --- the caller's death -------------------------------------------------------------------
IDLE_CALLER = """
import sys, anyio
from mechasandbox.sandbox import Sandbox
from mechasandbox.domain.policy import Policy, Enforcement
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.test_sessions import make_backend

async def main() -> None:
    backend = make_backend(sys.argv[1], HelperProcessRunner())
    sandbox = Sandbox(backend=backend, policy=Policy(enforcement=Enforcement.BEST_EFFORT))
    async with sandbox.session(workspace=sys.argv[2]) as session:
        ran = await session.run_async(["sh", "-c", "echo kept > work/state"])
        print(ran.unwrap().exit_code, flush=True)
        await anyio.sleep(1000)

anyio.run(main)
"""


def test_the_callers_death_between_commands_ends_the_session(
    backend: Backend, workspace: pathlib.Path
) -> None:
    """Killed with SIGKILL while no command runs (the agent waits on its channel): none of
    the session's processes is left (bwrap, the agent), and its cgroups are empty."""
    caller = subprocess.Popen(
        [sys.executable, "-c", IDLE_CALLER, backend.name, str(workspace)],
        stdout=subprocess.PIPE,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert caller.stdout is not None
    assert caller.stdout.readline() == b"0\n"
    ours = _in_workspace(workspace)
    assert ours, "the session's processes name or stand in its workspace"
    cgroups = {group for pid in ours for group in _session_cgroups(pid)}
    assert cgroups or isinstance(CgroupManager.probe(), str), "the session has a cgroup"
    caller.kill()
    caller.wait()
    caller.stdout.close()
    # (the last processes may still be exiting when the caller's death is noticed: both
    # checks are given the same bound)
    deadline = time.monotonic() + 5
    while (_in_workspace(workspace) or _occupied(cgroups)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _in_workspace(workspace) == []
    assert _occupied(cgroups) == []


def _occupied(cgroups: set[pathlib.Path]) -> list[pathlib.Path]:
    """The cgroups of `cgroups` that still hold a process."""
    found = []
    for group in cgroups:
        with contextlib.suppress(OSError):
            if (group / "cgroup.procs").read_text().strip():
                found.append(group)
    return found


def _in_workspace(workspace: pathlib.Path) -> list[int]:
    """Live processes whose command line names `workspace` (bwrap's) or whose directory is
    in it (the landlock agent's), this one's children aside."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            named = str(workspace).encode() in (entry / "cmdline").read_bytes()
            inside = os.readlink(entry / "cwd").startswith(str(workspace))
        except (OSError, IndexError):
            continue
        if state != "Z" and (named or inside):
            found.append(int(entry.name))
    return found


def _session_cgroups(pid: int) -> list[pathlib.Path]:
    """The cgroup directories `pid` is in below this host's pool (the session's own)."""
    manager = CgroupManager.probe()
    if isinstance(manager, str):
        return []
    parents = [pathlib.Path(parent) for parent in manager.parents]
    try:
        lines = pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    groups = []
    for line in lines:
        path = line.split(":", 2)[2].lstrip("/")
        for parent in parents:
            for root in (parent, *parent.parents):
                group = root / path
                if group != parent and parent in group.parents and group.is_dir():
                    groups.append(group)
    return groups


# --- a hostile repository ------------------------------------------------------------------
def test_the_repositorys_indirections_stay_protected_for_every_command(
    backend: Backend, workspace: pathlib.Path
) -> None:
    """What a one-shot run's set-up protects (a `core.hooksPath` directory, a nested
    repository found before the run) stays protected for each command of the session, the
    later ones included, whatever an earlier command did."""
    hooks_path = ["git", "-C", str(workspace), "config", "core.hooksPath", "work/hooks"]
    subprocess.run(hooks_path, check=True)
    (workspace / "work" / "hooks").mkdir()
    nested = workspace / "work" / "nested"
    subprocess.run(["git", "init", "-q", str(nested)], check=True)
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    attacks = (
        "echo evil > work/hooks/pre-commit",
        "echo evil > work/nested/.git/hooks/pre-commit",
        "printf '[core]\\n\\tfsmonitor = evil\\n' >> work/nested/.git/config",
        "mv work/nested/.git work/nested/g",
        "mv work/hooks work/h",
    )
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(workspace)) as s:
        for _ in range(2):
            for attack in attacks:
                assert s.run(["sh", "-c", attack]).unwrap().exit_code != 0, attack
    assert list((workspace / "work" / "hooks").iterdir()) == []
    assert not (nested / ".git" / "hooks" / "pre-commit").exists()
    assert "fsmonitor" not in (nested / ".git" / "config").read_text()


def _replace_placeholder(workspace: pathlib.Path) -> None:
    os.rmdir(workspace / ".vscode")
    os.mkdir(workspace / ".vscode")


def _git_config(workspace: pathlib.Path) -> None:
    subprocess.run(["git", "-C", str(workspace), "config", "user.name", "x"], check=True)


@pytest.mark.parametrize(
    ("host_action", "plant"),
    [
        (
            _replace_placeholder,
            "mkdir -p .vscode/evil && git init -q .vscode/evil && "
            "printf '[core]\\n\\tfsmonitor = \"touch %s; false\"\\n' >> .vscode/evil/.git/config",
        ),
        (_git_config, "printf '[core]\\n\\tfsmonitor = \"touch %s; false\"\\n' >> .git/config"),
    ],
    ids=["placeholder", "pinned-config"],
)
def test_a_cover_the_host_replaced_between_commands_is_no_way_in(
    runner: HelperProcessRunner,
    workspace: pathlib.Path,
    host_action: object,
    plant: str,
) -> None:
    """A protected path the host replaces between two commands (a placeholder it removes
    and makes again, a `.git/config` that `git config` writes by a rename) has lost its
    cover: the next command, quick enough to end before the watcher's first look, could
    write it, and the host's git would run what it planted (the placeholder's walk was
    skipped, the pinned config counted as protected). The session stops such a command
    before it starts, as a run is stopped."""
    backend = make_backend("bubblewrap", runner)
    marker = workspace / "planted-ran"
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    with Sandbox(backend=backend, policy=policy).session_sync(workspace=str(workspace)) as s:
        assert s.run(["true"]).unwrap().exit_code == 0
        host_action(workspace)  # type: ignore[operator]
        ran = s.run(["sh", "-c", plant % marker])
        assert isinstance(ran, Failure), ran
        assert "replaced on the host" in str(ran.failure())
    for gitdir in [workspace / ".git", *workspace.glob(".vscode/*/.git")]:
        subprocess.run(["git", "status"], cwd=gitdir.parent, capture_output=True, check=False)
    assert not marker.exists()


def test_a_project_file_narrows_the_session_and_stays_unwritable(
    backend: Backend, workspace: pathlib.Path
) -> None:
    """The session of an application configured for a workspace gets what its project file
    narrowed, for every command; no command can rewrite that file for a later run."""
    from mechasandbox import Application

    (workspace / "work" / "secret.txt").write_text("secret")
    secret = workspace / "work" / "secret.txt"
    (workspace / ".mechasandbox.toml").write_text(f'[filesystem]\ndeny_read = ["{secret}"]\n')
    app = Application.from_config(workspace=str(workspace), user_file=None).unwrap()
    narrowed = attrs.evolve(app.services.sandbox().policy, enforcement=Enforcement.BEST_EFFORT)
    assert str(secret) in narrowed.filesystem.deny_read
    sandbox = Sandbox(backend=backend, policy=narrowed)
    with sandbox.session_sync(workspace=str(workspace)) as s:
        for _ in range(2):
            read = s.run(["cat", "work/secret.txt"]).unwrap()
            assert read.exit_code != 0 and b"secret" not in read.stdout
            rewrite = "printf '[filesystem]\\n' > .mechasandbox.toml"
            assert s.run(["sh", "-c", rewrite]).unwrap().exit_code != 0
    assert "deny_read" in (workspace / ".mechasandbox.toml").read_text()
