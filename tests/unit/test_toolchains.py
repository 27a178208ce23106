"""Which toolchains a run finds in a home, and how a command is looked up in a sandbox's view."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest
from returns.result import Failure

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.lookup import View, resolve_command, sandbox_path, tree_view
from mechasandbox.backends.toolchains import command_root, find_toolchains
from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.domain.policy import FilesystemPolicy, Policy


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def host(home: Path, **env: str) -> HostContext:
    return HostContext(
        env=tuple(sorted({"HOME": str(home), **env}.items())),
        home=str(home),
        uid=os.getuid(),
        gid=os.getgid(),
        platform="linux",
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    for root in (".pyenv", ".rustup", ".cargo/bin", ".nvm/versions/node/v22.1.0/etc"):
        (home / root).mkdir(parents=True)
    (home / ".nvm/versions/node/v22.1.0/etc/npmrc").write_text("token\n")
    return home


def test_auto_finds_the_known_toolchains_that_exist(home: Path) -> None:
    found = find_toolchains(FilesystemPolicy(), "true", host(home))
    assert found.roots == tuple(str(home / r) for r in (".pyenv", ".nvm", ".rustup", ".cargo"))
    assert str(home / ".nvm/versions/node/v22.1.0/etc/npmrc") in found.denied
    assert str(home / ".cargo/credentials.toml") in found.denied
    assert dict(found.variables)["RUSTUP_HOME"] == str(home / ".rustup")
    assert dict(found.variables)["CARGO_HOME"] == str(home / ".cargo")


def test_none_finds_nothing(home: Path) -> None:
    assert find_toolchains(FilesystemPolicy(toolchains=()), "true", host(home)).roots == ()


def test_the_hosts_variable_says_where_a_toolchain_is(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "rust"
    elsewhere.mkdir()
    found = find_toolchains(FilesystemPolicy(), "true", host(home, RUSTUP_HOME=str(elsewhere)))
    assert str(elsewhere) in found.roots
    assert str(home / ".rustup") not in found.roots
    assert dict(found.variables)["RUSTUP_HOME"] == str(elsewhere)


def test_a_variable_naming_the_home_itself_is_not_a_root(home: Path) -> None:
    found = find_toolchains(FilesystemPolicy(), "true", host(home, CARGO_HOME=str(home)))
    assert str(home) not in found.roots
    assert "CARGO_HOME" not in dict(found.variables)


def test_the_commands_root_on_the_hosts_path(home: Path) -> None:
    """A tool the user put on PATH: the root above its `bin`, and its symlink's target's."""
    _executable(home / "tools/bin/mine")
    target = _executable(home / ".local/share/pypoetry/venv/bin/poetry")
    (home / "links").mkdir()
    (home / "links/poetry").symlink_to(target)
    path = f"{home}/tools/bin:{home}/links:/usr/bin"
    mine = find_toolchains(FilesystemPolicy(), "mine", host(home, PATH=path))
    assert str(home / "tools") in mine.roots
    poetry = find_toolchains(FilesystemPolicy(), "poetry", host(home, PATH=path))
    assert str(home / "links") in poetry.roots
    assert str(home / ".local/share/pypoetry/venv") in poetry.roots


def test_only_a_bare_name_on_the_hosts_path_has_its_root_read(home: Path) -> None:
    """A path the caller wrote, or a PATH the policy sets, chooses no reader."""
    _executable(home / "tools/bin/mine")
    fs = FilesystemPolicy()
    assert (
        str(home / "tools") not in find_toolchains(fs, f"{home}/tools/bin/mine", host(home)).roots
    )
    assert str(home / "tools") not in find_toolchains(fs, "mine", host(home, PATH="/usr/bin")).roots


def test_a_denied_root_is_not_found(home: Path) -> None:
    fs = FilesystemPolicy(deny_read=(*FilesystemPolicy().deny_read, "~/.cargo"))
    assert str(home / ".cargo") not in find_toolchains(fs, "true", host(home)).roots


def test_listed_paths_are_roots_with_their_credentials(home: Path) -> None:
    fs = FilesystemPolicy(toolchains=("~/.cargo",))
    found = find_toolchains(fs, "true", host(home))
    assert found.roots == (str(home / ".cargo"),)
    assert str(home / ".cargo/credentials") in found.denied


@pytest.mark.parametrize(
    ("path", "root"),
    [
        ("/h/.local/share/x/venv/bin/x", "/h/.local/share/x/venv"),
        ("/h/tools/bin/x", "/h/tools"),
        ("/h/bin/x", "/h/bin"),  # not the home itself
        ("/h/.pyenv/shims/x", "/h/.pyenv/shims"),
        ("/h/x", None),
        ("/opt/sdk/bin/x", None),
    ],
)
def test_command_root(path: str, root: str | None) -> None:
    assert command_root(path, "/h") == root


def test_applied_leaves_the_policys_own_variables(home: Path) -> None:
    found = find_toolchains(FilesystemPolicy(), "true", host(home))
    policy = attrs.evolve(
        Policy(), environment=attrs.evolve(Policy().environment, set=(("CARGO_HOME", "/x"),))
    )
    applied = found.applied(policy)
    assert dict(applied.environment.set)["CARGO_HOME"] == "/x"
    assert str(home / ".cargo") in applied.filesystem.readable


# --- lookup ------------------------------------------------------------------------------------
def test_the_first_visible_entry_wins(tmp_path: Path) -> None:
    hidden = _executable(tmp_path / "home/.pyenv/shims/tool")
    shown = _executable(tmp_path / "usr/bin/tool")
    view = View(visible=tree_view((str(tmp_path / "usr"),)), host=host(tmp_path / "home"))
    env = {"PATH": f"{hidden.parent}:{shown.parent}"}
    assert resolve_command("tool", env, str(tmp_path), view).unwrap() == str(shown)
    assert sandbox_path(env["PATH"], view) == str(shown.parent)


def test_a_command_only_in_hidden_entries_says_what_to_allow(tmp_path: Path) -> None:
    hidden = _executable(tmp_path / "home/.pyenv/shims/tool")
    view = View(visible=tree_view(("/usr",)), host=host(tmp_path / "home"))
    failed = resolve_command("tool", {"PATH": f"{hidden.parent}:/usr/bin"}, str(tmp_path), view)
    assert isinstance(failed, Failure)
    error = failed.failure()
    assert isinstance(error, SpawnFailed)
    assert error.exit_status == 127
    assert str(hidden) in error.reason
    assert "--allow-read ~/.pyenv" in error.reason


def test_a_denied_command_says_so(tmp_path: Path) -> None:
    hidden = _executable(tmp_path / "home/secret/bin/tool")
    view = View(visible=tree_view(("/usr",)), host=host(tmp_path / "home"), deny_read=("~/secret",))
    failed = resolve_command(str(hidden), {}, str(tmp_path), view)
    assert isinstance(failed, Failure)
    assert "~/secret, which filesystem.deny_read hides" in failed.failure().message


def test_a_command_found_nowhere(tmp_path: Path) -> None:
    failed = resolve_command("no-such-tool-here", {"PATH": "/usr/bin"}, str(tmp_path))
    assert isinstance(failed, Failure)
    assert failed.failure().message.endswith("command not found on PATH")


def test_a_denied_tree_inside_a_visible_one_is_hidden(tmp_path: Path) -> None:
    visible = tree_view((str(tmp_path),), (str(tmp_path / "secret"),))
    assert visible(str(tmp_path / "a"))
    assert not visible(str(tmp_path / "secret/a"))
    assert not visible("/elsewhere")


def test_a_command_in_what_the_command_writes_chooses_no_reader(home: Path, tmp_path: Path) -> None:
    """The host's PATH lists a directory of the workspace (an activated venv): a symlink the
    command planted there must not make another tree of the home readable."""
    _executable(home / "other/bin/tool")
    workspace = tmp_path / "ws"
    (workspace / ".venv/bin").mkdir(parents=True)
    (workspace / ".venv/bin/tool").symlink_to(home / "other/bin/tool")
    path = f"{workspace}/.venv/bin:/usr/bin"
    found = find_toolchains(FilesystemPolicy(), "tool", host(home, PATH=path), str(workspace))
    assert str(home / "other") not in found.roots
    writable = FilesystemPolicy(writable=(str(workspace),))
    assert str(home / "other") not in find_toolchains(writable, "tool", host(home, PATH=path)).roots
    # The same link in a directory of the user's own: its target's root is read.
    (home / "bin").mkdir()
    (home / "bin/tool").symlink_to(home / "other/bin/tool")
    found = find_toolchains(
        FilesystemPolicy(), "tool", host(home, PATH=f"{home}/bin"), str(workspace)
    )
    assert str(home / "other") in found.roots


def test_a_policy_built_in_code_spells_toolchains_as_files_do() -> None:
    assert FilesystemPolicy(toolchains="none").toolchains == ()
    assert FilesystemPolicy(toolchains="auto").toolchains == ("auto",)
    assert FilesystemPolicy().toolchains == ("auto",)
    assert FilesystemPolicy().umask == 0o022
    with pytest.raises(ValueError, match="umask"):
        FilesystemPolicy(umask=0o1000)
