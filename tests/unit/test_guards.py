"""The identity checks behind bubblewrap's guard watch, on real files (the sandbox side is in
test_bubblewrap_security.py)."""

from __future__ import annotations

import os
from pathlib import Path

from mechasandbox.backends.linux.guards import guards_lost, identities, watcher


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
    guards = ((str(config), "write"), (str(netrc), "read"))
    before = identities(guards)
    config.write_text("in place")  # same inode: the mount on it holds
    assert guards_lost(before, guards) == ()
    _replace(netrc, "new")
    (lost,) = guards_lost(before, guards)
    assert lost.startswith(f"{netrc} was replaced on the host") and "mask" in lost
    netrc.unlink()
    assert guards_lost(before, guards) == (lost,)  # gone counts too


def test_the_watcher_gives_a_reason_once_a_guard_is_lost(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("a")
    guards = ((str(config), "write"),)
    assert watcher(identities(guards), ()) is None  # nothing to watch: no watcher
    check = watcher(identities(guards), guards)
    assert check is not None and check() is None
    _replace(config, "new")
    reason = check()
    assert reason is not None and reason.startswith(f"{config} was replaced on the host")
    assert "read-only pin" in reason
