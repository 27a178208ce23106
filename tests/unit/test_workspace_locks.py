"""Placeholders of runs in one workspace go only when no process runs there any more.

Two `WorkspaceLocks` open the lock file separately, so their locks (open file description
locks, or `flock`) conflict as those of two processes do; the cross-process attack itself is
in test_bubblewrap_security.py."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from mechasandbox.backends.workspace import workspace_locks
from mechasandbox.backends.workspace.placeholders import remove_placeholders
from mechasandbox.backends.workspace.workspace_locks import (
    WorkspaceLocks,
    bucket_of,
    byte_of,
    try_lock,
)


def _remove(_workspace: str, paths: list[str]) -> None:
    remove_placeholders(paths)


def _placeholder(workspace: Path, name: str) -> str:
    (workspace / name).mkdir()
    return str(workspace / name)


def _lock_exclusive(fd: int, workspace: Path) -> bool:
    """Lock `workspace` in its bucket's file `fd` as another process would, without
    waiting."""
    return try_lock(fd, byte_of(str(workspace)), fcntl.F_WRLCK) is True


def test_the_last_process_to_leave_removes_what_the_others_made(tmp_path: Path) -> None:
    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    first, second = WorkspaceLocks(state), WorkspaceLocks(state)
    first.enter(str(workspace))
    envrc = _placeholder(workspace, ".envrc")
    second.enter(str(workspace))  # its sandbox covers the first one's .envrc in turn
    first.leave(str(workspace), [envrc], _remove)
    assert os.path.isdir(envrc), "removed under a run of another process"
    second.leave(str(workspace), [], _remove)
    assert not os.path.exists(envrc)
    assert (state / f"{bucket_of(str(workspace))}.pending").stat().st_size == 0


def test_alone_in_the_workspace_a_process_removes_its_own_at_once(tmp_path: Path) -> None:
    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    locks = WorkspaceLocks(state)
    locks.enter(str(workspace))
    env = _placeholder(workspace, ".env")
    locks.leave(str(workspace), [env], _remove)
    assert not os.path.exists(env)


def test_a_dead_process_s_placeholders_wait_for_the_runs_still_there(tmp_path: Path) -> None:
    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    running, sweeper = WorkspaceLocks(state), WorkspaceLocks(state)
    running.enter(str(workspace))
    git = _placeholder(workspace, ".git")
    (workspace / ".vscode").mkdir()
    (workspace / ".vscode" / "tasks.json").write_text("{}")  # content: never removed
    sweeper.hand_over(
        [(str(workspace), git), (str(workspace), str(workspace / ".vscode"))], _remove
    )
    assert os.path.isdir(git)
    running.leave(str(workspace), [], _remove)
    assert sorted(os.listdir(workspace)) == [".vscode"]


def test_without_a_state_directory_placeholders_go_at_once(tmp_path: Path) -> None:
    locks = WorkspaceLocks(None)
    locks.enter(str(tmp_path))
    idea = _placeholder(tmp_path, ".idea")
    locks.leave(str(tmp_path), [idea], _remove)
    assert not os.path.exists(idea)


def test_a_process_forked_mid_run_coordinates_as_a_process_of_its_own(tmp_path: Path) -> None:
    """A child forked while the parent runs in the workspace shares the parent's lock
    descriptor and its count of runs: it must neither release the parent's lock nor count
    the parent's run as its own (its placeholders would never go)."""
    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    parent = WorkspaceLocks(state)
    parent.enter(str(workspace))
    idea = str(workspace / ".idea")
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            parent.enter(str(workspace))  # the child's own run
            os.mkdir(idea)
            parent.leave(str(workspace), [idea], _remove)
            parent.close()
            status = 0 if os.path.isdir(idea) else 1  # the parent still runs: pending
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "removed while the parent runs"
    other = WorkspaceLocks(state)
    other.enter(str(workspace))
    vscode = _placeholder(workspace, ".vscode")
    other.leave(str(workspace), [vscode], _remove)
    assert os.path.isdir(vscode), "the child released the parent's lock"
    parent.leave(str(workspace), [], _remove)
    assert os.listdir(workspace) == []


def test_a_child_forked_mid_run_does_not_keep_the_workspace_locked(tmp_path: Path) -> None:
    """The child's copy of the lock descriptor shares the parent's lock: the parent's end
    must unlock it, not just close its own copy, or the child would hold it meanwhile."""
    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    parent = WorkspaceLocks(state)
    parent.enter(str(workspace))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # holds its inherited copy until the parent is done checking
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        parent.leave(str(workspace), [], _remove)
        lock = os.open(state / f"{bucket_of(str(workspace))}.lock", os.O_RDWR)
        try:  # not blocking: a regression must fail here, not hang
            assert _lock_exclusive(lock, workspace), "locked through the child's copy"
        finally:
            os.close(lock)
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)


def test_a_run_does_not_start_while_another_process_holds_the_lock_too_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal takes milliseconds; a lock held exclusive for longer (a stuck or foreign
    holder) makes `enter` give up rather than start a run whose covers could go."""
    monkeypatch.setattr(workspace_locks, "ENTER_WAIT_S", 0.2)
    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    locks = WorkspaceLocks(state)
    assert locks.enter(str(workspace))  # makes the lock file
    locks.leave(str(workspace), [], _remove)
    holder = os.open(state / f"{bucket_of(str(workspace))}.lock", os.O_RDWR)
    try:
        assert _lock_exclusive(holder, workspace)
        assert not locks.enter(str(workspace))
    finally:
        os.close(holder)
    assert locks.enter(str(workspace))  # free again
    locks.leave(str(workspace), [], _remove)


def test_a_kept_lock_file_that_was_replaced_is_opened_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file of a bucket with no run is kept open for the next run there; if it was
    removed and made again meanwhile (a cleaned state directory), the next run must lock
    the file the other processes lock, not the one it kept."""
    monkeypatch.setattr(workspace_locks, "ENTER_WAIT_S", 0.2)
    state, workspace = tmp_path / "state", tmp_path / "ws"
    workspace.mkdir()
    locks = WorkspaceLocks(state)
    assert locks.enter(str(workspace))
    locks.leave(str(workspace), [], _remove)  # idle: its descriptor kept
    path = state / f"{bucket_of(str(workspace))}.lock"
    path.unlink()
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # another process's new file
    try:
        assert _lock_exclusive(holder, workspace)
        assert not locks.enter(str(workspace))  # it waited on the new file, and gave up
    finally:
        os.close(holder)
    assert locks.enter(str(workspace))
    locks.leave(str(workspace), [], _remove)
    locks.close()


def test_few_lock_files_of_idle_buckets_stay_open(tmp_path: Path) -> None:
    locks = WorkspaceLocks(tmp_path / "state")
    workspaces = []
    for index in range(200):  # enough to reach more buckets than are kept
        workspace = tmp_path / f"ws{index}"
        workspace.mkdir()
        workspaces.append(str(workspace))
        assert locks.enter(str(workspace))
        locks.leave(str(workspace), [], _remove)
    assert len({bucket_of(w) for w in workspaces}) > workspace_locks._IDLE_KEPT
    assert len(locks._fds) == workspace_locks._IDLE_KEPT
    locks.close()


def _same_bucket(parent: Path) -> tuple[Path, Path]:
    seen: dict[str, Path] = {}
    for index in range(10_000):
        candidate = parent / f"ws{index}"
        if bucket_of(str(candidate)) in seen:
            first = seen[bucket_of(str(candidate))]
            first.mkdir()
            candidate.mkdir()
            return first, candidate
        seen[bucket_of(str(candidate))] = candidate
    raise AssertionError("no two names of one bucket")


needs_byte_locks = pytest.mark.skipif(
    byte_of("/") is None, reason="without byte locks, a bucket's workspaces wait for each other"
)


@needs_byte_locks
@pytest.mark.parametrize("processes", ["one process", "two processes"])
def test_a_run_elsewhere_in_the_bucket_does_not_hold_placeholders_back(
    tmp_path: Path, processes: str
) -> None:
    state = tmp_path / "state"
    a, b = _same_bucket(tmp_path)
    first = WorkspaceLocks(state)
    second = first if processes == "one process" else WorkspaceLocks(state)
    assert second.enter(str(b))
    assert first.enter(str(a))
    envrc = _placeholder(a, ".envrc")
    first.leave(str(a), [envrc], _remove)
    assert not os.path.exists(envrc), "held back by a run in another workspace"
    assert first.enter(str(a))  # and a run there starts at once
    first.leave(str(a), [], _remove)
    second.leave(str(b), [], _remove)


@needs_byte_locks
def test_a_drain_leaves_pending_what_still_has_a_run(tmp_path: Path) -> None:
    """Pending placeholders of a workspace go with its last run, not with the end of a run
    in another workspace of the bucket."""
    state = tmp_path / "state"
    a, b = _same_bucket(tmp_path)
    left, staying, elsewhere = WorkspaceLocks(state), WorkspaceLocks(state), WorkspaceLocks(state)
    left.enter(str(a))
    staying.enter(str(a))
    git = _placeholder(a, ".git")
    left.leave(str(a), [git], _remove)  # pending: `staying` still runs in A
    elsewhere.enter(str(b))
    idea = _placeholder(b, ".idea")
    elsewhere.leave(str(b), [idea], _remove)  # drains the bucket's pending list
    assert not os.path.exists(idea)
    assert os.path.isdir(git), "removed under a run in its workspace"
    staying.leave(str(a), [], _remove)
    assert not os.path.exists(git)
    assert (state / f"{bucket_of(str(a))}.pending").stat().st_size == 0
