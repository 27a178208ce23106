"""What removing placeholders may remove: only what bwrap made and nobody touched since."""

from __future__ import annotations

import os
from pathlib import Path

from mechasandbox.backends.linux.placeholders import remove_placeholders


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
