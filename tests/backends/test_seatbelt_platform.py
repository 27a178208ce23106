"""What every Seatbelt profile allows of macOS itself (`backends.macos.platform`), on any OS:
the Xcode parameter, the path-free regexes for git's and husky's places, the caches moved
into the private TMPDIR, and the docs' table of allowances kept in step with the data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mechasandbox.backends.macos import platform
from mechasandbox.backends.macos.seatbelt import CACHE_VARIABLES, SeatbeltSetting
from mechasandbox.domain import (
    EnvironmentPolicy,
    FilesystemPolicy,
    NetworkMode,
    NetworkPolicy,
    Policy,
    RunRequest,
)
from mechasandbox.runner.runner import HelperProcessRunner
from tests.backends.test_seatbelt_golden import HOME, TMPDIR, backend, compile_ok, job

DOCS = Path(__file__).parents[2] / "docs" / "backends-macos.md"
LINKS = {
    "/Applications/Xcode.app": "/Applications/Xcode_16.2.app",
    "/opt/xcode-beta": "/Applications/Xcode-beta.app",
}


def realpath(path: str) -> str:
    for link, target in LINKS.items():
        if path == link or path.startswith(link + "/"):
            return target + path[len(link) :]
    return path


def roots(env: dict[str, str], link: str | None = None) -> tuple[str, ...]:
    return platform.developer_roots(env, readlink=lambda _path: link, realpath=realpath)


def test_xcode_is_allowed_at_its_real_path() -> None:
    # nothing selected: the default, resolved (runner images link Xcode.app to Xcode_16.x)
    assert roots({}) == ("/Applications/Xcode_16.2.app",)
    # `xcode-select --switch` and DEVELOPER_DIR: those first, the default still resolved
    switched = roots({}, "/Applications/Xcode_15.4.app/Contents/Developer")
    assert switched == ("/Applications/Xcode_15.4.app", "/Applications/Xcode_16.2.app")
    chosen = roots({"DEVELOPER_DIR": "/opt/xcode-beta/Contents/Developer"})
    assert chosen[0] == "/Applications/Xcode-beta.app"


@pytest.mark.parametrize(
    "developer_dir",
    [HOME, f"{HOME}/Contents/Developer", "relative/Xcode.app", "/", "/Applications/.app"],
)
def test_a_developer_dir_that_is_no_app_bundle_opens_nothing(developer_dir: str) -> None:
    assert roots({"DEVELOPER_DIR": developer_dir}) == ("/Applications/Xcode_16.2.app",)


def test_the_xcode_parameter_reaches_the_profile(runner: HelperProcessRunner) -> None:
    profile = compile_ok(Policy())
    assert ("DEVELOPER_0", "/Applications/Xcode_16.2.app") in profile.params
    assert '(subpath (param "DEVELOPER_0"))' in profile.text
    assert "Xcode_16" not in profile.text  # a parameter, never a path in the text


GIT_PLACES = re.compile(platform.GIT_PLACES_REGEX)
HUSKY = re.compile(platform.HUSKY_REGEX)
KEEP = re.compile(platform.KEEP_NAME_REGEX)


@pytest.mark.parametrize(
    "path",
    [
        "/ws/.git/hooks",
        "/ws/.git/hooks/pre-commit",
        "/ws/sub/.git/config",
        "/ws/a/b/c/.git/hooks/post-checkout",
        "/ws/.GIT/Hooks/pre-commit",  # APFS: the same directory git reads
        "/ws/.git/config.worktree",
        "/ws/.git/commondir",
        "/ws/.git/modules/lib/hooks/pre-commit",
        "/ws/.git/modules/lib/modules/inner/config",
        "/ws/.git/worktrees/feature/config.worktree",
    ],
)
def test_git_places_are_matched_at_any_depth(path: str) -> None:
    assert GIT_PLACES.search(path), path


@pytest.mark.parametrize(
    "path",
    [
        "/ws/.git/objects/ab/cdef",
        "/ws/.git/refs/heads/config",  # a branch named config
        "/ws/.git/configs",
        "/ws/src/config",
        "/ws/src/hooks/useState.ts",
        "/ws/git/hooks/x",
        "/ws/.github/hooks/x",
    ],
)
def test_ordinary_files_are_not_git_places(path: str) -> None:
    assert not GIT_PLACES.search(path), path


def test_husky_and_the_directories_holding_git_places() -> None:
    assert HUSKY.search("/ws/.husky/pre-commit")
    assert HUSKY.search("/ws/web/.Husky")
    assert not HUSKY.search("/ws/husky/x")
    for kept in ("/ws/.git", "/ws/sub/.git", "/ws/.git/modules", "/ws/s/.GIT/worktrees"):
        assert KEEP.search(kept), kept
    for free in ("/ws/.git/hooks2", "/ws/.gitignore", "/ws/.git/modules/lib", "/ws/sub"):
        assert not KEEP.search(free), free


def test_git_places_are_denied_in_writable_roots_but_not_the_private_tmpdir() -> None:
    policy = Policy(filesystem=FilesystemPolicy(writable=("~/src/other",)))
    text = compile_ok(policy).text
    scope = '(require-any (subpath (param "WORKSPACE")) (subpath (param "WRITABLE_0")))'
    assert text.count(scope) == 2  # writes, and renames of the directories
    assert '(subpath (param "TMPDIR")) (require-any (regex' not in text


def test_deny_write_denies_the_path_itself() -> None:
    policy = Policy(filesystem=FilesystemPolicy(deny_write=("~/proj/vendor",)))
    text = compile_ok(policy).text
    assert '(literal (param "DENY_WRITE_0"))' in text
    assert '(subpath (param "DENY_WRITE_0"))' in text


def test_network_services_only_where_the_network_is_reached() -> None:
    none = compile_ok(Policy()).text
    full = compile_ok(Policy(network=NetworkPolicy(mode=NetworkMode.FULL))).text
    allowlist = compile_ok(Policy(network=NetworkPolicy(mode=NetworkMode.ALLOWLIST)), proxy_port=9)
    for service in platform.MACH_SERVICES_TLS:
        assert service not in none
        assert service in full
        assert service in allowlist.text
    assert "com.apple.dnssd.service" not in allowlist.text  # the proxy resolves
    assert '"localhost:*"' not in allowlist.text + full


def test_caches_go_to_the_private_tmpdir(runner: HelperProcessRunner, tmp_path: Path) -> None:
    seatbelt = backend(runner)
    request = RunRequest(argv=["/usr/bin/true"], workspace=str(tmp_path))
    own = EnvironmentPolicy(set=(("GOCACHE", "/Users/dev/go-cache"),))
    for policy, gocache in (
        (Policy(), f"{TMPDIR}/cache/go-build"),
        (Policy(environment=own), "/Users/dev/go-cache"),
    ):
        launch = seatbelt.compile(job(request, policy), SeatbeltSetting(tmpdir=TMPDIR)).unwrap()
        env = dict(launch.compiled[1])
        assert env["GOCACHE"] == gocache  # the policy's own value wins
        for name, _directory in CACHE_VARIABLES:
            if name != "GOCACHE":
                assert env[name].startswith(f"{TMPDIR}/cache/"), name


def test_every_allowance_is_in_the_docs_table() -> None:
    """docs/backends-macos.md has the table allowance -> why -> peer: nothing the profile
    grants may be missing from it."""
    docs = DOCS.read_text()
    granted = (
        *platform.MACH_SERVICES,
        *platform.MACH_SERVICES_TLS,
        *platform.MACH_SERVICES_DNS,
        *platform.SYSCTL_WRITE_NAMES,
        *platform.SYSCTL_PREFIXES,
        *platform.SHM_READ_PREFIXES,
        "user-preference-read",
        "ipc-posix-shm",
        "ipc-posix-sem",
        platform.DTRACE_HELPER,
        "/dev/autofs_nowait",
        *platform.HOMEBREW_PREFIXES,
    )
    missing = [name for name in granted if f"`{name}" not in docs]
    assert missing == []
