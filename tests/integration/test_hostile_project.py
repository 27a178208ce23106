"""A hostile repository against the real sandbox: its project file and its symlinks.

The workspace was written before the run by whoever wrote the repository. These are the
escapes such a repository once had: a project file that un-protected `.git/hooks` with
`protected = ["/"]`, one that made a host directory readable through `ref -> /host/dir`
planted in the workspace, and one that set `LD_PRELOAD`. Each test goes the way the CLI
goes: `load_policy` reads the layers, a real backend runs the command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import anyio
import attrs
import pytest
from returns.pipeline import is_successful
from returns.result import Failure, Result

from mechasandbox.backends.base import Backend
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.config.loading import load_policy
from mechasandbox.domain import (
    ConfigInvalid,
    FilesystemPolicy,
    HostProcesses,
    Policy,
    RunRequest,
    RunResult,
    SandboxError,
)
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

SECRET = "s3cr3t-" + uuid.uuid4().hex


@pytest.fixture(params=["bubblewrap", "landlock"])
def backend(request: pytest.FixtureRequest, runner: HelperProcessRunner) -> Backend:
    chosen: Backend
    if request.param == "bubblewrap":
        chosen = BubblewrapBackend(runner=runner)
    else:
        chosen = LandlockBackend(runner=runner)
    require_available(chosen)
    return chosen


def _attempt(
    backend: Backend, workspace: Path, policy: Policy, script: str
) -> Result[RunResult, SandboxError]:
    # Landlock cannot hide host processes; that is not what these tests are about.
    policy = attrs.evolve(policy, host_processes=HostProcesses.VISIBLE)
    request = RunRequest(argv=("/bin/sh", "-c", script), workspace=str(workspace))
    return anyio.run(backend.run, request, policy)


def _run(backend: Backend, workspace: Path, policy: Policy, script: str) -> RunResult:
    result = _attempt(backend, workspace, policy, script)
    assert is_successful(result), result
    finished: RunResult = result.unwrap()
    return finished


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory the sandbox must not see, holding a secret."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret").write_text(SECRET)
    return directory


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    directory = tmp_path / "ws"
    directory.mkdir()
    return directory


def _project(workspace: Path, text: str) -> None:
    (workspace / ".mechasandbox.toml").write_text(text)


def test_a_project_file_cannot_make_a_planted_symlink_readable(
    workspace: Path, outside: Path
) -> None:
    (workspace / "ref").symlink_to(outside)
    _project(workspace, f'[filesystem]\nreadable = ["{workspace}/ref"]\n')
    loaded = load_policy(workspace=str(workspace), user_file=None)
    assert isinstance(loaded, Failure), loaded
    error = loaded.failure()
    assert isinstance(error, ConfigInvalid)
    assert error.field == "filesystem.readable"
    assert str(outside) in error.problem


def test_dot_dot_after_a_planted_symlink_cannot_mount_outside(
    backend: Backend, workspace: Path, outside: Path
) -> None:
    """`ws/sub/../../outside`: by the link (`sub -> a/b/c/d`) it stays in the workspace, as
    text (the way the mounts read it) it is the host's `outside`."""
    (workspace / "a" / "b" / "c" / "d").mkdir(parents=True)
    (workspace / "sub").symlink_to("a/b/c/d")
    entry = f"{workspace}/sub/../../{outside.name}"
    for key in ("readable", "writable"):
        _project(workspace, f'[filesystem]\n{key} = ["{entry}"]\n')
        loaded = load_policy(workspace=str(workspace), user_file=None)
        if is_successful(loaded):  # it must not be: show what the sandbox then reached
            policy = loaded.unwrap().policy
            finished = _run(backend, workspace, policy, f"cat {outside}/secret")
            assert SECRET.encode() not in finished.stdout
        assert isinstance(loaded, Failure), key
        assert loaded.failure().field == f"filesystem.{key}"


def test_project_files_are_not_followed_nor_waited_for(workspace: Path, outside: Path) -> None:
    """A symlinked project file (to a host file, `/dev/stdin`), a symlinked `.openagents`
    and a FIFO are refused without being read: read as the caller, their content would
    come back in error messages, and a FIFO would hang the caller."""
    toml = workspace / ".mechasandbox.toml"
    toml.symlink_to(outside / "secret")
    _refused_without_the_secret(workspace)
    toml.unlink()
    os.mkfifo(toml)
    _refused_without_the_secret(workspace)
    toml.unlink()
    (outside / "project.json").write_text(f'{{"sandbox": "{SECRET}"}}')
    (workspace / ".openagents").symlink_to(outside)
    _refused_without_the_secret(workspace)
    (workspace / ".openagents").unlink()
    (workspace / ".openagents").mkdir()
    (workspace / ".openagents" / "project.json").symlink_to(outside / "project.json")
    _refused_without_the_secret(workspace)


def _refused_without_the_secret(workspace: Path) -> None:
    loaded = load_policy(workspace=str(workspace), user_file=None)
    assert isinstance(loaded, Failure)
    assert SECRET not in loaded.failure().message


def test_a_readable_symlink_inside_the_workspace_mounts_nothing(
    backend: Backend, workspace: Path, outside: Path
) -> None:
    """Second line, below the configuration: even a user's own `readable` entry that is a
    symlink inside the workspace (swapped in after the check, say) exposes nothing."""
    (workspace / "ref").symlink_to(outside)
    (workspace / "wref").symlink_to(outside)
    policy = Policy(
        filesystem=FilesystemPolicy(readable=(f"{workspace}/ref",), writable=(f"{workspace}/wref",))
    )
    finished = _run(
        backend, workspace, policy, f"cat ref/secret; cat {outside}/secret; echo x > wref/new"
    )
    assert SECRET.encode() not in finished.stdout
    assert finished.exit_code != 0
    assert not (outside / "new").exists()


def test_a_project_protected_list_cannot_unprotect_git_hooks(
    backend: Backend, workspace: Path
) -> None:
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    for entries in ('["/"]', "[]", f'["{workspace}"]', '["/tmp"]'):
        _project(workspace, f"[filesystem]\nprotected = {entries}\n")
        loaded = load_policy(workspace=str(workspace), user_file=None)
        policy = loaded.unwrap().policy
        assert ".git/hooks" in policy.filesystem.protected
        result = _attempt(
            backend,
            workspace,
            policy,
            "echo 'touch planted' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit",
        )
        # Refused (the workspace itself cannot be protected) or run without the write.
        assert not is_successful(result) or result.unwrap().exit_code != 0, entries
        assert not (workspace / ".git" / "hooks" / "pre-commit").exists(), entries


def test_a_project_file_cannot_set_loader_variables(workspace: Path) -> None:
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "GCONV_PATH"):
        _project(workspace, f'[environment]\nset = {{ {name} = "{workspace}/evil.so" }}\n')
        loaded = load_policy(workspace=str(workspace), user_file=None)
        assert isinstance(loaded, Failure), name
        assert loaded.failure().field == "environment.set"
        assert name in loaded.failure().problem


def test_a_git_directory_holding_no_repository_cannot_be_made_one(
    runner: HelperProcessRunner, workspace: Path
) -> None:
    """An empty `.git` is what another process's run leaves as its placeholder while it
    goes (a non-git workspace): a run meanwhile must not fill it with a repository that
    would stay on the host once that placeholder is no longer removable."""
    backend = BubblewrapBackend(runner=runner)
    require_available(backend)
    script = "git init -q . ; echo 'ref: refs/heads/main' > .git/HEAD; mkdir .git/objects"
    # Empty; with an empty subdirectory; with what a crashed run's placeholder leaves.
    for leftover in (None, "sub", "commondir"):
        git = workspace / ".git"
        git.mkdir()
        if leftover == "sub":
            (git / "sub").mkdir()
        elif leftover == "commondir":
            (git / "commondir").write_text(".\n")
        before = sorted(p.name for p in git.iterdir())
        finished = _run(backend, workspace, Policy(), script + "; ls -A .git")
        assert b"HEAD" not in finished.stdout, leftover
        assert sorted(p.name for p in git.iterdir()) == before, leftover
        shutil.rmtree(git)


def test_a_project_chooses_the_backend_of_strict_runs_only(workspace: Path) -> None:
    """Under best-effort the chosen backend's gaps would be warnings, not refusals: a
    repository choosing a backend could then weaken the user's run."""
    from mechasandbox.config import structure_settings

    _project(workspace, '[backend]\nname = "docker"\n')
    strict = load_policy(workspace=str(workspace), user_file=None).unwrap()
    assert strict.backend == "docker"
    overrides = structure_settings({"enforcement": "best-effort"}, "<overrides>").unwrap()
    loose = load_policy(workspace=str(workspace), user_file=None, overrides=overrides).unwrap()
    assert loose.backend == "auto"
    assert any("strict runs only" in warning for warning in loose.warnings)
    chosen = structure_settings(
        {"enforcement": "best-effort", "backend": {"name": "docker"}}, "<overrides>"
    ).unwrap()
    assert (
        load_policy(workspace=str(workspace), user_file=None, overrides=chosen).unwrap().backend
        == "docker"
    )


def test_a_denied_file_with_another_name_is_refused(backend: Backend, workspace: Path) -> None:
    """The command links a denied path's name before the file exists; the host's in-place
    writes then fill both names, and the next run read the secret through its own."""
    (workspace / "conf").mkdir()
    denied = workspace / "conf" / "credentials"
    policy = Policy(
        filesystem=FilesystemPolicy(deny_read=(*FilesystemPolicy().deny_read, str(denied)))
    )
    planted = _attempt(backend, workspace, policy, "echo x > conf/t; ln conf/t conf/credentials")
    assert is_successful(planted), planted
    if backend.name == "landlock":  # its rules let no name be made at a denied path
        assert not denied.exists(), planted
        return
    assert denied.stat().st_nlink == 2, planted
    with denied.open("a") as credentials:  # the host writes in place, as editors may
        credentials.write(SECRET)
    result = _attempt(backend, workspace, policy, "cat conf/t")
    assert not is_successful(result), result
    assert isinstance(result.failure(), ConfigInvalid)
    assert "hard links" in result.failure().message
