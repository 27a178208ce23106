"""The git configuration reader: git's syntax, includes, and nothing run."""

from __future__ import annotations

from pathlib import Path

from mechasandbox.backends.git_config import (
    MAX_INCLUDE_DEPTH,
    expand_path,
    parse_config,
    read_config_files,
)


def keys(text: str) -> list[tuple[str, str | None]]:
    return [(entry.key, entry.value) for entry in parse_config(text)]


def test_sections_subsections_and_names() -> None:
    text = (
        '[core]\n\thooksPath = .husky\n[Filter "LFS"]\n\tClean = git-lfs clean -- %f\n'
        '[includeIf "gitdir:~/a b/"]\n\tpath = x.cfg\n[remote.Origin]\n\turl = u\n'
        "[core] fsmonitor\n"
    )
    assert keys(text) == [
        ("core.hookspath", ".husky"),
        ("filter.LFS.clean", "git-lfs clean -- %f"),
        ("includeif.gitdir:~/a b/.path", "x.cfg"),
        ("remote.origin.url", "u"),
        ("core.fsmonitor", None),
    ]


def test_values_quotes_escapes_comments_and_continuations() -> None:
    text = (
        '[a]\n\tx = "sh  tools/x.sh" ; comment\n\ty = one\\\n two # more\n'
        '\tz = "tab\\there \\"q\\""\n\tw =   spaced   out   \n'
    )
    assert keys(text) == [
        ("a.x", "sh  tools/x.sh"),
        ("a.y", "one two"),
        ("a.z", 'tab\there "q"'),
        ("a.w", "spaced   out"),
    ]


def test_a_syntax_error_keeps_what_came_before() -> None:
    text = "[core]\n\tfsmonitor = a\n\tbad line here\n\tpager = b\n"
    assert keys(text) == [("core.fsmonitor", "a")]
    assert keys('[a]\n\tx = "open\n') == []
    assert keys("x = 1\n") == []  # no section yet
    assert keys("\ufeff[a]\r\n\tx = 1\r\n") == [("a.x", "1")]


def test_paths_expand_as_git_does() -> None:
    assert expand_path("~/x", relative_to="/r", home="/h") == "/h/x"
    assert expand_path("../y", relative_to="/r/.git", home="/h") == "/r/y"
    assert expand_path("/abs", relative_to="/r", home="/h") == "/abs"
    assert expand_path("~other/x", relative_to="/r", home="/h") is None
    assert expand_path("", relative_to="/r", home="/h") is None


def test_includes_are_followed_relative_to_their_file_to_a_depth(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "config").write_text(
        '[include]\n\tpath = sub/one\n[includeIf "onbranch:x"]\n\tpath = missing\n'
    )
    (tmp_path / "sub" / "one").write_text("[include]\n\tpath = ../two\n[core]\n\tpager = p\n")
    (tmp_path / "two").write_text("[core]\n\teditor = e\n")
    found = read_config_files((str(tmp_path / "config"),), home="/h")
    assert found.includes == (
        str(tmp_path / "sub" / "one"),
        str(tmp_path / "two"),
        str(tmp_path / "missing"),
    )
    # in place, as git reads them: `two` where `one` includes it, before its own
    assert [e.key for e in found.entries if e.section == "core"] == ["core.editor", "core.pager"]
    (tmp_path / "loop").write_text("[include]\n\tpath = loop\n")
    looped = read_config_files((str(tmp_path / "loop"),), home="/h")
    assert len(looped.entries) == MAX_INCLUDE_DEPTH + 1


def test_a_fifo_or_a_directory_is_not_read(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    found = read_config_files((str(tmp_path / "fifo"), str(tmp_path / "dir")), home="/h")
    assert found.entries == ()
