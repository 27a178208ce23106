"""Refusals that explain themselves, on the real bubblewrap and landlock sandboxes: a refused
filesystem write is a violation naming the path and the rule, a run that failed for want of
the network names the allowlist, a command the sandbox cannot see names the `--allow-read`
that shows it; landlock's closed top level, and the attacks on it; PATH entries where
nothing may run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import attrs
import pytest
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.domain import (
    FilesystemPolicy,
    HostProcesses,
    Limits,
    NetworkMode,
    NetworkPolicy,
    Policy,
    RunRequest,
    RunResult,
    SandboxError,
    SpawnFailed,
)
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandboxes")

Backends = BubblewrapBackend | LandlockBackend
POLICY = Policy(host_processes=HostProcesses.VISIBLE, limits=Limits(timeout_s=30))
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@attrs.frozen
class Box:
    backend: Backends
    workspace: Path
    home: Path

    @property
    def name(self) -> str:
        return self.backend.name

    def run(self, *argv: str, policy: Policy = POLICY) -> Result[RunResult, SandboxError]:
        request = RunRequest(argv=list(argv), workspace=str(self.workspace))
        return anyio.run(self.backend.run, request, policy)

    def sh(self, script: str, policy: Policy = POLICY) -> RunResult:
        result = self.run("/bin/sh", "-c", script, policy=policy)
        assert isinstance(result, Success), result
        run: RunResult = result.unwrap()
        return run


def _backend(name: str, runner: HelperProcessRunner, host: HostContext) -> Backends:
    if name == "bubblewrap":
        return BubblewrapBackend(runner=runner, host=host)
    return LandlockBackend(runner=runner, host=host)


def _host(home: Path, path: str = SYSTEM_PATH) -> HostContext:
    return HostContext(
        env=(("HOME", str(home)), ("LANG", "C.UTF-8"), ("PATH", path)),
        home=str(home),
        uid=os.getuid(),
        gid=os.getgid(),
        platform="linux",
    )


def _box(name: str, runner: HelperProcessRunner, root: Path, *, path: str = SYSTEM_PATH) -> Box:
    home = root / "home"
    home.mkdir(exist_ok=True)
    workspace = root / "workspace"
    (workspace / "src").mkdir(parents=True, exist_ok=True)
    backend = _backend(name, runner, _host(home, path))
    require_available(backend)
    return Box(backend=backend, workspace=workspace, home=home)


@pytest.fixture(params=["bubblewrap", "landlock"])
def box(request: pytest.FixtureRequest, runner: HelperProcessRunner, tmp_path: Path) -> Box:
    made = _box(request.param, runner, tmp_path)
    git = ("git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(made.workspace))
    subprocess.run([*git, "init", "-q"], check=True)
    (made.workspace / "README").write_text("readme\n")
    return made


@pytest.fixture
def landlock_box(runner: HelperProcessRunner, tmp_path: Path) -> Box:
    return _box("landlock", runner, tmp_path)


def filesystem(run: RunResult) -> dict[str, str]:
    """The filesystem violations by the path they name first."""
    return {v.detail.split(": ", 1)[0]: v.detail for v in run.violations if v.kind == "filesystem"}


def network(run: RunResult) -> list[str]:
    return [v.detail for v in run.violations if v.kind == "network"]


# --- filesystem refusals -----------------------------------------------------------------------
def test_a_refused_write_to_a_protected_path_is_a_violation_naming_path_and_rule(box: Box) -> None:
    config = (box.workspace / ".git/config").read_text()
    run = box.sh(
        "echo evil >> .git/config; echo evil > .git/hooks/pre-commit; echo x > .envrc; "
        "mkdir .vscode; mkdir .vscode/x; exit 0"
    )
    found = filesystem(run)
    assert set(found) >= {".git/config", ".git/hooks/pre-commit", ".envrc"}, run
    assert "filesystem.protected '.git/config'" in found[".git/config"]
    assert "filesystem.protected '.git/hooks'" in found[".git/hooks/pre-commit"]
    assert "does not exist and may not be created" in found[".envrc"]
    assert "the command reported: " in found[".envrc"]
    vscode = next(detail for path, detail in found.items() if path.startswith(".vscode"))
    assert "filesystem.protected '.vscode'" in vscode
    # The refusals themselves held.
    assert (box.workspace / ".git/config").read_text() == config
    assert not (box.workspace / ".git/hooks/pre-commit").exists()
    assert not (box.workspace / ".envrc").exists()


def test_a_missing_protected_path_read_as_its_cover_is_explained(box: Box) -> None:
    """bubblewrap covers a missing `.env` with an empty read-only directory (`cat` says 'Is a
    directory'); the violation says why. A real directory's answer is no violation."""
    (box.workspace / ".idea").mkdir()
    run = box.sh("cat .env; cat .idea; cat src; exit 0")
    found = filesystem(run)
    assert ".idea" not in found
    assert "src" not in found
    if box.name == "bubblewrap":
        assert "Is a directory" in run.stderr.decode()
        assert "inside the sandbox it is an empty read-only directory" in found[".env"]
    else:
        assert ".env" not in found  # landlock needs no cover: it is simply absent


def test_writes_outside_and_to_denied_paths_name_their_rule(box: Box) -> None:
    locked = box.workspace / "src" / "locked"
    locked.mkdir()
    denied = attrs.evolve(POLICY.filesystem, deny_write=(str(locked),))
    policy = attrs.evolve(POLICY, filesystem=denied)
    run = box.sh("touch /usr/mechasandbox-x; echo x > src/locked/f; exit 0", policy=policy)
    found = filesystem(run)
    assert "read-only in the sandbox" in found["/usr/mechasandbox-x"], run
    assert "--allow-write" in found["/usr/mechasandbox-x"]
    assert f"filesystem.deny_write {str(locked)!r}" in found["src/locked/f"]
    assert not (locked / "f").exists()


def test_refusals_no_rule_explains_are_no_violations(box: Box) -> None:
    """A file the command made unreadable, and a line that only looks like a refusal on a
    path the sandbox lets it write: nothing of the policy refused them."""
    run = box.sh(
        "echo x > src/f; chmod 000 src/f; cat src/f; "
        "echo 'tool: src/other: Permission denied' >&2; "
        "echo 'tool: cannot create src/y: Read-only file system' >&2; exit 1"
    )
    assert filesystem(run) == {}, run.violations


def test_a_successful_run_and_a_silent_refusal_add_nothing(box: Box) -> None:
    run = box.sh("echo x > src/ok; { echo evil >> .git/config; } 2>/dev/null; exit 0")
    assert run.violations == ()


# --- landlock's closed top level ---------------------------------------------------------------
def test_landlock_top_level_refusals_say_why_and_policy_says_so(landlock_box: Box) -> None:
    box = landlock_box
    (box.workspace / ".git").mkdir()  # holds protected paths: closed too
    run = box.sh("echo x > made.txt; mkdir build; git add -A; echo y > src/fine; exit 0")
    found = filesystem(run)
    assert "the workspace's top level takes no new entry" in found["made.txt"], run
    assert "create new ones in a subdirectory" in found["made.txt"]
    assert "the workspace's top level" in found["build"]
    assert (box.workspace / "src/fine").exists()
    plan = box.backend.plan(
        RunRequest(argv=["true"], workspace=str(box.workspace)), POLICY, box.backend.host
    )
    assert isinstance(plan, Success), plan
    sections = dict(plan.unwrap().sections)
    assert "take no new entry, rename or removal: the top level, .git/" in sections["workspace"]


def test_landlock_without_protected_paths_shows_an_open_workspace(landlock_box: Box) -> None:
    box = landlock_box
    open_policy = attrs.evolve(POLICY, filesystem=FilesystemPolicy(protected=()))
    plan = box.backend.plan(
        RunRequest(argv=["true"], workspace=str(box.workspace)), open_policy, box.backend.host
    )
    assert isinstance(plan, Success), plan
    assert dict(plan.unwrap().sections)["workspace"] == "read+write+exec, new entries anywhere"
    run = box.sh("echo x > made.txt", policy=open_policy)
    assert (run.exit_code, run.violations) == (0, ())


# Each tries to leave a protected path the host would act on later; every one must fail, on
# both backends. (Landlock: the top level and .git/ take no new entry; a rule is on an inode,
# so a renamed protected directory keeps it; a link may not gain rights. bubblewrap: covers
# and pins.)
ATTACKS = {
    "symlink at the top level": "echo 'echo pwned' > src/evil; ln -s src/evil .envrc",
    "hard link at the top level": "echo 'echo pwned' > src/evil; ln src/evil .envrc",
    "rename into the top level": "echo 'echo pwned' > src/.envrc; mv src/.envrc .envrc",
    "rename a directory into place": "mkdir -p src/v && echo '{}' > src/v/tasks.json; "
    "mv src/v .vscode",
    "rename over a protected file": "printf '[core]\\n\\tfsmonitor = evil\\n' > src/c; "
    "mv src/c .git/config",
    "write into a new .git": "mv .git src/old-git; mkdir -p .git/hooks; "
    "echo 'echo pwned' > .git/hooks/pre-commit",
    "hook by symlink": "echo 'echo pwned' > src/evil; ln -s ../../src/evil .git/hooks/pre-commit",
    "hook by rename": "echo 'echo pwned' > src/evil; chmod +x src/evil; "
    "mv src/evil .git/hooks/pre-commit",
    "hook by hard link": "echo 'echo pwned' > src/evil; ln src/evil .git/hooks/pre-commit",
    "hooks directory replaced": "mkdir src/h && echo 'echo pwned' > src/h/pre-commit; "
    "mv .git/hooks src/oldhooks; mv src/h .git/hooks",
    "created then renamed": "echo 'echo pwned' > src/x; mv src/x .env; cp src/x .envrc",
}


@pytest.mark.parametrize("script", ATTACKS.values(), ids=ATTACKS.keys())
def test_no_protected_path_planted_survives(box: Box, script: str) -> None:
    git = box.workspace / ".git"
    before = {p.relative_to(box.workspace) for p in git.rglob("*")}
    config = (git / "config").read_text()
    box.sh(script + "; exit 0")
    assert (git / "config").read_text() == config
    assert not (box.workspace / ".envrc").exists()
    assert not (box.workspace / ".env").exists()
    assert not (box.workspace / ".vscode").exists()
    assert not (git / "hooks" / "pre-commit").exists()
    assert (git / "hooks").is_dir() and not (git / "hooks").is_symlink()
    assert {p.relative_to(box.workspace) for p in git.rglob("*")} == before


def test_a_landlock_right_on_a_directory_holds_below_it(tmp_path: Path) -> None:
    """Why landlock keeps the top level closed instead of granting new entries there: a
    right granted on a directory holds for every directory below it, whatever rule those
    have. Granting the top level `make_reg` and `write_file` lets the command plant a hook."""
    from mechasandbox.backends.linux.landlock import probe_abi

    if not isinstance(probe_abi(), int):
        pytest.skip("no Landlock here")
    top = tmp_path / "ws"
    (top / "hooks").mkdir(parents=True)
    script = textwrap.dedent(
        f"""
        from mechasandbox.backends.linux import landlock_compiler as c, landlock_hook as h
        h._prctl(38, 1)
        h.restrict_self({{
            "abi": 3, "handled_fs": c.handled_fs_for(3), "handled_net": 0, "scoped": 0,
            "rules": [
                ["/", c.READ, True, []],
                [{str(top)!r}, c.READ | c.FS_MAKE_REG | c.FS_WRITE_FILE, True, []],
                [{str(top / "hooks")!r}, c.READ, True, []],
            ],
            "net_rules": [],
        }})
        open({str(top / "made.txt")!r}, "w").write("top level")
        open({str(top / "hooks" / "pre-commit")!r}, "w").write("planted")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={"PYTHONPATH": _SRC})
    assert (top / "hooks" / "pre-commit").read_text() == "planted"


_SRC = str(Path(__file__).resolve().parents[2] / "src")


# --- network ------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_a_run_that_failed_offline_names_the_allowlist(box: Box) -> None:
    run = box.sh("curl -sS --max-time 5 https://pypi.org/simple/")
    assert run.exit_code != 0
    (hint,) = network(run)
    assert "--network allowlist --allow-domain pypi.org" in hint, hint
    assert "--allow-domain files.pythonhosted.org" in hint


def test_an_offline_hint_only_for_failed_runs_without_network(box: Box) -> None:
    failed = "echo 'curl: (6) Could not resolve host: pypi.org' >&2; exit {}"
    assert network(box.sh(failed.format(0))) == []
    full = attrs.evolve(POLICY, network=NetworkPolicy(mode=NetworkMode.FULL))
    assert network(box.sh(failed.format(6), policy=full)) == []
    assert network(box.sh("echo 'no such thing' >&2; exit 6")) == []
    assert len(network(box.sh(failed.format(6)))) == 1


def test_a_refused_loopback_connection_says_the_hosts_localhost_is_not_there(box: Box) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        # (a client that prints the address it tries, as wget and curl do, then Python's)
        script = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
        run = box.sh(f"echo 'Connecting to 127.0.0.1:{port}' >&2; python3 -c \"{script}\"")
        with pytest.raises(BlockingIOError):
            server.accept()  # the host's listener was never reached
    assert run.exit_code != 0
    (hint,) = network(run)
    if box.name == "bubblewrap":  # its own loopback answers: refused
        assert "services listening on the host's localhost are not reachable" in hint, hint
        assert f"--network allowlist --allow-domain 127.0.0.1:{port}" in hint, hint
    else:  # landlock: no socket at all
        assert "--network allowlist" in hint, hint


# --- commands the sandbox cannot see ------------------------------------------------------------
@pytest.mark.parametrize("name", ["bubblewrap", "landlock"])
def test_a_command_outside_the_sandbox_names_the_allow_read_that_shows_it(
    name: str, runner: HelperProcessRunner, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    tool = home / ".tool" / "bin" / "mytool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    box = _box(name, runner, tmp_path, path=f"{tool.parent}:{SYSTEM_PATH}")
    # Without toolchains: by default the root of a command found on the host's PATH in the
    # home is made readable (see test_toolchains), and this one would simply run.
    closed = attrs.evolve(POLICY, filesystem=attrs.evolve(POLICY.filesystem, toolchains=()))
    result = box.run("mytool", policy=closed)
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, SpawnFailed), error
    assert "--allow-read ~/.tool (filesystem.readable)" in error.message
    allowed = attrs.evolve(
        closed, filesystem=attrs.evolve(closed.filesystem, readable=("~/.tool",))
    )
    ran = box.run("mytool", policy=allowed)
    assert isinstance(ran, Success), ran
    assert ran.unwrap().stdout == b"tool ran\n"


@pytest.mark.parametrize("name", ["bubblewrap", "landlock"])
def test_an_interpreter_on_path_where_nothing_may_run_still_starts(
    name: str, runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """A PATH that lists a Python installation the sandbox cannot read (pyenv's
    `versions/X/bin` under the home): the shell runs the system's `python3`, which must not
    take the unreadable one for itself (landlock lets it `stat` that one's files)."""
    system = "/usr/bin/python3"
    if not os.path.exists(system):
        pytest.skip("needs /usr/bin/python3")
    version = subprocess.run(
        [system, "-c", "import sys; print('python%d.%d' % sys.version_info[:2])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    prefix = tmp_path / "home" / ".pyenv" / "versions" / "9.9"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib" / version / "encodings").mkdir(parents=True)
    (prefix / "lib" / version / "os.py").write_text("")  # the landmark of a prefix
    shutil.copy(system, prefix / "bin" / "python3")
    box = _box(name, runner, tmp_path, path=f"{prefix / 'bin'}:{SYSTEM_PATH}")
    # Toolchains off: by default ~/.pyenv would be readable (see test_toolchains), and this
    # test is about an installation the sandbox cannot read.
    closed = attrs.evolve(POLICY, filesystem=attrs.evolve(POLICY.filesystem, toolchains=()))
    run = box.sh("python3 -c 'import sys; print(sys.prefix)'", policy=closed)
    assert run.exit_code == 0, run.stderr.decode()
    assert str(prefix) not in run.stdout.decode()
    if name == "landlock":
        plan = box.backend.plan(
            RunRequest(argv=["true"], workspace=str(box.workspace)), closed, box.backend.host
        )
        assert isinstance(plan, Success)
        assert str(prefix / "bin") in dict(plan.unwrap().sections)["PATH left out"]
