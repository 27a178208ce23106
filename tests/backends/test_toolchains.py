"""Toolchains under the home, the command's lookup, its HOME and umask, in real sandboxes.

A made-up home holds what developers install there (a pyenv shim, cargo with a registry
token, nvm's node with an npmrc, a hand-made tool on PATH) and a secret of its own; the
host's PATH lists their directories, as a developer's shell does. bubblewrap and landlock
hide the home: the toolchains must run by name, read-only, their tokens hidden; the process
backend hides nothing and keeps the user's HOME.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import attrs
import pytest
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import Backend, HostContext
from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.backends.linux.landlock import LandlockBackend
from mechasandbox.backends.process import ProcessBackend
from mechasandbox.config import load_policy
from mechasandbox.domain.errors import SandboxError, SpawnFailed
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import Enforcement, HostProcesses, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")

SECRET = "registry-token-" + secrets.token_hex(8)
NODE = ".nvm/versions/node/v20.0.0"


def _tool(path: Path, script: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def make_home(home: Path) -> None:
    """What a developer's home holds: toolchains, their tokens, and a secret of its own."""
    _tool(home / ".pyenv/shims/mytool", 'cat "$(dirname "$0")/../versions/1.0/message"')
    (home / ".pyenv/versions/1.0").mkdir(parents=True)
    (home / ".pyenv/versions/1.0/message").write_text("toolchain ok\n")
    _tool(home / ".cargo/bin/mycargo", "echo cargo ok")
    (home / ".cargo/credentials.toml").write_text(f'[registry]\ntoken = "{SECRET}"\n')
    _tool(home / NODE / "bin/mynode", "echo node ok")
    (home / NODE / "etc").mkdir()
    (home / NODE / "etc/npmrc").write_text(f"//registry.npmjs.org/:_authToken={SECRET}\n")
    # Not a known toolchain: found through the host's PATH, its root is `~/tools`.
    _tool(home / "tools/bin/handmade", 'cat "$(dirname "$0")/../share/data"')
    (home / "tools/share").mkdir()
    (home / "tools/share/data").write_text("handmade ok\n")
    (home / "notes.txt").write_text(SECRET)


def host_path(home: Path) -> str:
    entries = (".cargo/bin", ".pyenv/shims", "tools/bin", f"{NODE}/bin")
    return ":".join([*(str(home / entry) for entry in entries), "/usr/bin", "/bin"])


@attrs.frozen
class Box:
    backend: Backend
    home: Path
    workspace: Path
    policy: Policy
    host: HostContext
    remade: Callable[[HostContext], Backend]  # the same backend on another host

    def run(self, *argv: str, policy: Policy | None = None) -> Result[RunResult, SandboxError]:
        request = RunRequest(argv=list(argv), workspace=str(self.workspace))
        return anyio.run(self.backend.run, request, policy or self.policy)

    def ok(self, *argv: str, policy: Policy | None = None) -> RunResult:
        result = self.run(*argv, policy=policy)
        assert isinstance(result, Success), result
        value: RunResult = result.unwrap()
        return value

    def sh(self, script: str, policy: Policy | None = None) -> RunResult:
        return self.ok("/bin/sh", "-c", script, policy=policy)


def out(result: RunResult) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


# Each backend with the policy its runs need here: landlock has no pid namespace, process
# confines nothing (both best-effort, as their own tests run them).
BASE = Policy(limits=Limits(timeout_s=30))
LOOSE = attrs.evolve(
    BASE, enforcement=Enforcement.BEST_EFFORT, host_processes=HostProcesses.VISIBLE
)
Factory = Callable[[HelperProcessRunner, HostContext], Backend]
BACKENDS: dict[str, tuple[Factory, Policy]] = {
    "bubblewrap": (lambda runner, host: BubblewrapBackend(runner=runner, host=host), BASE),
    "landlock": (lambda runner, host: LandlockBackend(runner=runner, host=host), LOOSE),
    "process": (lambda runner, host: ProcessBackend(runner=runner, host=host), LOOSE),
}
HIDING = [
    pytest.param(name, marks=pytest.mark.backend(name)) for name in ("bubblewrap", "landlock")
]
ALL = [*HIDING, pytest.param("process", marks=pytest.mark.backend("process"))]


def make_box(runner: HelperProcessRunner, root: Path, name: str) -> Box:
    home = root / "home"
    make_home(home)
    workspace = root / "ws"
    (workspace / "sub").mkdir(parents=True)
    env = (("HOME", str(home)), ("LANG", "C.UTF-8"), ("PATH", host_path(home)))
    host = attrs.evolve(HostContext.current(), env=env, home=str(home))
    factory, policy = BACKENDS[name]
    backend = factory(runner, host)
    require_available(backend)
    return Box(
        backend=backend,
        home=home,
        workspace=workspace,
        policy=policy,
        host=host,
        remade=lambda other: factory(runner, other),
    )


@pytest.fixture
def box(request: pytest.FixtureRequest, runner: HelperProcessRunner, tmp_path: Path) -> Box:
    return make_box(runner, tmp_path, request.param)


# --- toolchains --------------------------------------------------------------------------------
@pytest.mark.parametrize("box", HIDING, indirect=True)
def test_toolchains_in_the_home_run_by_name(box: Box) -> None:
    """`pytest` from a pyenv shim, `cargo`, nvm's node, a tool of one's own on PATH: each
    found on the PATH the host gave, and its files read."""
    assert box.ok("mytool").stdout == b"toolchain ok\n"
    assert box.ok("mycargo").stdout == b"cargo ok\n"
    assert box.ok("mynode").stdout == b"node ok\n"
    assert box.ok("handmade").stdout == b"handmade ok\n"  # its root: the one above `bin`
    variables = box.sh('echo "$PYENV_ROOT $CARGO_HOME $NVM_DIR"').stdout.decode().split()
    assert variables == [str(box.home / ".pyenv"), str(box.home / ".cargo"), str(box.home / ".nvm")]


@pytest.mark.parametrize("box", HIDING, indirect=True)
def test_toolchains_are_read_only_and_their_tokens_hidden(box: Box) -> None:
    home = box.home
    run = box.sh(
        f"cat {home}/.cargo/credentials.toml; cat {home}/{NODE}/etc/npmrc; cat {home}/notes.txt; "
        f"touch {home}/.pyenv/planted && echo planted; echo x >> {home}/.cargo/bin/mycargo && "
        "echo appended; ls $(dirname $(command -v mytool))"
    )
    assert SECRET not in out(run)
    assert "planted" not in run.stdout.decode()
    assert "appended" not in run.stdout.decode()
    assert b"mytool" in run.stdout  # the toolchain itself is readable
    assert not (home / ".pyenv/planted").exists()
    assert (home / ".cargo/bin/mycargo").read_text().count("\n") == 2


@pytest.mark.parametrize("box", HIDING, indirect=True)
def test_toolchains_none_hides_them_and_says_which_option(box: Box) -> None:
    policy = attrs.evolve(box.policy, filesystem=attrs.evolve(box.policy.filesystem, toolchains=()))
    failed = box.run("mytool", policy=policy)
    assert isinstance(failed, Failure)
    error = failed.failure()
    assert isinstance(error, SpawnFailed)
    assert error.exit_status == 127
    assert str(box.home / ".pyenv/shims/mytool") in error.reason
    assert "--allow-read ~/.pyenv" in error.reason
    handmade = box.run("handmade", policy=policy)
    assert isinstance(handmade, Failure)
    assert "--allow-read ~/tools" in handmade.failure().message
    # The sandbox's PATH keeps only what it can see.
    assert box.sh('echo "$PATH"', policy=policy).stdout == b"/usr/bin:/bin\n"


@pytest.mark.parametrize("box", HIDING, indirect=True)
def test_a_visible_copy_wins_over_a_hidden_one(box: Box, tmp_path: Path) -> None:
    """The host's first hit is hidden from the sandbox; one further down PATH is not."""
    visible = tmp_path / "visible-bin"
    _tool(visible / "mytool", "echo visible copy")
    fs = attrs.evolve(box.policy.filesystem, toolchains=(), readable=(str(visible),))
    policy = attrs.evolve(box.policy, filesystem=fs)
    env = dict(box.host.env)
    env["PATH"] = f"{box.home / '.pyenv/shims'}:{visible}:/usr/bin:/bin"
    moved = attrs.evolve(box, backend=box.remade(attrs.evolve(box.host, env=tuple(env.items()))))
    assert moved.ok("mytool", policy=policy).stdout == b"visible copy\n"


# --- home --------------------------------------------------------------------------------------
@pytest.mark.parametrize("box", HIDING, indirect=True)
def test_home_is_private_writable_and_gone_after_the_run(box: Box) -> None:
    first = box.sh('echo state > "$HOME/.state" && cat "$HOME/.state" && echo "$HOME"')
    assert first.exit_code == 0, out(first)
    assert first.stdout.decode().splitlines()[0] == "state"
    home = first.stdout.decode().splitlines()[1]
    assert not (box.home / ".state").exists()  # not the host's home
    assert not os.path.exists(os.path.join(home, ".state"))  # gone with the run
    second = box.sh('cat "$HOME/.state" 2>/dev/null || echo fresh; ls "$HOME/notes.txt"')
    assert second.stdout == b"fresh\n"
    assert SECRET not in out(second)


@pytest.mark.parametrize("box", [ALL[2]], indirect=True)
def test_a_backend_that_hides_nothing_keeps_the_users_home(box: Box) -> None:
    assert box.sh('echo "$HOME"').stdout.decode().strip() == str(box.home)


# --- git identity ------------------------------------------------------------------------------
IDENTITY = """\
[environment]
set = { GIT_AUTHOR_NAME = "Ada", GIT_AUTHOR_EMAIL = "ada@example.com", \
GIT_COMMITTER_NAME = "Ada", GIT_COMMITTER_EMAIL = "ada@example.com" }
"""


def _identity_policy(box: Box, tmp_path: Path) -> Policy:
    """The box's policy with the identity a user configuration file gives."""
    user = tmp_path / "config.toml"
    user.write_text(IDENTITY)
    configured = load_policy(workspace=str(box.workspace), user_file=str(user)).unwrap().policy
    return attrs.evolve(
        configured,
        enforcement=box.policy.enforcement,
        host_processes=box.policy.host_processes,
        limits=box.policy.limits,
    )


def _repository(workspace: Path) -> None:
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    (workspace / "a.txt").write_text("a\n")


@pytest.mark.parametrize("box", ALL, indirect=True)
def test_git_knows_the_identity_from_config(box: Box, tmp_path: Path) -> None:
    _repository(box.workspace)
    run = box.ok("git", "var", "GIT_COMMITTER_IDENT", policy=_identity_policy(box, tmp_path))
    assert run.stdout.startswith(b"Ada <ada@example.com> "), out(run)


@pytest.mark.parametrize(
    "box",
    [
        ALL[0],
        pytest.param(
            "landlock",
            marks=[
                pytest.mark.backend("landlock"),
                pytest.mark.xfail(
                    reason="landlock: the directories holding protected paths (.git) accept "
                    "no new entries yet (index.lock)",
                    strict=False,
                ),
            ],
        ),
        ALL[2],
    ],
    indirect=True,
)
def test_git_commit_with_an_identity_from_config(box: Box, tmp_path: Path) -> None:
    _repository(box.workspace)
    script = "git add a.txt && git commit -qm first && git log -1 --format='%an <%ae> %s'"
    run = box.sh(script, policy=_identity_policy(box, tmp_path))
    assert run.exit_code == 0, out(run)
    assert run.stdout == b"Ada <ada@example.com> first\n"


# --- umask -------------------------------------------------------------------------------------
def _modes(box: Box, policy: Policy | None = None) -> tuple[str, int, int]:
    """The umask inside, and the modes of a file and a directory the command made."""
    run = box.sh("umask; touch sub/f; mkdir sub/d", policy=policy)
    assert run.exit_code == 0, out(run)
    created = box.workspace / "sub"
    file_mode, directory_mode = ((created / name).stat().st_mode for name in ("f", "d"))
    (created / "f").unlink()
    (created / "d").rmdir()
    return run.stdout.decode().strip(), stat.S_IMODE(file_mode), stat.S_IMODE(directory_mode)


@pytest.mark.parametrize("box", ALL, indirect=True)
def test_umask_is_022_unless_the_policy_says_otherwise(box: Box) -> None:
    assert _modes(box) == ("0022", 0o644, 0o755)
    fs = attrs.evolve(box.policy.filesystem, umask=0o077)
    assert _modes(box, attrs.evolve(box.policy, filesystem=fs)) == ("0077", 0o600, 0o700)
