"""The temp dirs and files named after their owner, and the sweep that removes those of
processes that are gone (and nothing else)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from mechasandbox.leftovers import owner_stamp, start_time, sweep_temp_dir, temp_prefix


def _dead_stamp() -> str:
    """The stamp a process that has exited had."""
    gone = subprocess.Popen(["sleep", "0"])
    start = start_time(gone.pid)
    gone.wait()
    return f"{gone.pid}-{start or 0}"


def test_names_carry_the_owner(tmp_path: Path) -> None:
    made = tempfile.mkdtemp(prefix=temp_prefix("landlock"), dir=tmp_path)
    assert os.path.basename(made).startswith(f"mechasandbox-landlock-{owner_stamp()}-")
    assert temp_prefix("net").startswith(f"msb-net-{os.getpid()}-")


def test_the_sweep_removes_only_what_dead_owners_left(tmp_path: Path) -> None:
    dead = _dead_stamp()
    # A dead owner's: a tree with a read-only directory in it, an empty read-only
    # directory (the container backends'), a file.
    tree = tmp_path / f"mechasandbox-landlock-{dead}-abcd1234"
    (tree / "locked").mkdir(parents=True)
    (tree / "locked" / "file").write_text("x")
    (tree / "locked").chmod(0o500)
    empty = tmp_path / f"mechasandbox-empty-{dead}-abcd1234"
    empty.mkdir(mode=0o500)
    probe = tmp_path / f"mechasandbox-probe-{dead}-abcd1234"
    probe.write_text("{}")
    net = tmp_path / f"msb-net-{dead}-abcd1234"
    net.mkdir()
    # What stays: ours (alive), a stamp whose pid now names another process (its start
    # time differs), names of another form.
    ours = Path(tempfile.mkdtemp(prefix=temp_prefix("landlock"), dir=tmp_path))
    reused = tmp_path / f"mechasandbox-landlock-{os.getpid()}-1-abcd1234"
    reused.mkdir()
    foreign = [tmp_path / "mechasandbox-landlock-x", tmp_path / "mechasandbox-notes.txt"]
    for path in foreign:
        path.mkdir()
    sweep_temp_dir(str(tmp_path))
    assert sorted(tmp_path.iterdir()) == sorted([ours, *foreign])


def test_a_live_owner_s_entries_stay(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            live = tmp_path / f"mechasandbox-stdin-{other.pid}-{start_time(other.pid)}-ab12"
            live.mkdir()
            sweep_temp_dir(str(tmp_path))
            assert live.is_dir()
        finally:
            other.kill()
