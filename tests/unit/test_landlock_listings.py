"""The carved directories' listings a Landlock session keeps between commands
(`landlock_listings`): used again only while the directory's stamp is unchanged and was old
enough to be trusted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mechasandbox.backends import stamps
from mechasandbox.backends.linux import landlock_listings
from mechasandbox.backends.linux.landlock_listings import (
    RememberedExpansion,
    RememberedListings,
)
from mechasandbox.backends.linux.landlock_rules import expand_rules, list_directory

READ, WRITE = 13, 30655


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories actually listed (not answered from what was kept)."""
    seen: list[str] = []

    def counting(path: str) -> tuple[tuple[str, bool], ...]:
        seen.append(path)
        return list_directory(path)

    monkeypatch.setattr(landlock_listings, "list_directory", counting)
    return seen


def _old_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every stamp trusted at once; the tests wait past a clock tick before each change.
    monkeypatch.setattr(stamps, "SETTLE_NS", 0)


def test_an_unchanged_directory_is_listed_once(
    tmp_path: Path, listed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_enough(monkeypatch)
    (tmp_path / "a").mkdir()
    listings = RememberedListings()
    first = listings(str(tmp_path))
    assert listings(str(tmp_path)) == first == ((str(tmp_path / "a"), False),)
    assert listed == [str(tmp_path)]


def test_a_change_is_seen_at_once(
    tmp_path: Path, listed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_enough(monkeypatch)
    (tmp_path / "a").mkdir()
    listings = RememberedListings()
    listings(str(tmp_path))
    time.sleep(0.05)
    (tmp_path / "a").rmdir()
    os.symlink("/etc", tmp_path / "a")
    assert listings(str(tmp_path)) == ((str(tmp_path / "a"), True),)
    assert len(listed) == 2


def test_a_young_stamp_is_not_trusted(tmp_path: Path, listed: list[str]) -> None:
    """A directory changed just now may change again within the same clock tick, which
    leaves its ctime as it was: its listing is not kept."""
    (tmp_path / "a").mkdir()
    listings = RememberedListings()
    listings(str(tmp_path))
    listings(str(tmp_path))
    assert listed == [str(tmp_path)] * 2


def test_no_directory_there_is_refused_as_the_listing_would(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    listings = RememberedListings()
    for path in ("file", "missing", "file/below"):
        with pytest.raises(NotADirectoryError):
            listings(str(tmp_path / path))


def test_expansion_with_kept_listings_matches_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_enough(monkeypatch)
    (tmp_path / ".git" / "hooks").mkdir(parents=True)
    (tmp_path / "src").mkdir()
    os.symlink("/etc", tmp_path / "link")
    root = str(tmp_path)
    rules = [[root, WRITE, True, [[f"{root}/.git/hooks", READ]]]]
    listings = RememberedListings()
    assert expand_rules(rules, listings) == expand_rules(rules)
    time.sleep(0.05)
    (tmp_path / "new").mkdir()
    assert expand_rules(rules, listings) == expand_rules(rules)
    assert (f"{root}/new", WRITE) in expand_rules(rules, listings)


def _carved(root: Path) -> list[list[object]]:
    return [[str(root), WRITE, True, [[f"{root}/.git/hooks", READ]]]]


def test_an_unchanged_expansion_lists_nothing(
    tmp_path: Path, listed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_enough(monkeypatch)
    (tmp_path / ".git" / "hooks").mkdir(parents=True)
    rules = _carved(tmp_path)
    expansion = RememberedExpansion()
    first = expansion(rules)
    assert expansion(rules) == first == expand_rules(rules)
    assert listed == [str(tmp_path), str(tmp_path / ".git")]


def test_a_change_below_a_carved_directory_is_expanded_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_enough(monkeypatch)
    (tmp_path / ".git" / "hooks").mkdir(parents=True)
    rules = _carved(tmp_path)
    expansion = RememberedExpansion()
    expansion(rules)
    time.sleep(0.05)
    (tmp_path / ".git" / "objects").mkdir()
    assert (f"{tmp_path}/.git/objects", WRITE) in expansion(rules)


def test_a_carved_directory_made_later_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Missing at first (a toolchain installed during the session): once there, its
    children are granted."""
    _old_enough(monkeypatch)
    rules = [[str(tmp_path / "tool"), READ, False, [[f"{tmp_path}/tool/credentials", 0]]]]
    expansion = RememberedExpansion()
    assert expansion(rules) == [(str(tmp_path / "tool"), 8)]
    (tmp_path / "tool" / "bin").mkdir(parents=True)
    assert expansion(rules) == [(str(tmp_path / "tool"), 8), (f"{tmp_path}/tool/bin", READ)]


def test_a_young_directory_is_expanded_every_time(tmp_path: Path, listed: list[str]) -> None:
    (tmp_path / ".git" / "hooks").mkdir(parents=True)
    rules = _carved(tmp_path)
    expansion = RememberedExpansion()
    expansion(rules)
    expansion(rules)
    assert listed.count(str(tmp_path)) == 2
