"""What removing placeholders may remove: only what bwrap made and nobody touched since."""

from __future__ import annotations

import os
from pathlib import Path

from mechasandbox.backends.workspace.placeholders import (
    WorkspacePlaceholders,
    file_placeholder,
    is_placeholder,
    make_placeholders,
    remove_placeholders,
)


def test_empty_directories_go_deepest_first(tmp_path: Path) -> None:
    outer = tmp_path / ".git"
    (outer / "hooks").mkdir(parents=True)
    remove_placeholders([str(outer), str(outer / "hooks")])
    assert os.listdir(tmp_path) == []


def test_anything_with_content_or_of_another_kind_stays(tmp_path: Path) -> None:
    empty_file = tmp_path / ".env"  # someone's own, made after a crash left the journal
    empty_file.touch()
    filled = tmp_path / ".git"
    filled.mkdir()
    (filled / "HEAD").write_text("ref")
    link = tmp_path / ".idea"
    link.symlink_to(tmp_path / "elsewhere")
    remove_placeholders([str(empty_file), str(filled), str(link), str(tmp_path / "gone")])
    assert sorted(os.listdir(tmp_path)) == [".env", ".git", ".idea"]


def test_file_placeholders_hold_what_git_makes_of_a_missing_path(tmp_path: Path) -> None:
    """`.git/commondir` and `.git/config.worktree` are covered by files (a directory there
    would break git): "." (no redirection) and an empty configuration."""
    git = tmp_path / ".git"
    git.mkdir()
    paths = [str(git / "commondir"), str(git / "config.worktree"), str(git / "modules")]
    make_placeholders(paths)
    assert (git / "commondir").read_bytes() == b".\n"
    assert (git / "config.worktree").read_bytes() == b""
    assert (git / "modules").is_dir()
    assert all(is_placeholder(path) for path in paths)
    remove_placeholders(paths)
    assert os.listdir(git) == []


def test_a_file_placeholder_someone_changed_or_made_stays(tmp_path: Path) -> None:
    """Only a file with exactly the placeholder's content is ours to remove: a `commondir`
    of a linked worktree, or one a host process wrote, stays; so does a directory there."""
    worktree, changed, other = (tmp_path / name / ".git" for name in ("wt", "changed", "other"))
    for git in (worktree, changed, other):
        git.mkdir(parents=True)
    (worktree / "commondir").write_text("../..\n")
    make_placeholders([str(changed / "commondir")])
    (changed / "commondir").write_text(".\nmore\n")
    (other / "commondir").mkdir()
    (other / "config.worktree").symlink_to(tmp_path / "elsewhere")
    existing = [worktree / "commondir", changed / "commondir", other / "commondir"]
    remove_placeholders([str(path) for path in [*existing, other / "config.worktree"]])
    assert all(path.exists() for path in existing)
    assert (other / "config.worktree").is_symlink()
    assert not any(is_placeholder(str(path)) for path in [worktree / "commondir", *existing[1:]])


def test_a_file_placeholder_is_never_made_over_what_is_there(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    git.mkdir()
    (git / "commondir").write_text("../..\n")
    make_placeholders([str(git / "commondir")])
    assert (git / "commondir").read_text() == "../..\n"


def test_a_runs_own_file_placeholders_are_files_with_their_content(tmp_path: Path) -> None:
    """An include target the run found (`files`) is covered by a file holding its content,
    and removed only with that content; without `files` it is a directory placeholder."""
    git = tmp_path / ".git"
    git.mkdir()
    included = str(git / "extra.cfg")
    files = {included: b""}
    assert file_placeholder(included) is None
    make_placeholders([included], files)
    assert (git / "extra.cfg").read_bytes() == b""
    assert is_placeholder(included, files)
    assert not is_placeholder(included)
    remove_placeholders([included])
    assert (git / "extra.cfg").exists()  # taken for a directory: left as it is
    remove_placeholders([included], files)
    assert os.listdir(git) == []


def test_the_state_removes_the_file_placeholders_of_its_runs(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / ".git").mkdir(parents=True)
    included = str(workspace / ".git" / "extra.cfg")
    placeholders = WorkspacePlaceholders(state_directory=tmp_path / "state")
    try:
        assert placeholders.enter(str(workspace))
        placeholders.created(str(workspace), [included], ((included, b""),))
        placeholders.make(str(workspace), [included])
        assert os.path.isfile(included)
        placeholders.leave(str(workspace))
        assert not os.path.exists(included)
    finally:
        placeholders.close()


def test_the_file_placeholders_a_dead_host_made_are_removed_by_the_next(tmp_path: Path) -> None:
    """The journal keeps a run's file placeholder with its content, so that the next host
    removes it (untouched only) after a crash, whatever its own runs find."""
    workspace = tmp_path / "ws"
    (workspace / ".git").mkdir(parents=True)
    included, changed = (str(workspace / ".git" / name) for name in ("extra.cfg", "b.cfg"))
    state = tmp_path / "state"
    crashed = WorkspacePlaceholders(state_directory=state)
    assert crashed.enter(str(workspace))
    crashed.created(str(workspace), [included, changed], ((included, b""), (changed, b"")))
    crashed.make(str(workspace), [included, changed])
    Path(changed).write_text("[user]\n")  # someone's since: stays
    (journal,) = state.glob("*.paths")
    journal.rename(state / "999999999-1.paths")  # as if its process had died
    crashed._journal._forget()
    crashed._workspace_locks().close()  # its lock on the workspace went with it
    nxt = WorkspacePlaceholders(state_directory=state)
    try:
        assert nxt.enter(str(workspace))  # sweeps the dead journals
        nxt.leave(str(workspace))
        assert os.listdir(workspace / ".git") == ["b.cfg"]
    finally:
        nxt.close()
        crashed.close()
