"""`doctor --verify`: real attacks against each available backend, on this machine.

Every check runs the attack in the real sandbox and then looks at the *host* for its
effect (the file exists, the secret was printed, the process died, the listener saw a
connection). A check reports "held", "FAILED" (the attack worked), or "error" with the
reason when the attack could not be run at all — never a pass it did not observe.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
from returns.result import Failure

from mechasandbox.backends.base import Backend
from mechasandbox.backends.registry import AUTO_ORDER
from mechasandbox.containers import Application
from mechasandbox.domain.errors import partial_result
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.runner.escapers import ESCAPERS, PeakCounter, escaper_script
from mechasandbox.runner.proctable import alive_with_marker

POLICY = Policy(enforcement=Enforcement.BEST_EFFORT)


@attrs.frozen(kw_only=True)
class Arena:
    """A scratch workspace and an "outside" directory standing in for the host's files."""

    workspace: Path
    outside: Path


def _run(backend: Backend, arena: Arena, argv: list[str]) -> RunResult | str:
    request = RunRequest(argv=tuple(argv), workspace=str(arena.workspace))
    result = anyio.run(backend.run, request, POLICY)
    if isinstance(result, Failure):
        error = result.failure()
        partial = partial_result(error)
        return partial if partial is not None else f"{error.kind}: {error.message}"
    return result.unwrap()


def read_secret(backend: Backend, arena: Arena) -> bool | str:
    token = secrets.token_hex(8)
    secret = arena.outside / "id_rsa"
    secret.write_text(token)
    (arena.workspace / "link").symlink_to(secret)
    outcome = _run(backend, arena, ["sh", "-c", f"cat {secret} link 2>/dev/null"])
    if isinstance(outcome, str):
        return outcome
    return token.encode() not in outcome.stdout


def write_outside(backend: Backend, arena: Arena) -> bool | str:
    target = arena.outside / "planted"
    outcome = _run(backend, arena, ["sh", "-c", f"echo x > {target}"])
    return outcome if isinstance(outcome, str) else not target.exists()


def write_git_hook(backend: Backend, arena: Arena) -> bool | str:
    hooks = arena.workspace / ".git" / "hooks"
    hooks.mkdir(parents=True)
    script = (
        "echo x > .git/hooks/pre-commit; mv .git g 2>/dev/null && mkdir -p g/hooks"
        " && echo x > g/hooks/post-checkout && mv g .git"
    )
    outcome = _run(backend, arena, ["sh", "-c", script])
    if isinstance(outcome, str):
        return outcome
    return not (hooks / "pre-commit").exists() and not (hooks / "post-checkout").exists()


def write_git_config_after_host_rewrite(backend: Backend, arena: Arena) -> bool | str:
    """`git config` on the host renames a new `.git/config` over the protected one while
    the command runs: a cover that stood on the old file's entry comes off with it. Held
    when the command could not write the new one: it was refused, or the run was stopped
    (the watch of mount-based backends; see `linux.guards`)."""
    git = arena.workspace / ".git"
    (git / "hooks").mkdir(parents=True)
    config = git / "config"
    config.write_text("[core]\n")
    (arena.workspace / "src").mkdir()  # where even a carved workspace lets the command write
    marker = arena.workspace / "src" / "started"

    def rewrite() -> None:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        fresh = git / "config.lock"
        fresh.write_text("[core]\n\tbare = false\n")
        os.rename(fresh, config)

    rewriter = threading.Thread(target=rewrite)
    rewriter.start()
    try:
        script = "touch src/started; sleep 1; echo '[core] fsmonitor = evil' >> .git/config"
        outcome = _run(backend, arena, ["sh", "-c", script])
    finally:
        rewriter.join()
    if isinstance(outcome, str) and "was replaced on the host" not in outcome:
        return outcome
    if not marker.exists():
        return "the command never started"
    return "evil" not in config.read_text()


def redirect_git(backend: Backend, arena: Arena) -> bool | str:
    """A `.git/commondir` naming a directory of the workspace makes the host's git read
    that directory's config and run its hooks; a submodule's repository under
    `.git/modules` has hooks of its own. Held when neither was left on the host."""
    git = arena.workspace / ".git"
    (git / "hooks").mkdir(parents=True)
    (git / "config").write_text("[core]\n")
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (arena.workspace / "src").mkdir()  # where even a carved workspace lets the command write
    script = (
        "mkdir -p src/evil/hooks; echo x > src/evil/hooks/pre-commit; "
        "echo ../src/evil > .git/commondir; "
        "mkdir -p .git/modules/sub/hooks; echo x > .git/modules/sub/hooks/post-checkout"
    )
    outcome = _run(backend, arena, ["sh", "-c", script])
    if isinstance(outcome, str):
        return outcome
    return not (git / "commondir").exists() and not (git / "modules" / "sub").exists()


def leave_setuid_file(backend: Backend, arena: Arena) -> bool | str:
    """A file of the workspace made setuid (or setgid) by the command: any host user who
    runs it later gets the sandbox user's identity, root's where root ran the sandbox
    (containers, bubblewrap and landlock refuse the mode in their seccomp filter)."""
    planted = arena.workspace / "planted"
    script = "cat /bin/sh > planted; chmod 4755 planted; chmod 2755 planted; chmod ug+s planted"
    outcome = _run(backend, arena, ["sh", "-c", script])
    if isinstance(outcome, str):
        return outcome
    if not planted.exists():
        return "the command could not write the workspace"
    return not planted.stat().st_mode & (stat.S_ISUID | stat.S_ISGID)


ENV_SECRET_NAME = "MECHASANDBOX_VERIFY_API_KEY"  # noqa: S105 - a variable name, not a secret


def plant_environment_secret() -> None:
    """Put a fake API key in this process's environment *before* backends capture it."""
    os.environ.setdefault(ENV_SECRET_NAME, "sk-verify-" + secrets.token_hex(8))


def env_secret(backend: Backend, arena: Arena) -> bool | str:
    token = os.environ.get(ENV_SECRET_NAME)
    if token is None:
        return "plant_environment_secret() was not called before the backends were built"
    outcome = _run(backend, arena, ["env"])
    return outcome if isinstance(outcome, str) else token.encode() not in outcome.stdout


def signal_host_process(backend: Backend, arena: Arena) -> bool | str:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        outcome = _run(backend, arena, ["sh", "-c", f"kill -9 {victim.pid}"])
        if isinstance(outcome, str):
            return outcome
        time.sleep(0.1)
        return victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def _connect_command(port: int) -> list[str] | None:
    """A client that exists in the system roots every backend exposes (never a venv)."""
    for bash in ("/bin/bash", "/usr/bin/bash"):
        if os.path.exists(bash):
            return [bash, "-c", f"echo x > /dev/tcp/127.0.0.1/{port}"]
    for python in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(python):
            code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
            return [python, "-c", code]
    return None


def loopback_connect(backend: Backend, arena: Arena) -> bool | str:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        command = _connect_command(server.getsockname()[1])
        if command is None:
            return "no bash or python3 in the system roots to make the connection with"
        outcome = _run(backend, arena, command)
        if isinstance(outcome, str):
            return outcome
        try:
            connection, _ = server.accept()
        except TimeoutError:
            return True
        connection.close()
        return False


def outlive_the_run(backend: Backend, arena: Arena) -> bool | str:
    marker = f"verify-{secrets.token_hex(4)}"
    script = escaper_script(marker, then="sleep 0.5; echo started")
    with PeakCounter(marker) as seen:
        outcome = _run(backend, arena, ["sh", "-c", script])
    if isinstance(outcome, str):
        return outcome
    if seen.peak < ESCAPERS:
        return f"only {seen.peak} of {ESCAPERS} escaping processes were seen running"
    time.sleep(0.2)
    survivors = alive_with_marker(marker)
    for pid in survivors:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return not survivors


ATTACKS: tuple[tuple[str, Callable[[Backend, Arena], bool | str]], ...] = (
    ("read a secret outside the workspace (directly and via a planted symlink)", read_secret),
    ("write outside the workspace", write_outside),
    ("plant a git hook (directly and by renaming .git)", write_git_hook),
    (
        "write .git/config after a host `git config` replaced it during the run",
        write_git_config_after_host_rewrite,
    ),
    ("redirect git to planted hooks (.git/commondir, .git/modules)", redirect_git),
    ("leave a setuid/setgid file in the workspace", leave_setuid_file),
    ("read a host API key from the environment", env_secret),
    ("kill a host process", signal_host_process),
    ("connect to a loopback TCP server of the host", loopback_connect),
    ("leave a setsid/nohup process running after the run", outlive_the_run),
)


def verify_backend(backend: Backend) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for title, attack in ATTACKS:
        with tempfile.TemporaryDirectory(prefix="mechasandbox-verify-") as scratch:
            arena = Arena(workspace=Path(scratch, "workspace"), outside=Path(scratch, "outside"))
            arena.workspace.mkdir()
            arena.outside.mkdir()
            verdict = attack(backend, arena)
        if isinstance(verdict, str):
            checks.append({"attack": title, "outcome": f"error ({verdict})"})
        else:
            checks.append({"attack": title, "outcome": "held" if verdict else "FAILED"})
    return checks


def verify_backends(app: Application) -> dict[str, list[dict[str, Any]]]:
    report: dict[str, list[dict[str, Any]]] = {}
    for name in AUTO_ORDER:
        backend = getattr(app.backends, name.replace("-", "_"))()
        if isinstance(backend.probe(), Failure):
            continue
        report[name] = verify_backend(backend)
    return report
