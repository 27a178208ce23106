"""The per-user record of successful probes: what it keeps, and what it refuses to trust."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mechasandbox.backends.probe_cache import ProbeCache, default_directory

KEY = {"executable": "/usr/bin/tool", "kernel": "6.1"}
VALUE = {"version": [0, 8, 0]}


@pytest.fixture
def cache(tmp_path: Path) -> ProbeCache:
    return ProbeCache(directory=str(tmp_path / "cache" / "mechasandbox"))


def test_default_directory_follows_xdg() -> None:
    assert default_directory({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == "/x/mechasandbox"
    assert default_directory({"HOME": "/h"}) == "/h/.cache/mechasandbox"


def test_a_stored_success_is_found_under_the_same_key(cache: ProbeCache) -> None:
    assert cache.load("tool", KEY) is None
    cache.store("tool", KEY, VALUE)
    assert cache.load("tool", KEY) == VALUE
    assert cache.load("other", KEY) is None


def test_directory_and_file_are_private(cache: ProbeCache) -> None:
    cache.store("tool", KEY, VALUE)
    directory = Path(cache.directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "tool.json").stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == ["tool.json"]  # no temporary left


def test_any_changed_fact_misses(cache: ProbeCache) -> None:
    cache.store("tool", KEY, VALUE)
    assert cache.load("tool", {**KEY, "kernel": "6.2"}) is None
    assert cache.load("tool", {**KEY, "extra": "1"}) is None
    assert cache.load("tool", {"executable": "/usr/bin/tool"}) is None


def test_an_old_record_misses(tmp_path: Path) -> None:
    cache = ProbeCache(directory=str(tmp_path / "c"), max_age_s=60)
    cache.store("tool", KEY, VALUE)
    path = tmp_path / "c" / "tool.json"
    record = json.loads(path.read_text())
    record["at"] -= 61
    path.write_text(json.dumps(record))
    assert cache.load("tool", KEY) is None
    record["at"] += 3600  # from the future: a clock that jumped back
    path.write_text(json.dumps(record))
    assert cache.load("tool", KEY) is None


def test_a_shared_directory_is_neither_read_nor_written(cache: ProbeCache) -> None:
    cache.store("tool", KEY, VALUE)
    os.chmod(cache.directory, 0o770)
    assert cache.load("tool", KEY) is None
    os.unlink(os.path.join(cache.directory, "tool.json"))
    cache.store("tool", KEY, VALUE)
    assert not os.path.exists(os.path.join(cache.directory, "tool.json"))
    assert stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o770  # not repaired


def test_a_file_others_may_write_is_ignored(cache: ProbeCache) -> None:
    cache.store("tool", KEY, VALUE)
    os.chmod(os.path.join(cache.directory, "tool.json"), 0o666)
    assert cache.load("tool", KEY) is None


def test_a_symlinked_record_or_directory_is_ignored(cache: ProbeCache, tmp_path: Path) -> None:
    elsewhere = ProbeCache(directory=str(tmp_path / "elsewhere"))
    elsewhere.store("tool", KEY, VALUE)
    os.makedirs(cache.directory, mode=0o700)
    os.symlink(os.path.join(elsewhere.directory, "tool.json"), cache._path("tool"))
    assert cache.load("tool", KEY) is None
    linked = ProbeCache(directory=str(tmp_path / "linked"))
    os.symlink(elsewhere.directory, linked.directory)
    assert linked.load("tool", KEY) is None


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        json.dumps({"format": 99, "at": 0, "key": KEY, "value": VALUE}),
        json.dumps({"format": 1, "at": "now", "key": KEY, "value": VALUE}),
        json.dumps({"format": 1, "key": KEY, "value": VALUE}),
    ],
)
def test_a_damaged_record_misses(cache: ProbeCache, content: str) -> None:
    cache.store("tool", KEY, VALUE)
    Path(cache.directory, "tool.json").write_text(content)
    assert cache.load("tool", KEY) is None


def test_an_unwritable_location_costs_nothing_but_the_record(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = ProbeCache(directory=str(blocker / "mechasandbox"))
    cache.store("tool", KEY, VALUE)  # no exception
    assert cache.load("tool", KEY) is None


def test_forget(cache: ProbeCache) -> None:
    cache.store("tool", KEY, VALUE)
    cache.forget("tool")
    assert cache.load("tool", KEY) is None
    cache.forget("tool")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to give a directory to another user")
def test_nothing_is_created_in_another_users_tree(tmp_path: Path) -> None:
    """As with `sudo` keeping the caller's HOME: their ~/.cache is not root's to create."""
    home = tmp_path / "someone"
    home.mkdir()
    os.chown(home, 65534, 65534)
    cache = ProbeCache(directory=str(home / ".cache" / "mechasandbox"))
    cache.store("tool", KEY, VALUE)
    assert not (home / ".cache").exists()
    assert cache.load("tool", KEY) is None
