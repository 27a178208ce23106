"""The identity checks behind bubblewrap's guard watch, on real files (the sandbox side is in
test_bubblewrap_security.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mechasandbox.backends import stamps
from mechasandbox.backends.workspace import guards as guards_module
from mechasandbox.backends.workspace.guards import GuardSet


def _replace(path: Path, text: str) -> None:
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.rename(fresh, path)


def test_a_path_replaced_by_a_rename_is_lost_and_one_rewritten_in_place_is_not(
    tmp_path: Path,
) -> None:
    config, netrc = tmp_path / "config", tmp_path / "netrc"
    config.write_text("a")
    netrc.write_text("b")
    guards = GuardSet(((str(config), "write"), (str(netrc), "read")))
    try:
        config.write_text("in place")  # the same entry: the mount on it holds
        assert guards.warnings() == ()
        _replace(netrc, "new")
        (lost,) = guards.warnings()
        assert lost.startswith(f"{netrc} was replaced on the host") and "mask" in lost
        netrc.unlink()
        assert guards.warnings() == (lost,)  # gone counts too
    finally:
        guards.close()


def test_a_directory_made_anew_is_lost_even_where_its_inode_number_comes_back(
    tmp_path: Path,
) -> None:
    """ext4 hands a freed inode number to the next directory made; the set holds the
    original open, so the new one cannot get its number."""
    vscode = tmp_path / ".vscode"
    vscode.mkdir()
    guards = GuardSet(((str(vscode), "write"),))
    try:
        vscode.rmdir()
        vscode.mkdir()
        assert guards.lost() == ((str(vscode), "write"),)
    finally:
        guards.close()


def test_the_watcher_gives_a_reason_once_a_guard_is_lost(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("a")
    assert GuardSet(()).watcher() is None  # nothing to watch: no watcher
    guards = GuardSet(((str(config), "write"),))
    try:
        check = guards.watcher()
        assert check is not None and check() is None
        _replace(config, "new")
        reason = check()
        assert reason is not None and reason.startswith(f"{config} was replaced on the host")
        assert "read-only cover" in reason
    finally:
        guards.close()


def test_a_guard_missing_from_the_start_is_lost_once_it_appears(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    guards = GuardSet(((str(env), "write"),))
    try:
        assert guards.lost() == ()
        env.write_text("x")
        assert guards.lost() == ((str(env), "write"),)
    finally:
        guards.close()


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every stamp trusted at once (each test waits past a clock tick before a change);
    the paths looked at one by one."""
    monkeypatch.setattr(stamps, "SETTLE_NS", 0)
    seen: list[str] = []
    identity = guards_module._identity

    def counting(path: str) -> tuple[int, int] | None:
        seen.append(path)
        return identity(path)

    monkeypatch.setattr(guards_module, "_identity", counting)
    return seen


def test_an_unchanged_directory_is_one_look_for_all_its_guards(
    tmp_path: Path, looks: list[str]
) -> None:
    (tmp_path / "hooks").mkdir()
    (tmp_path / "config").write_text("a")
    guards = GuardSet(((str(tmp_path / "config"), "write"), (str(tmp_path / "hooks"), "write")))
    try:
        assert guards.lost() == ()
        assert len(looks) == 2
        assert guards.lost() == ()
        assert len(looks) == 2  # the directory's stamp, nothing else
        (tmp_path / "config").write_text("rewritten in place")  # the same entry
        assert guards.lost() == ()
    finally:
        guards.close()


def test_a_replacement_after_a_trusted_look_is_lost(tmp_path: Path, looks: list[str]) -> None:
    config, hooks = tmp_path / "config", tmp_path / "hooks"
    config.write_text("a")
    hooks.mkdir()
    guards = GuardSet(((str(config), "write"), (str(hooks), "write")))
    try:
        assert guards.lost() == ()
        time.sleep(0.05)
        _replace(config, "new")
        assert guards.lost() == ((str(config), "write"),)
        assert guards.lost() == ((str(config), "write"),)  # and stays lost
        time.sleep(0.05)
        hooks.rmdir()
        hooks.mkdir()
        assert guards.lost() == ((str(config), "write"), (str(hooks), "write"))
    finally:
        guards.close()


def test_a_directory_replaced_above_the_guards_is_seen(tmp_path: Path, looks: list[str]) -> None:
    """The directory itself made anew (its stamp's inode changes): every guard in it is
    looked at again."""
    git = tmp_path / ".git"
    git.mkdir()
    (git / "config").write_text("a")
    guards = GuardSet(((str(git / "config"), "write"),))
    try:
        assert guards.lost() == ()
        time.sleep(0.05)
        os.rename(git, tmp_path / "old")
        git.mkdir()
        (git / "config").write_text("planted")
        assert guards.lost() == ((str(git / "config"), "write"),)
    finally:
        guards.close()


def test_a_young_directory_is_looked_at_path_by_path(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("a")
    guards = GuardSet(((str(config), "write"),))
    try:
        assert guards.lost() == ()
        _replace(config, "new")  # within the same clock tick, perhaps: still seen
        assert guards.lost() == ((str(config), "write"),)
    finally:
        guards.close()
