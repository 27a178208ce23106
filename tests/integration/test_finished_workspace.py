"""A finished run leaves its workspace exactly as its command left it, whatever runs in the
workspaces that share its lock file (`workspace_locks`: workspaces hash into few files).
Real bubblewrap runs, in this process and in another one."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from mechasandbox.backends.workspace.workspace_locks import bucket_of
from mechasandbox.containers import Application
from tests.conftest import require_available

BWRAP_RUN = (sys.executable, "-m", "mechasandbox", "run", "--backend", "bubblewrap")


def same_bucket(parent: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Two fresh workspaces whose locks live in one file."""
    seen: dict[str, pathlib.Path] = {}
    for index in range(10_000):
        candidate = parent / f"ws{index}"
        bucket = bucket_of(str(candidate))
        if bucket in seen:
            first = seen[bucket]
            first.mkdir()
            candidate.mkdir()
            return first, candidate
        seen[bucket] = candidate
    raise AssertionError("no two names of one bucket")


@pytest.fixture
def app() -> Iterator[Application]:
    built = Application()
    built.config.backend.from_value("bubblewrap")
    require_available(built.backends.named("bubblewrap"))
    yield built
    built.shutdown_resources()


def started(workspace: pathlib.Path) -> None:
    deadline = time.monotonic() + 30
    while not (workspace / "out" / "started").exists():
        assert time.monotonic() < deadline, "the command in B did not start"
        time.sleep(0.02)


def test_a_run_of_this_process_in_another_workspace_of_the_bucket(
    app: Application, tmp_path: pathlib.Path
) -> None:
    a, b = same_bucket(tmp_path)
    (b / "out").mkdir()
    sandbox = app.services.sandbox()
    long = threading.Thread(
        target=sandbox.run_sync,
        args=(["sh", "-c", "touch out/started; sleep 5"],),
        kwargs={"workspace": str(b)},
    )
    long.start()
    try:
        started(b)
        assert (b / ".envrc").is_dir()  # B's placeholders stand
        result = sandbox.run_sync(["true"], workspace=str(a))
        assert result.unwrap().exit_code == 0
        assert list(a.iterdir()) == [], "A's placeholders linger after its run"
    finally:
        long.join()
    assert sorted(p.name for p in b.iterdir()) == ["out"]


def test_a_run_of_another_process_in_another_workspace_of_the_bucket(
    app: Application, tmp_path: pathlib.Path
) -> None:
    a, b = same_bucket(tmp_path)
    (b / "out").mkdir()
    other = subprocess.Popen(
        [*BWRAP_RUN, "--workspace", str(b), "--", "sh", "-c", "touch out/started; sleep 5"],
    )
    try:
        started(b)
        result = app.services.sandbox().run_sync(["true"], workspace=str(a))
        assert result.unwrap().exit_code == 0
        assert list(a.iterdir()) == [], "A's placeholders linger after its run"
    finally:
        other.wait(timeout=60)
    assert other.returncode == 0
    assert sorted(p.name for p in b.iterdir()) == ["out"]


def test_a_run_in_the_same_workspace_still_keeps_them(
    app: Application, tmp_path: pathlib.Path
) -> None:
    """What the lock is for: another process's sandbox in the same workspace stands on the
    placeholders; they go when the last run there ends."""
    workspace = tmp_path / "ws"
    (workspace / "out").mkdir(parents=True)
    other = subprocess.Popen(
        [*BWRAP_RUN, "--workspace", str(workspace), "--", "sh", "-c", "touch out/started; sleep 3"],
    )
    try:
        started(workspace)
        result = app.services.sandbox().run_sync(["true"], workspace=str(workspace))
        assert result.unwrap().exit_code == 0
        assert (workspace / ".envrc").is_dir()  # the other process's sandbox stands on it
    finally:
        other.wait(timeout=60)
    assert sorted(p.name for p in workspace.iterdir()) == ["out"]
