"""Which private temporary directories a later Landlock run may get: only one exactly as
made (see `private_tmp`)."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mechasandbox.backends.linux.private_tmp import PrivateTmpDirs


def _chmod(path: Path) -> None:
    path.chmod(0o755)


def _file(path: Path) -> None:
    (path / "left").write_text("x")


def _xattr(path: Path) -> None:
    os.setxattr(path, "user.mark", b"1")


def test_an_untouched_directory_is_handed_out_again_and_removed_at_close(
    tmp_path: Path,
) -> None:
    dirs = PrivateTmpDirs()
    first = dirs.take(str(tmp_path))
    assert os.stat(first).st_mode & 0o777 == 0o700
    dirs.give_back(str(tmp_path), first)
    assert dirs.take(str(tmp_path)) == first
    dirs.give_back(str(tmp_path), first)
    dirs.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("change", [_chmod, _file, _xattr], ids=["mode", "content", "xattr"])
def test_a_changed_directory_is_removed_not_handed_out(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    dirs = PrivateTmpDirs()
    first = dirs.take(str(tmp_path))
    change(Path(first))
    dirs.give_back(str(tmp_path), first)
    assert not os.path.exists(first)
    assert dirs.take(str(tmp_path)) != first


def test_a_kept_directory_changed_while_kept_is_not_handed_out(tmp_path: Path) -> None:
    dirs = PrivateTmpDirs()
    first = dirs.take(str(tmp_path))
    dirs.give_back(str(tmp_path), first)
    _xattr(Path(first))
    second = dirs.take(str(tmp_path))
    assert second != first
    assert not os.path.exists(first)
    dirs.give_back(str(tmp_path), second)
    dirs.close()


def test_a_forked_process_neither_hands_out_nor_removes_its_parents_directories(
    tmp_path: Path,
) -> None:
    dirs = PrivateTmpDirs()
    kept = dirs.take(str(tmp_path))
    dirs.give_back(str(tmp_path), kept)
    pid = os.fork()
    if pid == 0:  # the child: a directory of its own, and nothing of the parent's removed
        status = 0
        try:
            own = dirs.take(str(tmp_path))
            status |= 1 if own == kept else 0
            dirs.give_back(str(tmp_path), own)
            dirs.close()
            status |= 2 if not os.path.isdir(kept) else 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "1: shared a directory, 2: removed it"
    assert dirs.take(str(tmp_path)) == kept  # still the parent's
    dirs.close()


def test_an_owner_that_never_closed_removes_what_it_kept_when_it_goes(tmp_path: Path) -> None:
    """The kept directories belong to the object, not to the process: dropping it without
    `close` removes them (at exit, or as here when it is collected)."""
    dirs = PrivateTmpDirs()
    dirs.give_back(str(tmp_path), dirs.take(str(tmp_path)))
    assert len(os.listdir(tmp_path)) == 1
    del dirs
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_close_is_idempotent_and_the_owner_usable_again(tmp_path: Path) -> None:
    dirs = PrivateTmpDirs()
    dirs.give_back(str(tmp_path), dirs.take(str(tmp_path)))
    dirs.close()
    dirs.close()
    assert os.listdir(tmp_path) == []
    dirs.give_back(str(tmp_path), dirs.take(str(tmp_path)))
    assert len(os.listdir(tmp_path)) == 1
    dirs.close()
    assert os.listdir(tmp_path) == []
