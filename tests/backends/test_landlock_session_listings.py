"""A Landlock session keeps its carved directories' listings between commands
(`landlock_listings`): what the host changes in the workspace between two commands is seen
by the next one all the same, on a real session. Every stamp is trusted here at once (the
tests wait past a clock tick before each change), so that the kept listings are used."""

from __future__ import annotations

import os
import pathlib
import sys
import time
from collections.abc import Iterator

import pytest
from returns.result import Success

from mechasandbox.backends import stamps
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.sandbox import Sandbox
from mechasandbox.sandbox_session import SyncSession
from tests.conftest import require_available, require_session_agent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Landlock")


@pytest.fixture
def session(
    tmp_path: pathlib.Path, runner: HelperProcessRunner, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SyncSession]:
    require_session_agent()
    backend = LandlockBackend(runner=runner)
    require_available(backend)
    monkeypatch.setattr(stamps, "SETTLE_NS", 0)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "sub").mkdir()
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    sandbox = Sandbox(backend=backend, policy=policy)
    with sandbox.session_sync(workspace=str(tmp_path / "work")) as opened:
        assert isinstance(opened.opened, Success), opened.opened
        yield opened


def _writes(session: SyncSession, relative: str) -> bool:
    ran = session.run(["sh", "-c", f"echo x > {relative}"]).unwrap()
    return ran.exit_code == 0


def test_a_directory_the_host_adds_between_commands_is_granted(
    session: SyncSession, tmp_path: pathlib.Path
) -> None:
    assert _writes(session, "sub/a")
    time.sleep(0.05)
    (tmp_path / "work" / "added").mkdir()
    assert _writes(session, "added/b")
    assert (tmp_path / "work" / "added" / "b").read_text() == "x\n"


def test_a_directory_the_host_replaced_by_a_symlink_grants_nothing_beyond_it(
    session: SyncSession, tmp_path: pathlib.Path
) -> None:
    """`sub` was granted whole to the first command; once it is a symlink to a directory
    outside the workspace, a rule on it would grant its target: the next command's
    expansion sees the change and skips it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    assert _writes(session, "sub/a")
    time.sleep(0.05)
    (tmp_path / "work" / "sub" / "a").unlink()
    (tmp_path / "work" / "sub").rmdir()
    os.symlink(outside, tmp_path / "work" / "sub")
    assert not _writes(session, "sub/b")
    assert not (outside / "b").exists()
