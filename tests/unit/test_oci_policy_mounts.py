"""What `policy_mounts.survey` makes of a policy on a real (temporary) file tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from returns.result import Failure

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.oci.policy_mounts import PolicyMounts, survey
from mechasandbox.domain import FilesystemPolicy, Policy
from mechasandbox.domain.errors import ConfigInvalid


def host(home: Path) -> HostContext:
    return attrs.evolve(HostContext.current(), home=str(home))


def policy(**paths: Any) -> Policy:  # tuples of paths
    return Policy(filesystem=FilesystemPolicy(**paths))


def surveyed(workspace: Path, home: Path, **paths: tuple[str, ...]) -> PolicyMounts:
    return survey(str(workspace), policy(**paths), host(home)).unwrap()


def refused(workspace: Path, home: Path, **paths: tuple[str, ...]) -> ConfigInvalid:
    result = survey(str(workspace), policy(**paths), host(home))
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, ConfigInvalid)
    return error


def test_default_policy_in_an_ordinary_workspace_mounts_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / "ws").mkdir()
    assert survey(str(home / "ws"), Policy(), host(home)).unwrap() == PolicyMounts()


def test_deny_read_in_the_workspace_is_masked_missing_ones_skipped(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "secret").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    mounts = surveyed(tmp_path, tmp_path / "nohome", deny_read=("keys", "link", "gone", "~/.ssh"))
    assert mounts == PolicyMounts(
        masked_dirs=(str(tmp_path / "keys"),), masked_files=(str(tmp_path / "secret"),)
    )


def test_readable_and_writable_outside_resolved_inside_ignored(tmp_path: Path) -> None:
    workspace, data, cache = tmp_path / "ws", tmp_path / "data", tmp_path / "cache"
    for directory in (workspace, data, cache):
        directory.mkdir()
    (tmp_path / "data-link").symlink_to(data)
    (workspace / "ref").symlink_to("/")  # planted by the repository
    (workspace / "sub").mkdir()
    mounts = surveyed(
        workspace,
        tmp_path / "nohome",
        readable=(str(tmp_path / "data-link"), str(workspace / "ref"), "ref", "sub", "/gone"),
        writable=(str(cache), str(data)),
    )
    # (data is both: writable wins)
    assert mounts == PolicyMounts(writable=(str(cache), str(data)))
    only_read = surveyed(workspace, tmp_path / "nohome", readable=(str(tmp_path / "data-link"),))
    assert only_read.readable == (str(data),)
    # through a link to the workspace, then the repository's link: nothing
    (tmp_path / "ws-link").symlink_to(workspace)
    via = surveyed(workspace, tmp_path / "nohome", readable=(str(tmp_path / "ws-link" / "ref"),))
    assert via == PolicyMounts()


def test_a_home_inside_the_workspace_is_hidden_and_a_readable_home_masked(tmp_path: Path) -> None:
    home = tmp_path / "home" / "dev"
    (home / ".ssh").mkdir(parents=True)
    (home / ".netrc").write_text("x")
    inside = surveyed(tmp_path, home, deny_read=("~/.ssh", "~/.netrc"))
    assert inside == PolicyMounts(hidden_home=str(home))
    workspace = tmp_path / "ws"
    workspace.mkdir()
    readable = surveyed(workspace, home, readable=("~",), deny_read=("~/.ssh", "~/.netrc"))
    assert readable == PolicyMounts(
        readable=(str(home),),
        masked_dirs=(str(home / ".ssh"),),
        masked_files=(str(home / ".netrc"),),
    )
    # the workspace is the home: shown, with its secrets masked
    same = surveyed(home, home, deny_read=("~/.ssh",))
    assert same == PolicyMounts(masked_dirs=(str(home / ".ssh"),))


def test_what_cannot_be_mounted_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    odd = tmp_path / "a,b"
    odd.mkdir()
    home = tmp_path / "nohome"
    assert refused(workspace, home, readable=("/",)).field == "filesystem.readable"
    assert refused(workspace, home, writable=("/proc/self",)).field == "filesystem.writable"
    assert refused(workspace, home, writable=("/tmp",)).field == "filesystem.writable"
    for sockets in ("/run", "/run/user", "/var/run"):
        assert "unix sockets" in refused(workspace, home, readable=(sockets,)).problem
    assert "commas" in refused(workspace, home, readable=(str(odd),)).problem
    (workspace / "x,y").write_text("secret")
    masked = refused(workspace, home, deny_read=(str(workspace / "x,y"),))
    assert masked.field == "filesystem.deny_read"
    inside = refused(workspace, home, deny_read=(str(tmp_path),))
    assert "inside the denied path" in inside.problem


def test_a_readable_etc_keeps_the_hosts_secrets_masked(tmp_path: Path) -> None:
    mounts = surveyed(tmp_path, tmp_path / "nohome", readable=("/etc",))
    assert mounts.readable == ("/etc",)
    if Path("/etc/shadow").exists():
        assert "/etc/shadow" in mounts.masked_files


def test_a_link_inside_a_writable_path_is_not_followed(tmp_path: Path) -> None:
    """An earlier command could replace `cache/models` (in a writable path) with a link to
    anything the user may read: the next run must not bind that."""
    workspace, cache, secret = tmp_path / "ws", tmp_path / "cache", tmp_path / "secret"
    for directory in (workspace, cache, secret, cache / "real"):
        directory.mkdir()
    (cache / "models").symlink_to(secret)
    (tmp_path / "cache-link").symlink_to(cache)  # the user's own link outside: followed
    mounts = surveyed(
        workspace,
        tmp_path / "nohome",
        writable=(str(tmp_path / "cache-link"),),
        readable=(str(cache / "models"), str(cache / "real")),
    )
    assert mounts == PolicyMounts(readable=(str(cache / "real"),), writable=(str(cache),))
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert surveyed(workspace, tmp_path / "nohome", readable=(str(loop),)) == PolicyMounts()


def test_the_directories_above_a_mask_in_a_writable_tree_are_pinned(tmp_path: Path) -> None:
    workspace, cache, reference = tmp_path / "ws", tmp_path / "cache", tmp_path / "ref"
    for directory in (workspace / "conf" / "deep", cache / "a", reference / "b"):
        directory.mkdir(parents=True)
    for secret in (workspace / "conf" / "deep" / "s", cache / "a" / "s", reference / "b" / "s"):
        secret.write_text("x")
    mounts = surveyed(
        workspace,
        tmp_path / "nohome",
        writable=(str(cache),),
        readable=(str(reference),),
        deny_read=(
            str(workspace / "conf" / "deep" / "s"),
            str(cache / "a" / "s"),
            str(reference / "b" / "s"),
        ),
    )
    # (a read-only tree cannot be renamed in: nothing to pin there)
    assert mounts.pinned == (
        str(cache / "a"),
        str(workspace / "conf"),
        str(workspace / "conf" / "deep"),
    )
