"""What the search finds to protect in a workspace, and what is disarmed after a run."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from mechasandbox.backends.git_facts import GitFacts
from mechasandbox.backends.git_indirections import (
    command_words,
    find_indirections,
    with_git_indirections,
)
from mechasandbox.backends.git_new_repositories import disarm_new_repositories
from mechasandbox.domain.policy import FilesystemPolicy, Policy

ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/nonexistent"}


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **ENV}
    )


def found(workspace: Path) -> tuple[str, ...]:
    return find_indirections(str(workspace), home="/nonexistent", env=ENV).protected


def test_command_words() -> None:
    assert command_words("sh tools/x.sh --flag=conf/a && ./b | c $HOME/d %f") == (
        "sh",
        "tools/x.sh",
        "conf/a",
        "./b",
        "c",
    )
    assert "./run" in command_words("!f() { ./run; }; f")


def test_settings_name_paths_inside_the_workspace_only(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    git("init", "-q", cwd=ws)
    (ws / "tools").mkdir()
    (ws / "tools" / "fs.sh").write_text("")
    (ws / "src").mkdir()
    for key, value in (
        ("core.hooksPath", ".husky"),
        ("core.fsmonitor", "sh tools/fs.sh"),
        ("core.pager", "less"),
        ("filter.x.clean", "./scripts/clean %f"),
        ("diff.y.textconv", "/usr/bin/strings"),
        ("alias.lint", "!./lint.sh"),  # run by name, by the user: not protected
        ("credential.helper", "cd src && store"),  # `src` is a directory: not pinned
        ("include.path", "../../outside.cfg"),
        ("includeIf.onbranch:main.path", "../local.cfg"),
    ):
        git("config", "--add", key, value, cwd=ws)
    paths = found(ws)
    for expected in (".husky", "tools/fs.sh", "scripts/clean", "local.cfg"):
        assert expected in paths, (expected, paths)
    for unexpected in ("less", "lint.sh", "src", "outside.cfg", "../outside.cfg"):
        assert unexpected not in paths, (unexpected, paths)
    assert not any(path.startswith("..") for path in paths)


def test_fsmonitor_as_a_boolean_names_nothing(tmp_path: Path) -> None:
    git("init", "-q", cwd=tmp_path)
    (tmp_path / "true").write_text("")
    git("config", "core.fsmonitor", "true", cwd=tmp_path)
    assert "true" not in found(tmp_path)


def test_nested_repositories_gitfiles_and_submodule_paths(tmp_path: Path) -> None:
    git("init", "-q", cwd=tmp_path)
    (tmp_path / "vendor" / "lib").mkdir(parents=True)
    git("init", "-q", cwd=tmp_path / "vendor" / "lib")
    git("init", "-q", "--bare", "b.git", cwd=tmp_path)
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / ".git").write_text("gitdir: ../inner\n")
    (tmp_path / "inner").mkdir()
    (tmp_path / ".gitmodules").write_text('[submodule "s"]\n\tpath = deps/s\n')
    paths = found(tmp_path)
    for expected in (
        ".git/worktrees",
        "vendor/lib/.git/hooks",
        "vendor/lib/.git/config",
        "vendor/lib/.gitmodules",
        "b.git/hooks",
        "b.git/config",
        "mod/.git",
        "inner/hooks",
        "inner/config",
        "deps/s/.git",
    ):
        assert expected in paths, (expected, paths)


def test_the_policy_gets_them_unless_it_leaves_git_config_writable(tmp_path: Path) -> None:
    git("init", "-q", cwd=tmp_path)
    git("config", "core.hooksPath", "hooks-here", cwd=tmp_path)
    policy, _, _ = with_git_indirections(Policy(), str(tmp_path), home="/nonexistent", env=ENV)
    assert "hooks-here" in policy.filesystem.protected
    assert policy.filesystem.protected.count(".git/hooks") == 1
    open_git = Policy(filesystem=FilesystemPolicy(protected=(".env",)))
    unchanged, _, _ = with_git_indirections(open_git, str(tmp_path), home="/nonexistent", env=ENV)
    assert unchanged == open_git


def test_a_new_armed_repository_is_renamed_aside_and_a_plain_one_stays(tmp_path: Path) -> None:
    git("init", "-q", cwd=tmp_path)
    policy, _, _ = with_git_indirections(Policy(), str(tmp_path), home="/nonexistent", env=ENV)
    started = time.time_ns() - 20_000_000
    (tmp_path / "plain").mkdir()
    git("init", "-q", cwd=tmp_path / "plain")
    (tmp_path / "armed").mkdir()
    git("init", "-q", cwd=tmp_path / "armed")
    git("config", "core.fsmonitor", "touch x", cwd=tmp_path / "armed")
    warnings = disarm_new_repositories(str(tmp_path), policy, since_ns=started, home="/h")
    assert (tmp_path / "plain" / ".git").is_dir()
    assert not (tmp_path / "armed" / ".git").exists()
    assert (tmp_path / "armed" / ".git-disarmed-1").is_dir()
    assert len(warnings) == 1
    assert "core.fsmonitor" in warnings[0]


def test_a_repository_below_a_protected_path_whose_cover_came_off_is_disarmed(
    tmp_path: Path,
) -> None:
    """A repository in a protected path (a placeholder such as `.vscode`) counts as
    protected during the run, unless that path's guard was lost (the host replaced it,
    and the command could write the new one): then it is the command's, disarmed."""
    git("init", "-q", cwd=tmp_path)
    policy, _, _ = with_git_indirections(Policy(), str(tmp_path), home="/nonexistent", env=ENV)
    assert ".vscode" in policy.filesystem.protected
    started = time.time_ns() - 20_000_000
    planted = tmp_path / ".vscode" / "evil"
    planted.mkdir(parents=True)
    git("init", "-q", cwd=planted)
    git("config", "core.fsmonitor", "touch x", cwd=planted)
    kept = disarm_new_repositories(str(tmp_path), policy, since_ns=started, home="/h")
    assert kept == () and (planted / ".git").is_dir()
    exposed = (str(tmp_path / ".vscode"),)
    warnings = disarm_new_repositories(
        str(tmp_path), policy, since_ns=started, home="/h", exposed=exposed
    )
    assert not (planted / ".git").exists()
    assert len(warnings) == 1 and "core.fsmonitor" in warnings[0]


def test_the_file_placeholders_come_with_the_run(tmp_path: Path) -> None:
    """A missing include target is covered by an empty file (what git makes of its
    absence): the run is told so, with the policy, instead of a registry remembering it."""
    git("init", "-q", cwd=tmp_path)
    git("config", "include.path", "extra.cfg", cwd=tmp_path)
    policy, _, files = with_git_indirections(Policy(), str(tmp_path), home="/nonexistent", env=ENV)
    assert ".git/extra.cfg" in policy.filesystem.protected
    assert (str(tmp_path / ".git" / "extra.cfg"), b"") in files
    open_git = Policy(filesystem=FilesystemPolicy(protected=(".env",)))
    assert with_git_indirections(open_git, str(tmp_path), home="/nonexistent", env=ENV)[2] == ()


def test_what_a_search_reads_is_kept_by_the_facts_it_is_given(tmp_path: Path) -> None:
    """Searches given the same `GitFacts` reuse its listings and parsed files and find the
    same; a change is seen; `close` forgets."""
    git("init", "-q", cwd=tmp_path)
    git("config", "core.hooksPath", "hooks-here", cwd=tmp_path)
    facts = GitFacts()
    first = find_indirections(str(tmp_path), home="/nonexistent", env=ENV, facts=facts)
    assert first == find_indirections(str(tmp_path), home="/nonexistent", env=ENV, facts=facts)
    assert "hooks-here" in first.protected
    (tmp_path / "inner").mkdir()
    git("init", "-q", cwd=tmp_path / "inner")
    again = find_indirections(str(tmp_path), home="/nonexistent", env=ENV, facts=facts)
    assert "inner/.git/config" in again.protected
    facts.close()
    facts.close()
    assert find_indirections(str(tmp_path), home="/nonexistent", env=ENV, facts=facts) == again
