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
     "/Users", "/private/etc/ssh", "/System/Library"],
)  # fmt: skip
def test_system_directories_and_the_home_are_refused(path: str) -> None:
    assert forbidden_workspace(path, HOMES) is not None


@pytest.mark.parametrize(
    "path", ["/home/dev/project", "/tmp/work", "/srv/repos/app", "/opt/src/app", "/usr/src/x"]
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
