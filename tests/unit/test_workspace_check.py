"""Which directories are never a workspace (every backend checks with `check_workspace`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from returns.pipeline import is_successful

from mechasandbox.backends.base import check_workspace, forbidden_workspace
from mechasandbox.domain import RunRequest

HOMES = ("/home/dev",)


@pytest.mark.parametrize(
    "path",
    ["/", "/etc", "/etc/systemd", "/usr", "/usr/local", "/var", "/tmp", "/home", "/root",
     "/proc/self", "/sys/kernel", "/dev/shm", "/run/user", "/boot", "/home/dev",
     "/Users", "/private/etc/ssh", "/System/Library", "/usr/local/lib", "/lib/systemd/system",
     "/usr/lib/python3/dist-packages", "/var/lib/dpkg/info", "/var/lib/docker", "/var/tmp",
     "/opt", "/opt/homebrew/lib", "/private/var/db", "/home/dev/.config", "/home/dev/.ssh/x",
     "/home/dev/.local/bin"],
)  # fmt: skip
def test_system_directories_and_the_home_are_refused(path: str) -> None:
    assert forbidden_workspace(path, HOMES) is not None


@pytest.mark.parametrize(
    "path",
    [
        "/home/dev/project",
        "/home/dev/project/.hidden-subdir",
        "/tmp/work",
        "/srv/repos/app",
        "/opt/src/app",
        "/usr/src/x",
        "/usr/local/src/app",
        "/var/tmp/build",
        "/private/var/folders/xy/T/pytest-1",
    ],
)
def test_project_directories_are_accepted(path: str) -> None:
    assert forbidden_workspace(path, HOMES) is None


def test_the_callers_real_home_is_refused_through_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "home-link"
    link.symlink_to(os.path.expanduser("~"))
    for workspace in (str(link), os.path.expanduser("~"), "/"):
        result = check_workspace(RunRequest(argv=("true",), workspace=workspace))
        assert not is_successful(result), workspace
        assert result.failure().field == "workspace"
        assert "refused" in result.failure().problem


def test_an_ordinary_directory_is_its_real_path(tmp_path: Path) -> None:
    result = check_workspace(RunRequest(argv=("true",), workspace=str(tmp_path)))
    assert result.unwrap() == os.path.realpath(tmp_path)


def test_a_bind_mount_of_the_home_is_the_home(tmp_path: Path) -> None:
    """Another path, the same directory: refused by device and inode (a bind mount needs
    privileges; a hard-linked directory cannot exist, so the test binds when it can)."""
    import subprocess

    target = tmp_path / "bound"
    target.mkdir()
    home = os.path.expanduser("~")
    mounted = subprocess.run(
        ["mount", "--bind", home, str(target)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        result = check_workspace(RunRequest(argv=("true",), workspace=str(target)))
        assert not is_successful(result)
        assert "another name" in result.failure().problem
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_another_users_home_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from mechasandbox.backends import base

    monkeypatch.setattr(base, "_every_home", lambda: frozenset({"/home/other"}))
    assert forbidden_workspace("/home/other", HOMES) is not None
    assert forbidden_workspace("/home/other/.local", HOMES) is not None
    assert forbidden_workspace("/home/other/project", HOMES) is None
