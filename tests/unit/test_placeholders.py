"""What removing placeholders may remove: only what bwrap made and nobody touched since."""

from __future__ import annotations

import os
from pathlib import Path

from mechasandbox.backends.linux.placeholders import remove_placeholders


def test_empty_files_and_empty_directories_go(tmp_path: Path) -> None:
    made = tmp_path / ".envrc"
    made.touch(mode=0o444)
    legacy = tmp_path / ".vscode"  # what earlier versions made
    legacy.mkdir()
    remove_placeholders([str(made), str(legacy)])
    assert os.listdir(tmp_path) == []


def test_anything_with_content_or_of_another_kind_stays(tmp_path: Path) -> None:
    written = tmp_path / ".env"
    written.write_text("someone's")
    filled = tmp_path / ".git"
    filled.mkdir()
    (filled / "HEAD").write_text("ref")
    link = tmp_path / ".idea"
    link.symlink_to(tmp_path / "elsewhere")
    remove_placeholders([str(written), str(filled), str(link), str(tmp_path / "gone")])
    assert sorted(os.listdir(tmp_path)) == [".env", ".git", ".idea"]
