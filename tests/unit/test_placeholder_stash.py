"""The stash that takes bubblewrap's placeholders out of a workspace with a rename: the
workspace is as it was at once, nothing with content is taken, and nothing is lost."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest

from mechasandbox.backends.workspace.placeholder_stash import PlaceholderStash, _remove_batches
from mechasandbox.backends.workspace.placeholders import WorkspacePlaceholders, _journal_entry


def _workspace(tmp_path: Path, *names: str) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    for name in names:
        (workspace / name).mkdir()
    return workspace


def test_empty_placeholders_leave_the_workspace_at_once_and_the_stash_at_close(
    tmp_path: Path,
) -> None:
    workspace = _workspace(tmp_path, ".envrc", ".vscode")
    stash = PlaceholderStash(tmp_path / "1-2.stash")
    left = stash.retire(str(workspace), [str(workspace / ".envrc"), str(workspace / ".vscode")])
    assert left == []
    assert os.listdir(workspace) == []
    stash.close()
    assert not stash.path.exists()


def test_one_with_content_stays_in_the_workspace(tmp_path: Path) -> None:
    workspace = _workspace(tmp_path, ".vscode")
    (workspace / ".vscode" / "settings.json").write_text("{}")  # a host tool, mid-run
    stash = PlaceholderStash(tmp_path / "1-2.stash")
    assert stash.retire(str(workspace), [str(workspace / ".vscode")]) == [
        str(workspace / ".vscode")
    ]
    assert (workspace / ".vscode" / "settings.json").read_text() == "{}"
    stash.close()


def test_one_written_into_after_the_rename_goes_back_where_it_was(tmp_path: Path) -> None:
    workspace = _workspace(tmp_path)
    stash = PlaceholderStash(tmp_path / "1-2.stash")
    stash.path.mkdir()
    stashed = stash.path / "0"
    stashed.mkdir()
    (stashed / "settings.json").write_text("{}")  # written between the check and the rename
    stash._queue.put([(str(stashed), str(workspace / ".vscode"))])
    stash._queue.put(None)
    _remove_batches(stash._queue, stash._closing, stash._lock, stash._pool)  # run here
    assert (workspace / ".vscode" / "settings.json").read_text() == "{}"


def test_another_file_system_is_left_to_the_caller(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) to put the workspace on")
    workspace = Path(os.path.realpath(os.path.join(shm, f"ws-{os.getpid()}")))
    workspace.mkdir()
    try:
        (workspace / ".envrc").mkdir()
        stash = PlaceholderStash(tmp_path / "1-2.stash")
        placeholder = str(workspace / ".envrc")
        assert stash.retire(str(workspace), [placeholder]) == [placeholder]
        assert os.path.isdir(placeholder)
        stash.close()
    finally:
        os.rmdir(workspace / ".envrc")
        os.rmdir(workspace)


def test_the_stash_of_a_dead_host_is_removed_by_the_next(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dead = state / "999999999-1.stash"  # no such process
    (dead / "0").mkdir(parents=True)
    kept = state / "999999999-1.stash" / "1"
    kept.mkdir()
    (kept / "someone's").write_text("x")  # content: stays
    placeholders = WorkspacePlaceholders(state_directory=state)
    placeholders.enter(str(tmp_path))  # sweeps the dead ones
    placeholders.leave(str(tmp_path))
    assert sorted(os.listdir(dead)) == ["1"]


def test_a_forked_host_keeps_a_journal_of_its_own(tmp_path: Path) -> None:
    """A process forked from a host that made placeholders journals its own in a file of its
    own, and does not remove its parent's at exit (the parent may still die mid-run)."""
    state = tmp_path / "state"
    placeholders = WorkspacePlaceholders(state_directory=state)
    workspace = str(tmp_path)
    placeholders.enter(workspace)
    placeholders.created(workspace, [str(tmp_path / ".envrc")])
    (parent_journal,) = [p for p in state.iterdir() if p.suffix == ".paths"]
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            placeholders.created(workspace, [str(tmp_path / ".vscode")])
            placeholders._journal.close()  # what its exit does
            status = 0 if parent_journal.exists() else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child removed its parent's journal"
    lines = parent_journal.read_text().splitlines()
    assert [_journal_entry(line) for line in lines] == [(workspace, str(tmp_path / ".envrc"), None)]
    placeholders.leave(workspace)
    placeholders._journal.close()


def _pooled(stash: PlaceholderStash, count: int) -> None:
    """Wait until the background worker has pooled `count` directories."""
    deadline = time.monotonic() + 5
    while len(stash._pool) < count:
        assert time.monotonic() < deadline, "the retired placeholders were not pooled"
        time.sleep(0.005)


def test_retired_placeholders_are_reused_for_the_next_runs(tmp_path: Path) -> None:
    """The next run's placeholders are the directories the last one retired, renamed back:
    same inodes, nothing made, nothing removed."""
    workspace = _workspace(tmp_path, ".envrc", ".vscode")
    paths = [str(workspace / ".envrc"), str(workspace / ".vscode")]
    inodes = {os.stat(p).st_ino for p in paths}
    stash = PlaceholderStash(tmp_path / "1-2.stash")
    assert stash.retire(str(workspace), paths) == []
    _pooled(stash, 2)
    wanted = [str(workspace / ".env"), str(workspace / ".idea"), str(workspace / ".git")]
    left = stash.place(str(workspace), wanted)
    assert len(left) == 1  # two pooled, three wanted: one left for mkdir
    placed = [p for p in wanted if p not in left]
    assert {os.stat(p).st_ino for p in placed} == inodes
    assert all(os.listdir(p) == [] for p in placed)
    assert not os.path.exists(left[0])
    stash.close()


def test_a_pooled_directory_never_replaces_what_is_there(tmp_path: Path) -> None:
    """One at a path that exists (another run's placeholder, or the user's own empty
    directory made meanwhile) is left as it is, as `mkdir` would leave it, and stays
    pooled."""
    workspace = _workspace(tmp_path, ".envrc")
    stash = PlaceholderStash(tmp_path / "1-2.stash")
    stash.retire(str(workspace), [str(workspace / ".envrc")])
    _pooled(stash, 1)
    users = workspace / ".vscode"
    users.mkdir()
    marker = os.stat(users).st_ino
    assert stash.place(str(workspace), [str(users)]) == []
    assert os.stat(users).st_ino == marker
    assert len(stash._pool) == 1
    stash.close()


def test_a_pooled_directory_written_into_is_not_placed(tmp_path: Path) -> None:
    """Something in a pooled directory (it was written into in the stash) must never reach
    a workspace: it is not used, and the path is left for mkdir."""
    workspace = _workspace(tmp_path, ".git")
    stash = PlaceholderStash(tmp_path / "1-2.stash")
    stash.retire(str(workspace), [str(workspace / ".git")])
    _pooled(stash, 1)
    (Path(stash._pool[0]) / "hooks").mkdir()
    target = str(workspace / ".git")
    assert stash.place(str(workspace), [target]) == [target]
    assert not os.path.exists(target)
    stash.close()


def _used(placeholders: WorkspacePlaceholders, tmp_path: Path) -> str:
    """One run's worth of use: a journal, a stash holding a retired placeholder, a lock file."""
    workspace = str(_workspace(tmp_path))
    path = os.path.join(workspace, ".envrc")
    assert placeholders.enter(workspace)
    placeholders.created(workspace, [path])
    placeholders.make(workspace, [path])
    placeholders.leave(workspace)
    return workspace


def _kinds(state: Path) -> list[str]:
    return sorted(p.suffix for p in state.iterdir() if p.name != "workspaces")


def test_close_releases_the_journal_the_stash_and_the_lock_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    placeholders = WorkspacePlaceholders(state_directory=state)
    workspace = _used(placeholders, tmp_path)
    assert os.listdir(workspace) == []
    assert _kinds(state) == [".paths", ".stash"]
    locks = placeholders._workspace_locks()
    assert locks._fds
    placeholders.close()
    placeholders.close()  # idempotent
    assert _kinds(state) == []
    assert locks._fds == {}


def test_a_state_nobody_closed_is_released_when_it_goes(tmp_path: Path) -> None:
    """What a backend built directly (and dropped) held goes with it, not at exit only."""
    state = tmp_path / "state"
    placeholders = WorkspacePlaceholders(state_directory=state)
    _used(placeholders, tmp_path)
    assert _kinds(state) == [".paths", ".stash"]
    del placeholders
    gc.collect()
    assert _kinds(state) == []


def test_states_of_one_process_keep_journals_of_their_own(tmp_path: Path) -> None:
    """Two backends of one process, each with its own state: closing one leaves the other's
    journal (its placeholders may still stand), and a sweep takes neither for a dead one's."""
    state = tmp_path / "state"
    first = WorkspacePlaceholders(state_directory=state)
    second = WorkspacePlaceholders(state_directory=state)
    for name, placeholders in (("a", first), ("b", second)):
        workspace = tmp_path / name
        workspace.mkdir()
        assert placeholders.enter(str(workspace))
        placeholders.created(str(workspace), [str(workspace / ".envrc")])
    journals = [p for p in state.iterdir() if p.suffix == ".paths"]
    assert len(journals) == 2
    first.leave(str(tmp_path / "a"))
    first.close()
    assert [p for p in state.iterdir() if p.suffix == ".paths"] != []
    third = WorkspacePlaceholders(state_directory=state)
    assert third.enter(str(tmp_path / "c"))  # sweeps: this process is alive
    assert [p for p in state.iterdir() if p.suffix == ".paths"] == [
        p for p in journals if p.exists()
    ]
    third.leave(str(tmp_path / "c"))
    second.leave(str(tmp_path / "b"))
    second.close()
    third.close()
    assert _kinds(state) == []
