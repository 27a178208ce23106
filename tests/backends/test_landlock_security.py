"""The landlock backend against the threat model, with the real sandbox.

Each attack test asserts that the attack failed inside the sandbox AND that the host shows
no effect. Network tests touch loopback only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import attrs
import pytest
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.domain import (
    GIB,
    MIB,
    CpuLimit,
    Enforcement,
    FilesystemPolicy,
    HostProcesses,
    Limits,
    NetworkMode,
    NetworkPolicy,
    Policy,
    PolicyUnsupported,
    Protection,
    RunRequest,
    RunResult,
    SandboxError,
    Timeout,
)
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available
from tests.git_attacks import GIT_ATTACKS, GitAttack, planted_ran, sandboxed_script
from tests.kernel_attacks import WRITE_BACK, assert_nothing_written, host_values
from tests.resource_limits import assert_fork_bomb_stopped, assert_memory_bomb_stopped
from tests.unix_servers import (
    datagram_pair_script,
    host_datagram_sockets,
    host_unix_servers,
    try_both,
)

pytestmark = pytest.mark.backend("landlock")

SECRET = "s3cr3t-" + uuid.uuid4().hex
POLICY = Policy(enforcement=Enforcement.BEST_EFFORT, limits=Limits(timeout_s=20))


@attrs.frozen
class Sandbox:
    backend: LandlockBackend
    workspace: Path
    home: Path

    def run(
        self, *argv: str, policy: Policy = POLICY, stdin: bytes | None = None
    ) -> Result[RunResult, SandboxError]:
        request = RunRequest(argv=list(argv), workspace=str(self.workspace), stdin=stdin)
        return anyio.run(self.backend.run, request, policy)

    def sh(self, script: str, policy: Policy = POLICY) -> RunResult:
        result = self.run("/bin/sh", "-c", script, policy=policy)
        assert isinstance(result, Success), result
        run: RunResult = result.unwrap()
        return run


@pytest.fixture
def sandbox(either_runner: HelperProcessRunner, tmp_path: Path) -> Sandbox:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(SECRET)
    (home / "notes.txt").write_text(SECRET)
    (home / ".bashrc").write_text("# original\n")
    workspace = tmp_path / "workspace"
    (workspace / "src").mkdir(parents=True)
    (workspace / ".git" / "hooks").mkdir(parents=True)
    (workspace / ".git" / "objects").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    (workspace / "README").write_text("readme\n")
    host = HostContext(
        env=(("HOME", str(home)), ("MY_API_KEY", SECRET), ("PATH", "/usr/bin:/bin")),
        home=str(home),
        uid=os.getuid(),
        gid=os.getgid(),
        platform="linux",
    )
    backend = LandlockBackend(runner=either_runner, host=host)
    require_available(backend)
    return Sandbox(backend=backend, workspace=workspace, home=home)


def out(result: RunResult) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


# --- functional -------------------------------------------------------------------------------
def test_echo_exit_code_and_stdin(sandbox: Sandbox) -> None:
    result = sandbox.run("/bin/sh", "-c", "cat; echo hi; exit 3", stdin=b"from stdin\n")
    assert isinstance(result, Success)
    run = result.unwrap()
    assert (run.exit_code, run.stdout) == (3, b"from stdin\nhi\n")
    assert run.backend == "landlock"
    assert any("host-processes-hidden" in w for w in run.warnings)


def test_readable_paths_that_are_not_there_are_skipped(sandbox: Sandbox, tmp_path: Path) -> None:
    """The host no longer looks for each rule's path before a run: the child skips one
    that is missing, below a file, or (as an ordinary user) below a directory it cannot
    search, as the host's look did, and the command runs."""
    locked = tmp_path / "locked"
    (locked / "inside").mkdir(parents=True)
    locked.chmod(0)
    try:
        filesystem = attrs.evolve(
            POLICY.filesystem,
            readable=("/nonexistent-mechasandbox", "/etc/passwd/below", str(locked / "inside")),
        )
        result = sandbox.run("cat", "README", policy=attrs.evolve(POLICY, filesystem=filesystem))
    finally:
        locked.chmod(0o755)
    assert isinstance(result, Success), result
    assert (result.unwrap().exit_code, result.unwrap().stdout) == (0, b"readme\n")


def test_strict_policy_refuses_honestly(sandbox: Sandbox) -> None:
    result = sandbox.run("true", policy=Policy())
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, PolicyUnsupported)
    assert error.missing == (Protection.HOST_PROCESSES_HIDDEN,)


def test_strict_policy_runs_when_host_processes_may_be_visible(sandbox: Sandbox) -> None:
    result = sandbox.run("true", policy=Policy(host_processes=HostProcesses.VISIBLE))
    assert isinstance(result, Success), result


def test_workspace_writes_visible_on_host(sandbox: Sandbox) -> None:
    run = sandbox.sh("echo made > src/new.txt && mkdir -p src/a/b && mv src/new.txt src/a/b/")
    assert run.exit_code == 0, out(run)
    assert (sandbox.workspace / "src/a/b/new.txt").read_text() == "made\n"
    # Existing top-level files stay writable in place; the top level takes no new entries.
    run = sandbox.sh("echo more >> README; echo x > newtop")
    assert "newtop" in out(run)
    assert (sandbox.workspace / "README").read_text() == "readme\nmore\n"
    assert not (sandbox.workspace / "newtop").exists()


def test_top_level_writable_when_nothing_is_protected(sandbox: Sandbox) -> None:
    policy = attrs.evolve(POLICY, filesystem=FilesystemPolicy(protected=()))
    run = sandbox.sh("echo x > newtop && rm README", policy=policy)
    assert run.exit_code == 0, out(run)
    assert (sandbox.workspace / "newtop").exists()


def test_private_tmp(sandbox: Sandbox) -> None:
    """A run's TMPDIR is private and writable; what a run leaves in it is gone with it (the
    directory too), and one left exactly as made is handed to a later run, empty."""
    run = sandbox.sh('echo t > "$TMPDIR/f" && cat "$TMPDIR/f" && echo "$TMPDIR"')
    assert run.exit_code == 0, out(run)
    tmpdir = run.stdout.decode().splitlines()[1]
    assert tmpdir.startswith("/tmp/mechasandbox-landlock-")
    assert not os.path.exists(tmpdir)  # it had a file: removed after the run
    run = sandbox.sh('mkdir -p "$TMPDIR/a/b" && touch "$TMPDIR/a/b/f"; echo "$TMPDIR"')
    assert not os.path.exists(run.stdout.decode().splitlines()[0])  # a tree: removed too
    # Changed in another way (its mode; extended attributes: tests/unit/test_private_tmp.py):
    # not handed out again.
    run = sandbox.sh('chmod 755 "$TMPDIR"; echo "$TMPDIR"')
    assert not os.path.exists(run.stdout.decode().strip()), out(run)

    untouched = sandbox.sh('echo "$TMPDIR"').stdout.decode().strip()
    assert os.listdir(untouched) == []  # kept for a later run
    again = sandbox.sh('ls -A "$TMPDIR"; echo "$TMPDIR"')
    assert again.stdout.decode().split() == [untouched]  # the same, still empty


def test_timeout_kills_the_tree(sandbox: Sandbox) -> None:
    policy = attrs.evolve(POLICY, limits=Limits(timeout_s=1))
    result = sandbox.run("/bin/sh", "-c", "sleep 100 & echo $! > src/pid; wait", policy=policy)
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), Timeout)
    pid = int((sandbox.workspace / "src/pid").read_text())
    assert not _alive(pid)


# --- filesystem -------------------------------------------------------------------------------
def test_home_secrets_unreadable(sandbox: Sandbox) -> None:
    run = sandbox.sh(
        f"cat {sandbox.home}/.ssh/id_ed25519; cat {sandbox.home}/notes.txt; ls {sandbox.home}"
    )
    assert SECRET not in out(run)
    assert "Permission denied" in out(run)


def test_dotdot_escape(sandbox: Sandbox) -> None:
    run = sandbox.sh("cat ../home/notes.txt; cat src/../../home/.ssh/id_ed25519")
    assert SECRET not in out(run)
    assert run.exit_code != 0


def test_symlink_planted_in_workspace(sandbox: Sandbox) -> None:
    os.symlink(sandbox.home / ".ssh" / "id_ed25519", sandbox.workspace / "src" / "key")
    run = sandbox.sh(f"cat src/key; ln -s {sandbox.home}/notes.txt src/n2; cat src/n2")
    assert SECRET not in out(run)


def test_hardlinks(sandbox: Sandbox) -> None:
    # Made by the command: refused (Landlock's refer rule: a link may not gain rights).
    run = sandbox.sh(f"ln {sandbox.home}/notes.txt src/stolen")
    assert run.exit_code != 0
    assert not (sandbox.workspace / "src/stolen").exists()
    # Planted by someone on the host beforehand: Landlock checks the path used, so a
    # hardlink inside the workspace IS readable. This is the documented truth.
    os.link(sandbox.home / "notes.txt", sandbox.workspace / "src" / "planted")
    run = sandbox.sh("cat src/planted")
    assert SECRET in out(run)


def test_writes_outside_the_workspace_fail(sandbox: Sandbox) -> None:
    name = f"mechasandbox-{uuid.uuid4().hex}"
    run = sandbox.sh(
        f"echo x > /etc/{name}; echo x > /tmp/{name}; echo evil >> {sandbox.home}/.bashrc; "
        f"mkdir /tmp/{name}.d; : > /etc/hostname"
    )
    assert run.exit_code != 0
    assert not Path(f"/etc/{name}").exists()
    assert not Path(f"/tmp/{name}").exists()
    assert not Path(f"/tmp/{name}.d").exists()
    assert (sandbox.home / ".bashrc").read_text() == "# original\n"
    assert Path("/etc/hostname").stat().st_size > 0


def test_protected_paths_and_rename_tricks(sandbox: Sandbox) -> None:
    ws = sandbox.workspace
    run = sandbox.sh(
        "echo evil > .git/hooks/pre-commit; echo evil >> .git/config; "
        "echo evil > .envrc; mkdir .vscode; mv .git g; mv .git/hooks .git/h; "
        "rm -rf .git/hooks; ln .git/config src/cfg; echo evil >> src/cfg; "
        "mv .git/config src/; cp -r .git src/g2 && mv src/g2 .git2; "
        "echo ok > .git/objects/ok; truncate -s 0 .git/config"
    )
    assert "Permission denied" in out(run) or "Operation not permitted" in out(run)
    assert not (ws / ".git/hooks/pre-commit").exists()
    assert (ws / ".git/config").read_text() == "[core]\n"
    assert not (ws / ".envrc").exists()
    assert not (ws / ".vscode").exists()
    assert not (ws / "g").exists()
    assert not (ws / ".git2").exists()
    assert (ws / ".git/hooks").is_dir()
    assert (ws / ".git/config").stat().st_nlink == 1  # `ln` refused (refer)
    assert (ws / ".git/objects/ok").exists()  # the rest of .git stays writable for git


@pytest.mark.parametrize("above", ["parent", "root"])
def test_a_writable_tree_around_the_workspace_leaves_protected_paths_read_only(
    sandbox: Sandbox, above: str
) -> None:
    """Landlock grants a path every right of every rule on its way up: a writable rule on a
    directory above the workspace (`writable = ["~"]` with the workspace in the home, or
    `/`) must carve the protected paths too, or the workspace's own carving is undone. The
    directories on the way down to them take no new entry then, as the workspace's top
    level does not; what is below them stays writable."""
    ws = sandbox.workspace
    (ws.parent / "beside").mkdir()
    around = str(ws.parent) if above == "parent" else "/"
    filesystem = attrs.evolve(POLICY.filesystem, writable=(around,))
    policy = attrs.evolve(POLICY, filesystem=filesystem)
    run = sandbox.run(
        "/bin/sh",
        "-c",
        "echo evil >> .git/config; echo evil > .git/hooks/pre-commit; echo evil > .envrc; "
        "mv .git g; echo ok > src/ok; echo ok > ../beside/ok; echo new > ../new",
        policy=policy,
    )
    assert isinstance(run, Success), run
    assert (ws / ".git/config").read_text() == "[core]\n"
    assert not (ws / ".git/hooks/pre-commit").exists()
    assert not (ws / ".envrc").exists()
    assert (ws / ".git").is_dir() and not (ws / "g").exists()
    assert (ws / "src/ok").read_text() == "ok\n"  # the rest stays writable
    assert (ws.parent / "beside/ok").read_text() == "ok\n"
    assert not (ws.parent / "new").exists()


def test_git_redirections_are_blocked(sandbox: Sandbox) -> None:
    """`.git/commondir` naming a directory of the workspace would make the host's git read
    that directory's config and hooks; `.git/modules` holds the submodules' repositories;
    `.git/config.worktree` is read with `extensions.worktreeConfig` (see the bubblewrap
    test of the same name). Landlock refuses new entries in `.git` itself."""
    ws = sandbox.workspace
    git = ("git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(ws))
    subprocess.run([*git, "init", "-q"], check=True)
    run = sandbox.sh(
        "mkdir -p src/evil/hooks; cp .git/config src/evil/config; "
        "printf '#!/bin/sh\\necho REDIRECTED-HOOK >&2\\n' > src/evil/hooks/pre-commit; "
        "chmod +x src/evil/hooks/pre-commit; echo ../src/evil > .git/commondir; "
        "mkdir -p .git/modules/sub/hooks; echo evil > .git/modules/sub/hooks/post-checkout; "
        "printf '[core]\\n\\tfsmonitor = evil\\n' > .git/config.worktree; echo end"
    )
    assert "end" in out(run)
    for name in ("commondir", "modules", "config.worktree"):
        assert not (ws / ".git" / name).exists(), name
    commit = subprocess.run(
        [*git, "commit", "-q", "--allow-empty", "-m", "x"], capture_output=True, check=False
    )
    assert commit.returncode == 0, commit.stderr
    assert b"REDIRECTED-HOOK" not in commit.stderr


@pytest.mark.parametrize("attack", GIT_ATTACKS, ids=lambda attack: attack.name)
def test_git_indirections_do_not_run_planted_commands_on_the_host(
    sandbox: Sandbox, tmp_path: Path, attack: GitAttack
) -> None:
    """See the bubblewrap test of the same name: the paths git's settings and the file
    system lead to are carved out of the workspace's grant like the policy's own."""
    fresh = attrs.evolve(sandbox, workspace=tmp_path / "fresh")
    fresh.workspace.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = outside / "PLANTED-RAN"
    attack.prepare(fresh.workspace, outside)
    result = fresh.sh(sandboxed_script(attack, marker))
    assert "end" in out(result), out(result)
    assert "git-works" in out(result), out(result)
    assert planted_ran(attack, fresh.workspace, outside, marker) is None


def test_a_protected_file_replaced_on_the_host_during_the_run_stays_read_only(
    sandbox: Sandbox,
) -> None:
    """`git config` on the host renames a new `.git/config` over the old one while the
    command runs: the new file has no rule of its own and its directory is carved read-only,
    so it is as unwritable as the old one (bubblewrap's pins come off in this case)."""
    config = sandbox.workspace / ".git" / "config"

    def host_rewrite() -> None:
        deadline = time.monotonic() + 30
        while not (sandbox.workspace / "src" / "started").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        fresh = sandbox.workspace / ".git" / "config.lock"
        fresh.write_text("[core]\n\trepositoryformatversion = 0\n")
        os.rename(fresh, config)

    thread = threading.Thread(target=host_rewrite)
    thread.start()
    try:
        run = sandbox.sh(
            "touch src/started; sleep 1; printf '[core]\\n\\tfsmonitor = evil\\n' >> "
            ".git/config; echo status=$?"
        )
    finally:
        thread.join()
    assert "status=0" not in out(run), out(run)
    assert config.read_text() == "[core]\n\trepositoryformatversion = 0\n"


def test_metadata_outside_is_not_confined(sandbox: Sandbox) -> None:
    """The documented gap: mode and times are not Landlock rights. Contents stay safe."""
    target = sandbox.home / "notes.txt"
    target.chmod(0o600)
    run = sandbox.sh(f"chmod 644 {target}; chmod u+s {target}")
    assert run.exit_code != 0  # the setuid half is refused by seccomp
    assert target.stat().st_mode & 0o7777 == 0o644
    assert target.read_text() == SECRET


def test_devices_mount_unshare_chroot(sandbox: Sandbox) -> None:
    for command in (
        "mknod src/null c 1 3",
        "mkfifo src/fifo",
        "mount -t tmpfs none src",
        "unshare -U true",
        "unshare -n true",
        "chroot / true",
        "cp /bin/sh src/sh && chmod u+s src/sh && ls -l src/sh | grep -q rws",
    ):
        run = sandbox.sh(command)
        assert run.exit_code != 0, command
    assert not (sandbox.workspace / "src/null").exists()
    assert not (sandbox.workspace / "src/fifo").exists()


def _capability_sets(status: str) -> dict[str, str]:
    fields = (line.split(":", 1) for line in status.splitlines())
    return {name: value.strip() for name, value in fields if name.startswith("Cap")}


def test_capabilities_dropped_and_no_new_privs(sandbox: Sandbox) -> None:
    run = sandbox.sh("grep -E '^(Cap[A-Za-z]+|NoNewPrivs|Seccomp):' /proc/self/status")
    shown = run.stdout.decode()
    sets = _capability_sets(shown)
    none = "0000000000000000"
    cleared = ("CapInh", "CapPrm", "CapEff", "CapAmb")
    assert {name: sets[name] for name in cleared} == dict.fromkeys(cleared, none)
    if os.geteuid() == 0:
        assert sets["CapBnd"] == none
    else:
        # Without CAP_SETPCAP the bounding set cannot shrink (the hook does not try), and it
        # grants nothing: no_new_privs keeps exec from gaining what it holds.
        own = _capability_sets(Path("/proc/self/status").read_text())["CapBnd"]
        assert sets["CapBnd"] == own
    assert "NoNewPrivs:\t1" in shown
    assert "Seccomp:\t2" in shown


def test_kernel_settings_cannot_be_written(sandbox: Sandbox) -> None:
    """/proc is in the rules for reading only: as root (whom no capability check stops at a
    sysctl file) the command still cannot set the host's sysctls, an IRQ's affinity, or
    open /proc/sysrq-trigger for writing. Every write puts back the value it has."""
    before = host_values()
    assert_nothing_written(sandbox.sh(WRITE_BACK).stdout, before)


@pytest.mark.parametrize("granted", ["/proc/sys", "/proc", "/"])
def test_kernel_settings_stay_unwritable_under_a_writable_entry(
    runner: HelperProcessRunner, tmp_path: Path, granted: str
) -> None:
    """A `writable` entry over /proc (or `/`, a plausible slip) grants no write to the
    kernel's settings: as root that would be a write to the host's sysctls."""
    (tmp_path / "ws").mkdir()
    host = attrs.evolve(HostContext.current(), home=str(tmp_path))
    backend = LandlockBackend(runner=runner, host=host)
    require_available(backend)
    sandbox = Sandbox(backend=backend, workspace=tmp_path / "ws", home=tmp_path)
    fs = attrs.evolve(POLICY.filesystem, writable=(granted,))
    before = host_values()
    result = sandbox.sh(WRITE_BACK, policy=attrs.evolve(POLICY, filesystem=fs))
    assert_nothing_written(result.stdout, before)


_UNPRIVILEGED_DROP = r"""
import os
from mechasandbox.backends.linux.landlock_hook import drop_capabilities
os.setgroups([]); os.setgid(65534); os.setuid(65534)
drop_capabilities()
print(*(l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm"))))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to an unprivileged uid first")
def test_capability_drop_as_an_unprivileged_user_succeeds_without_setpcap() -> None:
    """Without CAP_SETPCAP the bounding set cannot shrink: the hook must not fail there
    (it relies on no_new_privs instead) and still leaves no capability."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    ran = subprocess.run(
        [sys.executable, "-c", _UNPRIVILEGED_DROP],
        capture_output=True,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    shown = sorted(ran.stdout.decode().split())
    assert shown == sorted(["CapEff:", "0000000000000000", "CapPrm:", "0000000000000000"])


# --- processes --------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture
def host_sleep() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"], env={"HOST_TOKEN": SECRET, "PATH": "/usr/bin:/bin"})
    yield process
    process.kill()
    process.wait()


def test_cannot_signal_host_process(sandbox: Sandbox, host_sleep: subprocess.Popen[bytes]) -> None:
    run = sandbox.sh(f"kill -9 {host_sleep.pid}; kill -STOP {host_sleep.pid}")
    assert run.exit_code != 0
    time.sleep(0.1)
    assert host_sleep.poll() is None
    assert _alive(host_sleep.pid)


def test_cannot_ptrace_or_read_host_environ(
    sandbox: Sandbox, host_sleep: subprocess.Popen[bytes]
) -> None:
    run = sandbox.sh(
        f"strace -p {host_sleep.pid} -e trace=none & sleep 0.5; kill $! 2>/dev/null; "
        f"cat /proc/{host_sleep.pid}/environ; head -c 64 /proc/{host_sleep.pid}/mem"
    )
    assert SECRET not in out(run)
    assert "Operation not permitted" in out(run) or "Permission denied" in out(run)
    assert _alive(host_sleep.pid)


def test_daemons_do_not_outlive_the_run(sandbox: Sandbox) -> None:
    run = sandbox.sh(
        "setsid sleep 60 > /dev/null 2>&1 & echo $! > src/p1; "
        "(sh -c 'sleep 61 & echo $! > src/p2' &); sleep 0.3; "
        "nohup sleep 62 > /dev/null 2>&1 & echo $! > src/p3; exit 0"
    )
    assert run.exit_code == 0, out(run)
    for name in ("p1", "p2", "p3"):  # gone when the run returns, not a moment later
        pid = int((sandbox.workspace / "src" / name).read_text())
        assert not _alive(pid), name


def test_fork_bomb_is_a_process_limit(sandbox: Sandbox) -> None:
    policy = attrs.evolve(POLICY, limits=Limits(timeout_s=20, max_processes=32))
    result = sandbox.run(
        "/bin/sh", "-c", "for i in $(seq 200); do sleep 3 & done; wait", policy=policy
    )
    assert_fork_bomb_stopped(sandbox.backend, result)


def test_memory_bomb_is_a_memory_limit(sandbox: Sandbox) -> None:
    policy = attrs.evolve(POLICY, limits=Limits(timeout_s=20, memory_bytes=64 * MIB))
    result = sandbox.run(
        "/usr/bin/python3",
        "-c",
        "b = bytearray(1 << 30); b[::4096] = b'x' * (1 << 18)",
        policy=policy,
    )
    assert_memory_bomb_stopped(sandbox.backend, result)


def test_cpu_spin_is_a_cpu_limit(sandbox: Sandbox) -> None:
    policy = attrs.evolve(POLICY, limits=Limits(timeout_s=20, cpu_time_s=1, memory_bytes=GIB))
    result = sandbox.run("/bin/sh", "-c", "while :; do :; done", policy=policy)
    assert isinstance(result, Failure), result
    assert isinstance(result.failure(), CpuLimit)


def test_a_low_open_files_limit_is_applied_and_leaves_room_for_the_set_up(
    sandbox: Sandbox,
) -> None:
    """With 5 open files, the set-up after the limit (the Landlock ruleset, one path at a
    time) still fits in descriptors 3 and 4, whichever child sets the run up: runs in a
    row, so that warm children take them."""
    policy = attrs.evolve(POLICY, limits=Limits(timeout_s=20, max_open_files=5))
    for _ in range(3):
        run = sandbox.sh("ulimit -n", policy=policy)
        assert run.stdout == b"5\n", out(run)


# --- environment ------------------------------------------------------------------------------
def test_environment_secrets_absent(sandbox: Sandbox) -> None:
    run = sandbox.sh("env")
    assert SECRET not in out(run)
    assert "MY_API_KEY" not in out(run)
    # HOME is the run's private home, never the host's
    assert f"HOME={sandbox.home}" not in out(run)
    assert "HOME=/tmp/mechasandbox-landlock-" in out(run)


def test_no_inherited_descriptors(sandbox: Sandbox) -> None:
    run = sandbox.sh("ls /proc/self/fd")
    # 0-2 and the descriptor `ls` opened to list the directory
    assert run.stdout.decode().split() == ["0", "1", "2", "3"]


# --- network (loopback only) ------------------------------------------------------------------
@pytest.fixture
def tcp_server() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _accepted(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


def test_tcp_to_loopback_refused(sandbox: Sandbox, tcp_server: socket.socket) -> None:
    port = tcp_server.getsockname()[1]
    run = sandbox.sh(
        f"echo x > /dev/tcp/127.0.0.1/{port}; "
        f"/usr/bin/python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}))\""
    )
    assert run.exit_code != 0
    assert not _accepted(tcp_server)


def test_tcp_bind_refused(sandbox: Sandbox) -> None:
    run = sandbox.sh(
        "/usr/bin/python3 -c \"import socket; socket.socket().bind(('127.0.0.1', 0))\""
    )
    assert run.exit_code != 0


def test_udp_to_loopback_refused(sandbox: Sandbox) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        port = receiver.getsockname()[1]
        run = sandbox.sh(f"echo x > /dev/udp/127.0.0.1/{port}")
        assert run.exit_code != 0
        with pytest.raises(BlockingIOError):
            receiver.recv(64)


def test_unix_sockets_unreachable(sandbox: Sandbox, tmp_path: Path) -> None:
    name = f"mechasandbox-test-{uuid.uuid4().hex}"
    path = sandbox.workspace / "src" / "agent.sock"
    with contextlib.ExitStack() as stack:
        servers = []
        for address in ("\0" + name, str(path)):
            server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            server.bind(address)
            server.listen(1)
            server.setblocking(False)
            servers.append(server)
        run = sandbox.sh(
            f"socat -u - ABSTRACT-CONNECT:{name} </dev/null; "
            f"socat -u - UNIX-CONNECT:src/agent.sock </dev/null"
        )
        assert run.exit_code != 0
        assert not any(_accepted(server) for server in servers)


def test_signal_sent_from_inside_to_itself_still_works(sandbox: Sandbox) -> None:
    run = sandbox.sh("sleep 30 & kill $!; wait $!; echo status=$?")
    assert f"status={128 + signal.SIGTERM}" in out(run)


# --- host unix sockets: host control, not network (docker.sock, the ssh agent, D-Bus) -------
FULL = attrs.evolve(POLICY, network=NetworkPolicy(mode=NetworkMode.FULL))


@pytest.mark.parametrize("mode", list(NetworkMode))
def test_no_host_unix_socket_is_reachable_in_any_network_mode(
    sandbox: Sandbox, tmp_path: Path, mode: NetworkMode
) -> None:
    with host_unix_servers(tmp_path / "run") as servers:
        policy = attrs.evolve(POLICY, network=NetworkPolicy(mode=mode))
        run = sandbox.sh(try_both(servers), policy=policy)
        assert "connected" not in out(run), out(run)
        assert servers.reached() == []


def test_a_named_socket_is_reachable_under_best_effort_with_a_warning(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    with host_unix_servers(tmp_path / "run") as servers:
        network = NetworkPolicy(mode=NetworkMode.FULL, allow_unix_sockets=(str(servers.path),))
        run = sandbox.sh(try_both(servers), policy=attrs.evolve(POLICY, network=network))
        assert f"connected {servers.path}" in out(run), out(run)
        # the abstract namespace stays scoped (Landlock ABI 6)
        if sandbox.backend._abi() >= 6:
            assert f"refused @{servers.abstract}" in out(run), out(run)
        assert any(Protection.NAMED_UNIX_SOCKETS.value in w for w in run.warnings), run.warnings


def test_strict_refuses_a_policy_naming_unix_sockets(sandbox: Sandbox, tmp_path: Path) -> None:
    policy = Policy(
        enforcement=Enforcement.STRICT,
        host_processes=HostProcesses.VISIBLE,
        network=NetworkPolicy(mode=NetworkMode.FULL, allow_unix_sockets=(str(tmp_path / "s"),)),
    )
    result = sandbox.run("true", policy=policy)
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, PolicyUnsupported)
    assert Protection.NAMED_UNIX_SOCKETS in error.missing


def test_tools_work_without_unix_sockets_under_full_network(sandbox: Sandbox) -> None:
    """socket(AF_UNIX) is refused, socketpair() is not: libc's nscd and systemd lookups
    fall back, and what uses socketpair (Python, asyncio, subprocess pipes) still works."""
    script = (
        '/usr/bin/python3 -c \'import socket; a, b = socket.socketpair(); a.send(b"x"); '
        'print("pair", b.recv(1).decode())\' && '
        '/usr/bin/python3 -c \'import socket; print("resolved", '
        'socket.getaddrinfo("localhost", 80)[0][4][0])\' && '
        "/usr/bin/python3 -c 'import asyncio; asyncio.run(asyncio.sleep(0)); "
        'print("asyncio")\' && '
        "id -un >/dev/null && git status --short >/dev/null && echo git-ok"
    )
    subprocess.run(["git", "init", "-q", str(sandbox.workspace)], check=True)
    run = sandbox.sh(script, policy=FULL)
    text = out(run)
    assert run.exit_code == 0, text
    for expected in ("pair x", "resolved ", "asyncio", "git-ok"):
        assert expected in text, text


@pytest.mark.parametrize("mode", [NetworkMode.NONE, NetworkMode.FULL])
def test_a_datagram_socketpair_sends_to_no_host_socket(
    sandbox: Sandbox, tmp_path: Path, mode: NetworkMode
) -> None:
    """socketpair() stays for tools, but a datagram pair could sendto() any path socket."""
    with host_datagram_sockets(tmp_path / "run") as sockets:
        policy = attrs.evolve(POLICY, network=NetworkPolicy(mode=mode))
        run = sandbox.sh(datagram_pair_script(sockets), policy=policy)
        assert "sent" not in out(run), out(run)
        assert sockets.received() == []
