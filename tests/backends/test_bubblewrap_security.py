"""The bubblewrap backend against the threat model, with a real sandbox: each attack must
fail inside AND leave no trace on the host. Also the shared functional checks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import anyio
import attrs
import pytest
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.workspace import workspace_locks
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.errors import (
    BackendFailed,
    ConfigInvalid,
    CpuLimit,
    PolicyUnsupported,
    SandboxError,
    SpawnFailed,
    Timeout,
)
from mechasandbox.domain.limits import MIB, Limits
from mechasandbox.domain.policy import (
    Enforcement,
    EnvironmentPolicy,
    NetworkMode,
    NetworkPolicy,
    Policy,
)
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available
from tests.git_attacks import (
    GIT_ATTACKS,
    GitAttack,
    plant_below_placeholder,
    planted_below_placeholder_ran,
    planted_ran,
    replace_placeholder,
    sandboxed_script,
)
from tests.host_actions import act_when_started, marking_library, processes_running
from tests.kernel_attacks import WRITE_BACK, assert_nothing_written, host_values
from tests.resource_limits import assert_fork_bomb_stopped, assert_memory_bomb_stopped
from tests.unix_servers import (
    datagram_pair_script,
    host_datagram_sockets,
    host_unix_servers,
    try_both,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")

pytestmark = [
    pytest.mark.backend("bubblewrap"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only"),
]

SECRET = "BEGIN-FAKE-PRIVATE-KEY-" + secrets.token_hex(8)
API_KEY = "sk-test-" + secrets.token_hex(8)
PYTHON = "/usr/bin/python3"


@attrs.frozen
class Box:
    backend: BubblewrapBackend
    home: Path
    workspace: Path

    def run(
        self, *argv: str, policy: Policy | None = None, stdin: bytes | None = None
    ) -> Result[RunResult, SandboxError]:
        request = RunRequest(argv=argv, workspace=str(self.workspace), stdin=stdin)
        chosen = policy or Policy(limits=Limits(timeout_s=30))
        return anyio.run(self.backend.run, request, chosen)

    def ok(self, *argv: str, policy: Policy | None = None, stdin: bytes | None = None) -> RunResult:
        result = self.run(*argv, policy=policy, stdin=stdin)
        assert isinstance(result, Success), result
        value: RunResult = result.unwrap()
        return value

    def sh(self, script: str, policy: Policy | None = None) -> RunResult:
        return self.ok("sh", "-c", script, policy=policy)


def make_box(runner: HelperProcessRunner, root: Path, *, workspace_in_home: bool = True) -> Box:
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(SECRET)
    (home / ".netrc").write_text(SECRET)
    workspace = home / "proj" if workspace_in_home else root / "ws"
    workspace.mkdir()
    current = HostContext.current()
    env = (
        ("HOME", str(home)),
        ("LANG", "C.UTF-8"),
        ("OPENAI_API_KEY", API_KEY),
        ("GITHUB_TOKEN", API_KEY),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    )
    host = attrs.evolve(current, env=env, home=str(home))
    backend = BubblewrapBackend(runner=runner, host=host)
    require_available(backend)
    return Box(backend=backend, home=home, workspace=workspace)


@pytest.fixture
def box(either_runner: HelperProcessRunner, tmp_path: Path) -> Box:
    return make_box(either_runner, tmp_path)


def out(result: RunResult) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


# --- filesystem: reading secrets ----------------------------------------------------------
def test_home_secrets_unreadable_directly_and_through_dotdot(box: Box) -> None:
    result = box.sh(
        f"cat {box.home}/.ssh/id_rsa; cat ../.ssh/id_rsa; cat ../../home/.netrc; "
        f"ls -a {box.home} {box.home}/.ssh; cat ~/.ssh/id_rsa"
    )
    assert SECRET not in out(result)
    assert result.exit_code != 0
    assert (box.home / ".ssh" / "id_rsa").read_text() == SECRET


def test_deny_read_masks_secrets_when_the_workspace_is_home(
    runner: HelperProcessRunner, tmp_path: Path
) -> None:
    box = make_box(runner, tmp_path)
    home_box = attrs.evolve(box, workspace=box.home)
    result = home_box.sh("cat .ssh/id_rsa; cat .netrc; ls -a .ssh; echo done")
    assert SECRET not in out(result)
    assert "done" in out(result)
    assert (box.home / ".ssh" / "id_rsa").read_text() == SECRET


def test_planted_symlink_and_hardlink_do_not_reach_the_secret(box: Box) -> None:
    secret = box.home / ".ssh" / "id_rsa"
    (box.workspace / "planted").symlink_to(secret)
    result = box.sh(
        f"cat planted; ln -s {secret} mine; cat mine; ln {secret} hard; cat hard; "
        "ln -s ../.ssh/id_rsa rel; cat rel"
    )
    assert SECRET not in out(result)
    assert not (box.workspace / "hard").exists()
    assert secret.read_text() == SECRET


# --- filesystem: writing outside the workspace --------------------------------------------
def test_writes_outside_the_workspace_leave_nothing_on_the_host(box: Box) -> None:
    marker = "mechasandbox-" + secrets.token_hex(6)
    result = box.sh(
        f"echo x > /etc/{marker}; echo x > /tmp/{marker}; echo x > /usr/{marker}; "
        f"echo x > {box.home}/.bashrc; mkdir -p {box.home}/.local/bin; "
        f"echo x > {box.home}/.local/bin/{marker}; echo x > /var/tmp/{marker}; "
        f"echo x > {box.workspace.parent}/{marker}; echo end"
    )
    assert "end" in out(result)
    for path in (
        Path("/etc") / marker,
        Path("/tmp") / marker,
        Path("/usr") / marker,
        Path("/var/tmp") / marker,
        box.home / ".bashrc",
        box.home / ".local",
        box.workspace.parent / marker,
    ):
        assert not path.exists(), path


def test_git_hooks_config_and_rename_trick_blocked(box: Box) -> None:
    git = box.workspace / ".git"
    (git / "hooks").mkdir(parents=True)
    (git / "config").write_text("[core]\n\tbare = false\n")
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    result = box.sh(
        "echo evil > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit; "
        "printf '[core]\\n\\tfsmonitor = evil\\n' >> .git/config; "
        "mv .git/config .git/config.old; rm -f .git/config; rm -rf .git/hooks; "
        "mv .git g; mkdir -p g2 && mv g2 .git; "
        "cp -r .git /tmp/g && mv .git .git-old; echo end"
    )
    assert "end" in out(result)
    assert (git / "config").read_text() == "[core]\n\tbare = false\n"
    assert not (git / "hooks" / "pre-commit").exists()
    assert (git / "hooks").is_dir()
    assert not (git / "config.old").exists()
    assert not (box.workspace / "g").exists()
    assert not (box.workspace / ".git-old").exists()
    assert (git / "HEAD").exists()


# A command that points `.git/commondir` at a directory of the workspace makes the host's
# git read that directory's config and hooks; a submodule's repository under `.git/modules`
# has hooks of its own; `config.worktree` is read with `extensions.worktreeConfig`.
GIT_REDIRECTIONS = (
    "mkdir -p evil/hooks; cp .git/config evil/config; "
    "printf '#!/bin/sh\\necho REDIRECTED-HOOK >&2\\n' > evil/hooks/pre-commit; "
    "chmod +x evil/hooks/pre-commit; echo ../evil > .git/commondir; "
    "mkdir -p .git/modules/sub/hooks; echo evil > .git/modules/sub/hooks/post-checkout; "
    "printf '[core]\\n\\tfsmonitor = evil\\n' > .git/config.worktree; "
    "git status --porcelain > /dev/null && echo git-works; touch started; sleep 1; echo end"
)


def _host_git_commit(workspace: Path) -> subprocess.CompletedProcess[bytes]:
    git = ("git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(workspace))
    return subprocess.run(
        [*git, "commit", "-q", "--allow-empty", "-m", "x"], capture_output=True, check=False
    )


def test_git_redirections_are_blocked_and_git_keeps_working(box: Box) -> None:
    subprocess.run(["git", "init", "-q", str(box.workspace)], check=True)
    during: list[subprocess.CompletedProcess[bytes]] = []
    helper = act_when_started(  # the command is in its `sleep 1`, the covers in place
        box.workspace / "started", lambda: during.append(_host_git_commit(box.workspace))
    )
    try:
        result = box.sh(GIT_REDIRECTIONS)
    finally:
        helper.join()
    assert "end" in out(result)
    assert "git-works" in out(result), out(result)  # the sandbox's git, with the covers
    for name in ("commondir", "modules", "config.worktree"):
        assert not (box.workspace / ".git" / name).exists(), name
    # The host's git worked during the run (a directory at .git/commondir would break it),
    # and is not redirected after it.
    assert during[0].returncode == 0, during[0].stderr
    after = _host_git_commit(box.workspace)
    assert after.returncode == 0, after.stderr
    for commit in (during[0], after):
        assert b"REDIRECTED-HOOK" not in commit.stderr


@pytest.mark.parametrize("attack", GIT_ATTACKS, ids=lambda attack: attack.name)
def test_git_indirections_do_not_run_planted_commands_on_the_host(
    box: Box, tmp_path: Path, attack: GitAttack
) -> None:
    """What git's settings and the file system lead the host's git to (`core.hooksPath`,
    include files, an fsmonitor script, a linked worktree's `commondir`, a nested
    repository, a submodule's gitfile) cannot be planted from the sandbox."""
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = outside / "PLANTED-RAN"
    attack.prepare(box.workspace, outside)
    result = box.sh(sandboxed_script(attack, marker))
    assert "end" in out(result), out(result)
    assert "git-works" in out(result), out(result)
    assert planted_ran(attack, box.workspace, outside, marker) is None


def test_missing_protected_paths_cannot_be_created_and_leave_no_placeholder(box: Box) -> None:
    result = box.sh(
        "git init -q . 2>&1; mkdir -p .git/hooks; echo evil > .git/hooks/pre-commit; "
        "echo 'eval evil' > .envrc; mkdir .vscode; echo '{}' > .vscode/tasks.json; "
        "echo ok > notes.txt; echo end"
    )
    assert "end" in out(result)
    assert sorted(os.listdir(box.workspace)) == ["notes.txt"]


def test_git_in_the_sandbox_does_not_see_the_placeholders(box: Box) -> None:
    """The covers of missing protected paths (`.envrc`, `.vscode`...) must not get in the
    way of an agent's everyday git: `git status` lists only what the command changed, and
    `git add -A` and a commit work (git ignores empty directories; it would refuse devices)."""
    git = ("git", "-c", "user.email=a@b", "-c", "user.name=a")
    subprocess.run([*git, "init", "-q", str(box.workspace)], check=True)
    result = box.sh(
        "echo x > new.txt; git status --porcelain; "
        "git add -A && git -c user.email=a@b -c user.name=a commit -qm x && echo committed"
    )
    lines = out(result).split()
    assert lines == ["??", "new.txt", "committed"], out(result)


_HOST_THAT_DIES = r"""
import anyio, sys
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.domain import Limits, Policy, RunRequest
from mechasandbox.runner.runner import HelperProcessRunner

backend = BubblewrapBackend(runner=HelperProcessRunner())
request = RunRequest(argv=("sh", "-c", "echo up; sleep 30"), workspace=sys.argv[1])
anyio.run(backend.run, request, Policy(limits=Limits(timeout_s=60)))
"""


def test_placeholders_of_a_host_killed_mid_run_are_removed_by_the_next_host(
    box: Box, tmp_path: Path
) -> None:
    """A host SIGKILLed during a run leaves bwrap's mount points in the workspace (empty
    `.git/`, `.env/`...); the next process that runs bubblewrap removes them, and keeps a
    directory someone has put content in."""
    state = tmp_path / "state"
    env = {**os.environ, "XDG_STATE_HOME": str(state), "PYTHONPATH": SRC}
    host = subprocess.Popen([sys.executable, "-c", _HOST_THAT_DIES, str(box.workspace)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not (box.workspace / ".git").is_dir():
            assert time.monotonic() < deadline, "the run never started"
            assert host.poll() is None, "the host ended early"
            time.sleep(0.05)
        time.sleep(0.5)  # all placeholders up, the command sleeping
    finally:
        host.kill()
        host.wait()
    left = sorted(os.listdir(box.workspace))
    assert ".git" in left and ".env" in left  # the crash left them: the test is not vacuous
    (box.workspace / ".vscode" / "keep").write_text("someone's file")

    rerun = subprocess.run(
        [sys.executable, "-c", _HOST_THAT_DIES.replace("sleep 30", "true"), str(box.workspace)],
        env=env,
        timeout=60,
        check=True,
    )
    assert rerun.returncode == 0
    assert sorted(os.listdir(box.workspace)) == [".vscode"]
    assert (box.workspace / ".vscode" / "keep").read_text() == "someone's file"
    kept = state / "mechasandbox" / "placeholders"
    assert [p.name for p in kept.iterdir() if p.name != "workspaces"] == []  # journals, stashes
    pending = [p for p in (kept / "workspaces").iterdir() if p.suffix == ".pending"]
    assert not any(p.stat().st_size for p in pending)


_HOST_RUNNING = r"""
import anyio, sys
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.domain import Limits, Policy, RunRequest
from mechasandbox.runner.runner import HelperProcessRunner

backend = BubblewrapBackend(runner=HelperProcessRunner())
request = RunRequest(argv=("sh", "-c", sys.argv[2]), workspace=sys.argv[1])
result = anyio.run(backend.run, request, Policy(limits=Limits(timeout_s=60))).unwrap()
sys.stdout.buffer.write(result.stdout + result.stderr)
"""


def test_a_run_of_another_process_keeps_its_covers_when_the_first_ends(
    box: Box, tmp_path: Path
) -> None:
    """Two host processes run in one workspace. The second one's sandbox starts while the
    first one's placeholders stand, and covers them in turn (read-only binds of those
    directories). When the first run ends, its placeholders must stay until the second
    ends: removing a mount point from outside detaches the mounts on it, and the second
    sandbox could then create `.env` and `.git/hooks` in the workspace. The last run to end
    removes them."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONPATH": SRC}
    first = subprocess.Popen(
        [sys.executable, "-c", _HOST_RUNNING, str(box.workspace), "echo up; sleep 1"],
        env=env,
        stdout=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not (box.workspace / ".env").is_dir():
        assert time.monotonic() < deadline, "the first run never started"
        time.sleep(0.02)
    attack = (
        "sleep 2.5; echo 'export PWNED=1' > .env; echo env=$?; "
        "mkdir -p .git/hooks && echo 'echo hooked' > .git/hooks/pre-commit; echo hook=$?; "
        "echo 'export PWNED=1' > .envrc; echo envrc=$?"
    )
    second = subprocess.run(
        [sys.executable, "-c", _HOST_RUNNING, str(box.workspace), attack],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    first_out, _ = first.communicate(timeout=60)
    assert first.returncode == 0 and b"up" in first_out
    statuses = dict(
        line.split("=", 1) for line in second.stdout.decode().splitlines() if "=" in line
    )
    assert set(statuses) == {"env", "hook", "envrc"}, second.stdout
    assert all(value != "0" for value in statuses.values()), second.stdout
    assert os.listdir(box.workspace) == []  # nothing written, and no placeholder left


def _stopped_for(result: Result[RunResult, SandboxError], path: Path) -> str:
    """The reason of a run stopped because `path` was replaced on the host."""
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, BackendFailed), error
    assert f"{path} was replaced on the host" in error.reason, error
    return error.reason


def test_a_run_whose_pin_is_replaced_on_the_host_is_stopped(box: Box) -> None:
    """`git config` on the host writes `.git/config.lock` and renames it over `.git/config`,
    which takes the sandbox's read-only pin off with the old file: the command could then
    plant `core.fsmonitor`. The run is stopped before the command's write a second later,
    and the error says why."""
    git = ("git", "-C", str(box.workspace))
    subprocess.run([*git, "init", "-q"], check=True)
    quiet = box.sh("sleep 0.2; echo end")  # no replacement: runs to its end
    assert "end" in out(quiet) and not [w for w in quiet.warnings if "replaced" in w]

    def host_git() -> None:
        subprocess.run([*git, "config", "user.name", "someone"], check=True)

    # This run's own text: other runs of such tests (other users of the machine) may be alive.
    planted = f"fsmonitor = evil-{secrets.token_hex(4)}"
    thread = act_when_started(box.workspace / "started", host_git)
    try:
        result = box.run(
            "sh", "-c", f"touch started; sleep 1; echo '[core] {planted}' >> .git/config"
        )
    finally:
        thread.join()
    config = box.workspace / ".git" / "config"
    assert "evil" not in config.read_text()
    left = subprocess.run(["pgrep", "-f", planted], check=False, capture_output=True)
    assert left.returncode == 1, left.stdout  # the stopped run left nothing behind
    assert "read-only cover" in _stopped_for(result, config)


def test_a_repository_made_below_a_replaced_placeholder_before_the_stop_is_disarmed(
    box: Box,
) -> None:
    """The watcher looks every 50 ms: a command that writes at once once a placeholder's
    cover came off (the host made `.vscode` anew) can make a repository below it before the
    run is stopped. After the run it is disarmed as any repository the command made (a
    protected path whose guard was lost protects nothing), not left armed for the host's
    git because `.vscode` is protected."""
    subprocess.run(["git", "-C", str(box.workspace), "init", "-q"], check=True)
    marker = box.workspace / "planted-ran"
    thread = act_when_started(box.workspace / "started", lambda: replace_placeholder(box.workspace))
    try:
        box.run("sh", "-c", plant_below_placeholder(marker))
    finally:
        thread.join()
    assert not planted_below_placeholder_ran(box.workspace, marker)


def test_a_run_whose_placeholder_is_replaced_on_the_host_is_stopped(box: Box) -> None:
    """A missing `.vscode` is covered by an empty read-only directory mounted on the
    placeholder; a host process that removes the placeholder and makes the directory anew
    (a rename over it would do the same) takes the cover off, and the command could plant
    `.vscode/tasks.json`. The run is stopped first."""
    vscode = box.workspace / ".vscode"

    def recreate() -> None:
        os.rmdir(vscode)
        vscode.mkdir()

    thread = act_when_started(box.workspace / "started", recreate)
    try:
        result = box.run(
            "sh", "-c", "touch started; sleep 1; echo '{}' > .vscode/tasks.json; echo wrote"
        )
    finally:
        thread.join()
    assert not (vscode / "tasks.json").exists()
    _stopped_for(result, vscode)


def test_a_run_whose_mask_is_replaced_on_the_host_is_stopped(
    runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """The same for a masked secret an editor or a tool saves by a rename: the command,
    reading it a second later, would see the new one; it is stopped before."""
    box = make_box(runner, tmp_path)
    home_box = attrs.evolve(box, workspace=box.home)
    netrc = box.home / ".netrc"

    def rewrite() -> None:
        fresh = box.home / ".netrc.new"
        fresh.write_text(SECRET + "-new")
        os.rename(fresh, netrc)

    thread = act_when_started(box.home / "started", rewrite)
    try:
        result = home_box.run("sh", "-c", "touch started; sleep 1; cat .netrc > leaked")
    finally:
        thread.join()
    assert not (box.home / "leaked").exists()
    assert "mask" in _stopped_for(result, netrc)


def test_no_run_starts_while_the_workspace_lock_is_held_too_long(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held exclusive beyond the wait (a stuck or foreign holder) refuses the run
    rather than start one whose covers could be removed under it."""
    monkeypatch.setattr(workspace_locks, "ENTER_WAIT_S", 0.2)
    assert box.ok("true").exit_code == 0  # sets up this process's locks
    directory = box.backend.placeholders._workspace_locks().directory
    assert directory is not None
    holder = os.open(directory / f"{workspace_locks.bucket_of(str(box.workspace))}.lock", os.O_RDWR)
    try:  # locked as another process would
        byte = workspace_locks.byte_of(str(box.workspace))
        assert workspace_locks.try_lock(holder, byte, fcntl.F_WRLCK)
        result = box.run("sh", "-c", "echo ran > ran.txt")
    finally:
        os.close(holder)
    assert isinstance(result, Failure), result
    assert "placeholder lock" in result.failure().message
    assert not (box.workspace / "ran.txt").exists()
    assert box.ok("true").exit_code == 0  # free again


def test_concurrent_runs_in_one_workspace_share_placeholders_safely(box: Box) -> None:
    """A run that starts while another one's placeholders stand covers them as missing
    paths (read-only) instead of binding them writable, and they go with the last run."""
    request = RunRequest(argv=("sleep", "1"), workspace=str(box.workspace))
    attack = RunRequest(
        argv=("sh", "-c", "echo evil > .envrc; mkdir -p .git/x && echo y > .git/x/y; echo end"),
        workspace=str(box.workspace),
    )
    policy = Policy(limits=Limits(timeout_s=30))
    outcomes: dict[str, Result[RunResult, SandboxError]] = {}

    async def both() -> None:
        async def first() -> None:
            outcomes["first"] = await box.backend.run(request, policy)

        async def second() -> None:
            await anyio.sleep(0.4)  # the first run's placeholders are up by now
            outcomes["second"] = await box.backend.run(attack, policy)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            tasks.start_soon(second)

    anyio.run(both)
    assert isinstance(outcomes["first"], Success), outcomes["first"]
    second_run = outcomes["second"]
    assert isinstance(second_run, Success), second_run
    assert "end" in out(second_run.unwrap())
    assert os.listdir(box.workspace) == []


def test_devices_fifos_setuid_copies_mount_unshare_chroot_fail(box: Box) -> None:
    result = box.sh(
        "mknod dev c 1 3; echo mknod=$?; mkfifo fifo; echo mkfifo=$?; "
        "cp /bin/true suid; chmod u+s suid; echo chmod=$?; chmod g+s suid; echo chmodg=$?; "
        "mkdir m; mount -t tmpfs none m; echo mount=$?; mount --bind / m; echo bind=$?; "
        "unshare -U true; echo unshareU=$?; unshare -m true; echo unsharem=$?; "
        "unshare -n true; echo unsharen=$?; chroot / true; echo chroot=$?"
    )
    statuses = dict(
        line.split("=", 1) for line in result.stdout.decode().splitlines() if "=" in line
    )
    assert set(statuses) == {
        "mknod", "mkfifo", "chmod", "chmodg", "mount", "bind",
        "unshareU", "unsharem", "unsharen", "chroot",
    }  # fmt: skip
    assert all(value != "0" for value in statuses.values()), statuses
    assert not (box.workspace / "dev").exists()
    assert not (box.workspace / "fifo").exists()
    mode = (box.workspace / "suid").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID)


# --- kernel settings ----------------------------------------------------------------------
# What container engines make read-only and mask (moby's readonlyPaths and maskedPaths), and
# the files only host root may read. Written out here, not taken from the backend, so that
# a path dropped there fails here.
KERNEL_READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
KERNEL_MASKED = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats",
)  # fmt: skip
# Mode 0400 without a capability check: readable by a root caller's sandbox, unless masked.
KERNEL_ROOT_ONLY = (
    "/proc/kpagecgroup", "/proc/kpagecount", "/proc/kpageflags", "/proc/pagetypeinfo",
    "/proc/slabinfo", "/proc/vmallocinfo",
)  # fmt: skip

# Prints, for each path given, "ro" or "rw" (its mount), "null" (/dev/null over it),
# "empty" (an empty directory over it), "readable" (a file that can be read), or else what
# made it fail.
_KERNEL_VIEW = (
    "import os, stat, sys\n"
    "for path in sys.argv[1:]:\n"
    "    try:\n"
    "        found = os.lstat(path)\n"
    "        if stat.S_ISREG(found.st_mode):\n"
    "            open(path, 'rb').read(1); print(path, 'readable'); continue\n"
    "    except OSError as e:\n"
    "        print(path, 'error', e.errno); continue\n"
    "    ro = os.statvfs(path).f_flag & os.ST_RDONLY\n"
    "    if stat.S_ISCHR(found.st_mode) and found.st_rdev == os.makedev(1, 3):\n"
    "        print(path, 'null')\n"
    "    elif stat.S_ISDIR(found.st_mode) and ro and not os.listdir(path):\n"
    "        print(path, 'empty')\n"
    "    else:\n"
    "        print(path, 'ro' if ro else 'rw')\n"
)


def _kernel_view(box: Box, paths: Iterable[str], policy: Policy | None = None) -> dict[str, str]:
    result = box.ok(PYTHON, "-c", _KERNEL_VIEW, *paths, policy=policy)
    return dict(line.split(" ", 1) for line in result.stdout.decode().splitlines())


def test_kernel_settings_cannot_be_written(box: Box) -> None:
    """A root caller's uid 0 is host uid 0 inside (a user namespace that root makes maps
    root), and a sysctl file asks for no capability: with /proc/sys writable, a command sets
    `kernel.core_pattern` to `|/workspace/evil` and the host runs it as root at the next
    crash. (As an ordinary user the writes fail anyway; the next test sees the covers.)"""
    before = host_values()
    result = box.sh(WRITE_BACK)
    assert_nothing_written(result.stdout, before)


def test_kernel_interfaces_are_read_only_or_masked(box: Box) -> None:
    existing = [p for p in (*KERNEL_READ_ONLY, *KERNEL_MASKED) if os.path.lexists(p)]
    assert "/proc/sys" in existing
    view = _kernel_view(box, existing)
    for path in existing:
        wanted = ("ro",) if path in KERNEL_READ_ONLY else ("null", "empty")
        assert view[path] in wanted, (path, view[path])


def test_files_only_host_root_may_read_stay_unreadable(box: Box) -> None:
    """Masked for a root caller (whose sandbox is host root to their mode 0400); refused
    by that mode for anyone else."""
    existing = [p for p in KERNEL_ROOT_ONLY if os.path.exists(p)]
    assert existing
    view = _kernel_view(box, existing)
    assert all(view[path].startswith(("null", "error")) for path in existing), view


def test_sys_is_absent_and_read_only_where_a_policy_shows_it(
    runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """bwrap mounts no /sys; a policy that binds the host's (or its /proc) in gets it
    read-only, with the firmware tables masked (writable, it is refused: see
    `test_a_writable_entry_into_sys_or_proc_is_refused`)."""
    box = make_box(runner, tmp_path)
    absent = box.sh("test -e /sys; echo $?")
    assert absent.stdout == b"1\n"
    fs = attrs.evolve(Policy().filesystem, readable=("/sys", "/sys/kernel", "/proc"))
    shown = Policy(filesystem=fs, limits=Limits(timeout_s=30))
    paths = ["/sys", "/sys/kernel", "/proc/sys"]
    paths += [p for p in ("/sys/firmware", "/sys/devices/virtual/powercap") if os.path.isdir(p)]
    view = _kernel_view(box, paths, policy=shown)
    assert view["/sys"] == view["/sys/kernel"] == view["/proc/sys"] == "ro", view
    assert all(view[p] == "empty" for p in paths[3:]), view
    assert_nothing_written(box.sh(WRITE_BACK, policy=shown).stdout, host_values())


def test_a_readable_root_does_not_bring_the_hosts_proc_dev_and_tmp(
    runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """`readable = ["/"]` binds the host's tree over the sandbox's own /proc, /dev and /tmp:
    the host's processes (whose environments a root caller's command reads), its devices,
    its /tmp. They are made again over it; the workspace and its covers stay visible."""
    box = make_box(runner, tmp_path, workspace_in_home=False)
    marker = tmp_path / "host-tmp-marker"
    marker.write_text("x")  # tmp_path is under the host's /tmp here
    victim = subprocess.Popen(["sleep", "60"])
    try:
        fs = attrs.evolve(Policy().filesystem, readable=("/",))
        policy = Policy(filesystem=fs, limits=Limits(timeout_s=30))
        result = box.sh(
            f"test -e /proc/{victim.pid}; echo proc=$?; ls /proc | grep -c '^[0-9]'; "
            f"test -e {marker}; echo tmp=$?; echo x > /tmp/mine && echo tmpwrite; "
            "echo x > /dev/null && echo devnull; ls /dev | wc -l; "
            "echo data > ws-file && echo wrote; echo x > .envrc; echo envrc=$?",
            policy=policy,
        )
    finally:
        victim.kill()
        victim.wait()
    lines = out(result).split()
    assert "proc=1" in lines and int(lines[lines.index("proc=1") + 1]) <= 5, lines
    assert "tmp=1" in lines and "tmpwrite" in lines and "devnull" in lines, lines
    assert int(lines[lines.index("devnull") + 1]) < 20, lines  # bwrap's few devices
    assert "wrote" in lines and "envrc=0" not in lines, lines
    assert (box.workspace / "ws-file").read_text() == "data\n"


# --- processes ----------------------------------------------------------------------------
def test_host_processes_are_invisible_and_unkillable(box: Box) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        result = box.sh(
            f"ls /proc | grep -x {victim.pid}; echo listed=$?; "
            f"cat /proc/{victim.pid}/environ; kill -9 {victim.pid}; echo kill=$?; "
            "ps -e -o pid= | wc -l"
        )
        text = result.stdout.decode()
        assert "listed=1" in text
        assert "kill=0" not in text
        assert int(text.split()[-1]) <= 5  # bwrap's init, sh, ps (and a pipe's wc)
        time.sleep(0.2)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_ptrace_is_denied(box: Box) -> None:
    script = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        "print(libc.ptrace(0, 0, 0, 0), ctypes.get_errno())"
    )
    result = box.ok(PYTHON, "-c", script)
    assert result.stdout.split() == [b"-1", str(errno.EPERM).encode()]


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(entry))
    return found


def test_daemons_do_not_outlive_the_run(box: Box) -> None:
    marker = f"{secrets.randbelow(10**6) + 10**6}.5"
    box.sh(
        f"setsid sleep {marker} & nohup sleep {marker} >/dev/null 2>&1 & "
        f"(sleep {marker} &) ; sh -c 'sleep {marker} &' ; echo started"
    )
    # Gone when the run returns, not a moment later: the sandbox's pid 1 kills them as it
    # exits, and the run waits for that exit.
    assert _host_processes_with(marker) == []


def test_timeout_kills_the_whole_tree(box: Box) -> None:
    marker = f"{secrets.randbelow(10**6) + 10**6}.25"
    policy = Policy(limits=Limits(timeout_s=1))
    result = box.run("sh", "-c", f"setsid sleep {marker} & sleep {marker}", policy=policy)
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), Timeout)
    deadline = time.monotonic() + 5
    while _host_processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _host_processes_with(marker) == []


def test_fork_bomb_is_a_process_limit(box: Box) -> None:
    policy = Policy(limits=Limits(timeout_s=30, max_processes=20))
    result = box.run("sh", "-c", "for i in $(seq 60); do sleep 1 & done; wait", policy=policy)
    assert_fork_bomb_stopped(box.backend, result)


def test_memory_bomb_is_a_memory_limit(box: Box) -> None:
    policy = Policy(limits=Limits(timeout_s=30, memory_bytes=64 * MIB))
    script = "b = []\nwhile True:\n    b.append(bytearray(8 * 1024 * 1024))"
    result = box.run(PYTHON, "-c", script, policy=policy)
    assert_memory_bomb_stopped(box.backend, result)


def test_cpu_spin_is_a_cpu_limit(box: Box) -> None:
    policy = Policy(limits=Limits(timeout_s=30, cpu_time_s=1))
    result = box.run("sh", "-c", "while :; do :; done", policy=policy)
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), CpuLimit)


def test_endless_output_is_capped(box: Box) -> None:
    policy = Policy(limits=Limits(timeout_s=30, max_output_bytes=64 * 1024))
    result = box.ok("head", "-c", "20000000", "/dev/zero", policy=policy)
    assert result.stdout_truncated
    assert len(result.stdout) <= 64 * 1024


def test_new_session_and_tiocsti_denied(box: Box) -> None:
    plan = box.backend.plan(
        RunRequest(argv=["true"], workspace=str(box.workspace)), Policy(), box.backend.host
    )
    assert "--new-session" in dict(plan.unwrap().sections)["bwrap"].split()
    script = (
        "import fcntl, os, termios\n"
        "print(os.getsid(0))\n"
        "try:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x')\nexcept OSError as e:\n    print(e.errno)"
    )
    result = box.ok(PYTHON, "-c", script)
    session, ioctl_errno = result.stdout.split()
    # A session led inside the sandbox's pid namespace (a host session would read as 0).
    assert 0 < int(session) <= 2
    assert ioctl_errno == str(errno.EPERM).encode()


# --- environment --------------------------------------------------------------------------
def test_host_environment_secrets_are_absent(box: Box) -> None:
    result = box.ok("env")
    assert API_KEY.encode() not in result.stdout
    assert b"OPENAI_API_KEY" not in result.stdout
    assert b"GITHUB_TOKEN" not in result.stdout
    assert b"LANG=C.UTF-8" in result.stdout


def test_loader_variables_of_the_policy_reach_only_the_command(box: Box, tmp_path: Path) -> None:
    """A project layer's `environment.set = { LD_PRELOAD = ... }` once made the host's loader
    load the library into bwrap itself, outside every confinement. The launcher starts with
    a fixed environment of ours; the command still gets its own."""
    outside = tmp_path / "outside"  # hidden in the sandbox: /tmp is private there
    outside.mkdir()
    marker = outside / "loaded-by"
    library = marking_library(outside, marker)
    subprocess.run(["true"], env={"LD_PRELOAD": str(library)}, check=True)  # the library works
    assert marker.read_text().strip() == os.path.realpath(shutil.which("true") or "")
    marker.unlink()
    loader = {"LD_PRELOAD": str(library), "LD_LIBRARY_PATH": str(outside)}
    policy = Policy(
        limits=Limits(timeout_s=30),
        environment=EnvironmentPolicy(set=tuple(sorted(loader.items()))),
    )
    result = box.ok("env", policy=policy)
    assert not marker.exists(), f"loaded on the host by {marker.read_text()}"
    assert f"LD_PRELOAD={library}".encode() in result.stdout
    assert f"LD_LIBRARY_PATH={outside}".encode() in result.stdout


def test_environment_values_are_neither_on_bwraps_command_line_nor_in_its_environment(
    box: Box,
) -> None:
    """The command's variables go to bwrap on a private descriptor (`--args`): not on its
    argv, which every user of the host can read in /proc, and not in its own environment."""
    value = "value-" + secrets.token_hex(8)
    policy = Policy(
        limits=Limits(timeout_s=30), environment=EnvironmentPolicy(set=(("TOKEN", value),))
    )
    seen: dict[int, tuple[bytes, bytes]] = {}

    def look() -> None:
        for pid in processes_running("bwrap", box.workspace):
            with contextlib.suppress(OSError):
                proc = Path("/proc", str(pid))
                seen[pid] = ((proc / "cmdline").read_bytes(), (proc / "environ").read_bytes())

    watcher = act_when_started(box.workspace / "started", look)
    try:
        result = box.sh("touch started; echo $TOKEN; sleep 1", policy=policy)
    finally:
        watcher.join()
    assert result.stdout.strip() == value.encode()
    assert seen, "no bwrap process of the run was found"
    for cmdline, environ in seen.values():
        assert value.encode() not in cmdline
        assert value.encode() not in environ
        assert environ == b""


def test_variables_that_look_like_bwrap_options_stay_variables(box: Box) -> None:
    """bwrap takes `--setenv`'s two operands as they are: a name or value that reads like
    an option binds nothing. A value beyond a pipe buffer (64 KiB) arrives whole."""
    big = secrets.token_hex(50 * 1024)  # 100 KiB: under the kernel's 128 KiB per variable
    variables = (("--bind", "/"), ("OPTION", "--ro-bind"), ("BIG", big), ("EMPTY", ""))
    policy = Policy(limits=Limits(timeout_s=30), environment=EnvironmentPolicy(set=variables))
    lines = box.ok("env", policy=policy).stdout.decode().splitlines()
    assert "--bind=/" in lines
    assert "OPTION=--ro-bind" in lines
    assert "EMPTY=" in lines
    assert f"BIG={big}" in lines


def test_a_nul_in_a_value_cannot_smuggle_bwrap_options(box: Box) -> None:
    """On `--args`, a NUL ends an argument: the rest of the value would be bwrap options of
    the policy's choosing (a TOML string can hold `\\u0000`). Refused before bwrap runs."""
    smuggled = "x\0--ro-bind\0/\0/hostroot"
    policy = Policy(
        limits=Limits(timeout_s=30), environment=EnvironmentPolicy(set=(("A", smuggled),))
    )
    result = box.run("cat", f"/hostroot{box.home}/.ssh/id_rsa", policy=policy)
    assert isinstance(result, Failure), result
    assert isinstance(result.failure(), ConfigInvalid)


def test_no_file_descriptors_beyond_stdio(box: Box) -> None:
    script = (
        "import os\n"
        "def is_open(fd):\n"
        "    try:\n        os.fstat(fd)\n        return True\n"
        "    except OSError:\n        return False\n"
        "print([fd for fd in range(1024) if is_open(fd)])"
    )
    result = box.ok(PYTHON, "-c", script)
    assert result.stdout.strip() == b"[0, 1, 2]"


# --- network ------------------------------------------------------------------------------
def _refused(box: Box, family: str, address: str) -> RunResult:
    script = (
        "import socket, sys\n"
        f"s = socket.socket(socket.{family}, socket.SOCK_STREAM)\n"
        "s.settimeout(3)\n"
        f"try:\n    s.connect({address})\n    print('CONNECTED')\n"
        "except OSError as e:\n    print('refused', e.errno)\n"
    )
    return box.ok(PYTHON, "-c", script)


def _accepts_nothing(server: socket.socket) -> None:
    server.setblocking(False)
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return
    connection.close()
    pytest.fail("the host server saw a connection from the sandbox")


def test_network_none_cannot_reach_a_host_loopback_server(box: Box) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = _refused(box, "AF_INET", f"('127.0.0.1', {port})")
        assert b"CONNECTED" not in result.stdout
        _accepts_nothing(server)


def test_network_none_cannot_reach_a_host_abstract_unix_socket(box: Box) -> None:
    name = "mechasandbox-test-" + secrets.token_hex(6)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("\0" + name)
        server.listen()
        result = _refused(box, "AF_UNIX", repr("\0" + name))
        assert b"CONNECTED" not in result.stdout
        _accepts_nothing(server)


def test_unix_socket_outside_the_workspace_is_unreachable(box: Box, tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        result = _refused(box, "AF_UNIX", repr(str(path)))
        assert b"CONNECTED" not in result.stdout
        _accepts_nothing(server)


def test_vsock_and_packet_sockets_are_denied(box: Box) -> None:
    script = (
        "import socket\n"
        "for family, kind in ((socket.AF_VSOCK, socket.SOCK_STREAM), "
        "(socket.AF_PACKET, socket.SOCK_RAW)):\n"
        "    try:\n        socket.socket(family, kind).close()\n        print('OPEN')\n"
        "    except OSError as e:\n        print(e.errno)"
    )
    result = box.ok(PYTHON, "-c", script)
    assert b"OPEN" not in result.stdout


def test_loopback_inside_the_sandbox_works(box: Box) -> None:
    script = (
        "import socket\n"
        "with socket.socket() as s, socket.socket() as c:\n"
        "    s.bind(('127.0.0.1', 0)); s.listen(); c.connect(s.getsockname()); print('ok')"
    )
    assert box.ok(PYTHON, "-c", script).stdout.strip() == b"ok"


def test_allowlist_without_a_forwarder_is_refused_in_strict_mode(box: Box) -> None:
    box = attrs.evolve(box, backend=attrs.evolve(box.backend, socat="/nonexistent/socat"))
    policy = Policy(network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("example.com",)))
    result = box.run("true", policy=policy)
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), PolicyUnsupported)
    relaxed = attrs.evolve(policy, enforcement=Enforcement.BEST_EFFORT)
    ran = box.ok("true", policy=relaxed)
    assert any("network-allowlist" in warning for warning in ran.warnings)


# --- functional ---------------------------------------------------------------------------
def test_echo(box: Box) -> None:
    result = box.ok("echo", "hello")
    assert result.stdout == b"hello\n"
    assert result.exit_code == 0
    assert result.backend == "bubblewrap"


def test_exit_codes_and_signals(box: Box) -> None:
    assert box.sh("exit 3").exit_code == 3
    killed = box.sh("kill -TERM $$")
    assert killed.signal == 15
    assert killed.exit_code is None


def test_stdin(box: Box) -> None:
    assert box.ok("cat", stdin=b"some input").stdout == b"some input"


def test_workspace_writes_are_visible_on_the_host_and_owned_by_the_host_uid(box: Box) -> None:
    box.sh("mkdir -p sub && echo data > sub/file.txt")
    written = box.workspace / "sub" / "file.txt"
    assert written.read_text() == "data\n"
    assert written.stat().st_uid == os.getuid()
    assert written.stat().st_gid == os.getgid()


def test_command_not_found_and_hidden_executables(box: Box) -> None:
    missing = box.run("no-such-command-xyz")
    assert isinstance(missing, Failure)
    assert isinstance(missing.failure(), SpawnFailed)
    assert missing.failure().exit_status == 127
    tool = box.home / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    hidden = box.run(str(tool))
    assert isinstance(hidden, Failure)
    assert "not visible" in hidden.failure().message


def test_probe_reports_a_missing_bwrap(runner: HelperProcessRunner) -> None:
    backend = BubblewrapBackend(runner=runner, bwrap="/nonexistent/bwrap")
    probed = backend.probe()
    assert isinstance(probed, Failure)
    assert "cannot run" in probed.failure().reason


def test_plan_shows_argv_and_rlimits(box: Box) -> None:
    policy = Policy(environment=EnvironmentPolicy(set=(("TOKEN", API_KEY),)))
    plan = box.backend.plan(
        RunRequest(argv=["echo", "hi"], workspace=str(box.workspace)), policy, box.backend.host
    )
    sections = dict(plan.unwrap().sections)
    assert sections["bwrap"].endswith("-- echo hi")
    assert " --clearenv --args 4 " in sections["bwrap"]
    assert "RLIMIT_NOFILE" in sections["rlimits"]
    assert "OPENAI_API_KEY" not in sections["environment"]
    assert "--setenv TOKEN \u2026" in sections["environment"].splitlines()
    assert API_KEY not in "".join(text for _, text in plan.unwrap().sections)
    assert sections["bwrap's own environment"] == "none"


# --- host unix sockets with the host's network: host control, not network -------------------
def _full(allow_unix_sockets: tuple[str, ...] = ()) -> Policy:
    network = NetworkPolicy(mode=NetworkMode.FULL, allow_unix_sockets=allow_unix_sockets)
    return Policy(network=network, limits=Limits(timeout_s=30))


def test_full_network_reaches_no_host_unix_socket(box: Box, tmp_path: Path) -> None:
    """--share-net shares the host's abstract sockets (D-Bus, X11, containerd); a path
    socket in a readable tree is visible: neither may be reached."""
    with host_unix_servers(tmp_path / "run") as servers:
        policy = attrs.evolve(
            _full(),
            filesystem=attrs.evolve(Policy().filesystem, readable=(str(tmp_path / "run"),)),
        )
        result = box.sh(try_both(servers), policy=policy)
        assert "connected" not in out(result), out(result)
        assert servers.reached() == []


def test_a_named_socket_is_reachable_with_full_network_and_no_other(
    box: Box, tmp_path: Path
) -> None:
    with host_unix_servers(tmp_path / "run") as servers:
        policy = _full(allow_unix_sockets=(str(servers.path),))
        if Protection.NAMED_UNIX_SOCKETS not in box.backend.probe().unwrap().enforced:
            result = box.run("true", policy=policy)
            assert isinstance(result, Failure)
            assert isinstance(result.failure(), PolicyUnsupported)
            return
        inner = (
            f"{PYTHON} -c 'import socket,subprocess; s=socket.socket(socket.AF_UNIX); "
            's.bind("\\0inner"); s.listen(); '
            'c=socket.socket(socket.AF_UNIX); c.connect("\\0inner"); print("inner ok")\''
        )
        ran = box.sh(f"{try_both(servers)}; {inner}", policy=policy)
        assert f"connected {servers.path}" in out(ran), out(ran)
        assert f"refused @{servers.abstract}" in out(ran), out(ran)
        assert "inner ok" in out(ran), out(ran)
        assert servers.reached() == [f"path {servers.path}"]


def test_a_named_socket_is_reachable_without_network(box: Box, tmp_path: Path) -> None:
    with host_unix_servers(tmp_path / "run") as servers:
        network = NetworkPolicy(allow_unix_sockets=(str(servers.path),))
        policy = Policy(network=network, limits=Limits(timeout_s=30))
        result = box.sh(try_both(servers), policy=policy)
        assert f"connected {servers.path}" in out(result), out(result)
        assert servers.reached() == [f"path {servers.path}"]


def test_a_named_socket_through_a_workspace_link_is_not_bound(box: Box, tmp_path: Path) -> None:
    """The repository could point a name the user gave in the workspace at docker.sock."""
    with host_unix_servers(tmp_path / "run") as servers:
        (box.workspace / "agent.sock").symlink_to(servers.path)
        network = NetworkPolicy(allow_unix_sockets=(str(box.workspace / "agent.sock"),))
        policy = Policy(network=network, limits=Limits(timeout_s=30))
        result = box.sh(try_both(servers), policy=policy)
        assert "connected" not in out(result), out(result)
        assert servers.reached() == []


def test_tools_work_without_unix_sockets_under_full_network(box: Box) -> None:
    subprocess.run(["git", "init", "-q", str(box.workspace)], check=True)
    script = (
        f'{PYTHON} -c \'import socket; a, b = socket.socketpair(); a.send(b"x"); '
        'print("pair", b.recv(1).decode())\' && '
        f'{PYTHON} -c \'import socket; print("resolved", '
        'socket.getaddrinfo("localhost", 80)[0][4][0])\' && '
        "id -un >/dev/null; git status --short >/dev/null && echo git-ok"
    )
    result = box.sh(script, policy=_full())
    assert result.exit_code == 0, out(result)
    for expected in ("pair x", "resolved ", "git-ok"):
        assert expected in out(result), out(result)


def test_a_datagram_socketpair_sends_to_no_host_socket_with_full_network(
    box: Box, tmp_path: Path
) -> None:
    """With socket(AF_UNIX) refused, a datagram pair would still sendto() the host's
    abstract sockets (shared network namespace) and visible path sockets."""
    with host_datagram_sockets(tmp_path / "run") as sockets:
        policy = attrs.evolve(
            _full(),
            filesystem=attrs.evolve(Policy().filesystem, readable=(str(tmp_path / "run"),)),
        )
        result = box.sh(datagram_pair_script(sockets), policy=policy)
        assert "sent" not in out(result), out(result)
        assert sockets.received() == []


# --- a policy's binds over the host's kernel interfaces and socket directories -------------
@pytest.mark.parametrize("entry", ["/sys/kernel", "/sys/fs/cgroup", "/proc/1", "link-to-sys"])
def test_a_writable_entry_into_sys_or_proc_is_refused(
    runner: HelperProcessRunner, tmp_path: Path, entry: str
) -> None:
    """Below /sys a writable bind is host sysfs (cgroup limits, module parameters), below
    /proc a host process's files (`oom_score_adj` of pid 1): writable by a root caller."""
    box = make_box(runner, tmp_path, workspace_in_home=False)
    if entry == "link-to-sys":
        (tmp_path / "link").symlink_to("/sys/kernel")
        entry = str(tmp_path / "link")
    fs = attrs.evolve(Policy().filesystem, writable=(entry,))
    result = box.run("true", policy=Policy(filesystem=fs, limits=Limits(timeout_s=30)))
    assert isinstance(result, Failure), result
    assert isinstance(result.failure(), ConfigInvalid)
    assert "kernel interface" in result.failure().message


@pytest.mark.parametrize("readable", [("/",), ("/run",), ("/var/run",)])
def test_a_readable_tree_shows_no_host_socket_directory(
    runner: HelperProcessRunner, tmp_path: Path, readable: tuple[str, ...]
) -> None:
    """A read-only bind does not stop connect(): `readable = ["/"]` once reached every
    socket of the host's /run (docker.sock among them)."""
    box = make_box(runner, tmp_path, workspace_in_home=False)
    path = f"/run/mechasandbox-test-{secrets.token_hex(6)}.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        try:
            server.bind(path)
        except PermissionError:
            pytest.skip("this user cannot make a socket in /run (the root run covers it)")
        server.listen(1)
        fs = attrs.evolve(Policy().filesystem, readable=readable)
        client = (
            "import socket; s = socket.socket(socket.AF_UNIX); "
            f"s.connect({path!r}); print('connected')"
        )
        result = box.ok(
            "/usr/bin/python3",
            "-c",
            client,
            policy=Policy(filesystem=fs, limits=Limits(timeout_s=30)),
        )
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    assert "connected" not in out(result)
    assert result.exit_code != 0
