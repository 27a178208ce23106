"""The workspace walk for nested repositories (`backends.git_walk`)."""

from __future__ import annotations

from pathlib import Path

from mechasandbox.backends.git_walk import NestedWalker


def _worktree(path: Path) -> Path:
    (path / ".git" / "hooks").mkdir(parents=True)
    return path


def _bare(path: Path) -> Path:
    for name in ("objects", "refs"):
        (path / name).mkdir(parents=True)
    (path / "HEAD").write_text("ref: refs/heads/main\n")
    return path


def test_finds_nested_worktrees_and_bare_repositories_but_not_the_workspace_itself(
    tmp_path: Path,
) -> None:
    _worktree(tmp_path)
    inner = _worktree(tmp_path / "a" / "b")
    bare = _bare(tmp_path / "c" / "store.git")
    walk = NestedWalker().walk(str(tmp_path))
    assert walk.worktrees == (str(inner),)
    assert walk.bare == (str(bare),)
    assert not walk.truncated


def test_skipped_directories_are_not_walked_into_and_the_rest_still_is(tmp_path: Path) -> None:
    """A session's placeholders are skipped (see `BwrapSessionSandbox.finished`); a
    repository beside one is found all the same, and one below a directory that is not
    skipped is found on the next walk without `skip`."""
    placeholder = tmp_path / ".vscode"
    hidden = _worktree(placeholder / "x")
    beside = _worktree(tmp_path / "src")
    walker = NestedWalker()
    walk = walker.walk(str(tmp_path), skip={str(placeholder)})
    assert walk.worktrees == (str(beside),)
    again = walker.walk(str(tmp_path))
    assert sorted(again.worktrees) == sorted([str(hidden), str(beside)])


def test_a_directory_listed_while_young_is_listed_again(tmp_path: Path) -> None:
    """Listings of directories changed within the settling time are not trusted: a
    repository made right after a walk is found by the next one."""
    walker = NestedWalker()
    (tmp_path / "sub").mkdir()
    assert walker.walk(str(tmp_path)).worktrees == ()
    made = _worktree(tmp_path / "sub" / "repo")
    assert walker.walk(str(tmp_path)).worktrees == (str(made),)


def test_the_walk_stops_at_its_bound_and_says_so(tmp_path: Path) -> None:
    for index in range(5):
        (tmp_path / f"d{index}").mkdir()
    walk = NestedWalker().walk(str(tmp_path), max_directories=3)
    assert walk.truncated
