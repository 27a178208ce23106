"""The attacks of `doctor --verify` (see `verify`): each runs in the real sandbox of a
backend, then looks at the host for its effect. True: the protection held; False: the
attack worked; a string: why it could not be made."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import attrs
from returns.result import Failure

from mechasandbox.backends.base import Backend
from mechasandbox.domain.errors import partial_result
from mechasandbox.domain.policy import (
    Enforcement,
    EnvironmentPolicy,
    FilesystemPolicy,
    NetworkMode,
    NetworkPolicy,
    Policy,
)
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


def _run(
    backend: Backend, arena: Arena, argv: list[str], policy: Policy = POLICY
) -> RunResult | str:
    request = RunRequest(argv=tuple(argv), workspace=str(arena.workspace))
    result = anyio.run(backend.run, request, policy)
    if isinstance(result, Failure):
        error = result.failure()
        partial = partial_result(error)
        return partial if partial is not None else f"{error.kind}: {error.message}"
    return result.unwrap()


def _held_after(
    backend: Backend, arena: Arena, script: str, held: Callable[[RunResult], bool | str]
) -> bool | str:
    """`sh -c script` run: why it could not be, or what `held` says after it."""
    outcome = _run(backend, arena, ["sh", "-c", script])
    return outcome if isinstance(outcome, str) else held(outcome)


def read_secret(backend: Backend, arena: Arena) -> bool | str:
    token = secrets.token_hex(8)
    secret = arena.outside / "id_rsa"
    secret.write_text(token)
    (arena.workspace / "link").symlink_to(secret)
    outcome = _run(backend, arena, ["sh", "-c", f"cat {secret} link 2>/dev/null"])
    if isinstance(outcome, str):
        return outcome
    return token.encode() not in outcome.stdout


def read_denied_in_workspace(backend: Backend, arena: Arena) -> bool | str:
    """A `deny_read` entry inside the workspace (a file and a directory), which a backend
    that mounts the workspace whole must mask (containers once printed it)."""
    token = secrets.token_hex(8)
    (arena.workspace / "secret.txt").write_text(token)
    (arena.workspace / "keys").mkdir()
    (arena.workspace / "keys" / "id").write_text(token)
    denied = (str(arena.workspace / "secret.txt"), str(arena.workspace / "keys"))
    policy = attrs.evolve(
        POLICY, filesystem=FilesystemPolicy(deny_read=(*FilesystemPolicy().deny_read, *denied))
    )
    outcome = _run(backend, arena, ["sh", "-c", "cat secret.txt keys/id 2>/dev/null"], policy)
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
    return _held_after(
        backend,
        arena,
        script,
        lambda _: not (hooks / "pre-commit").exists() and not (hooks / "post-checkout").exists(),
    )


def write_git_config_after_host_rewrite(backend: Backend, arena: Arena) -> bool | str:
    """`git config` on the host renames a new `.git/config` over the protected one while
    the command runs: a cover that stood on the old file's entry comes off with it. Held
    when the command could not write the new one: it was refused, or the run was stopped
    (the watch of mount-based backends; see `workspace.guards`)."""
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


def _repository(git: Path, config: str) -> Path:
    """A git directory `git` with a hooks directory, a HEAD and `config`."""
    (git / "hooks").mkdir(parents=True)
    (git / "config").write_text(config)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    return git


def redirect_git(backend: Backend, arena: Arena) -> bool | str:
    """A `.git/commondir` naming a directory of the workspace makes the host's git read
    that directory's config and run its hooks; a submodule's repository under
    `.git/modules` has hooks of its own. Held when neither was left on the host."""
    git = _repository(arena.workspace / ".git", "[core]\n")
    (arena.workspace / "src").mkdir()  # where even a carved workspace lets the command write
    script = (
        "mkdir -p src/evil/hooks; echo x > src/evil/hooks/pre-commit; "
        "echo ../src/evil > .git/commondir; "
        "mkdir -p .git/modules/sub/hooks; echo x > .git/modules/sub/hooks/post-checkout"
    )
    return _held_after(
        backend,
        arena,
        script,
        lambda _: not (git / "commondir").exists() and not (git / "modules" / "sub").exists(),
    )


def hostile_project(backend: Backend, arena: Arena) -> bool | str:
    """A repository's `.mechasandbox.toml` making a planted `ref -> <outside>` readable and
    un-protecting `.git/hooks` with `protected = ["/"]`; then the same symlink named in the
    policy directly (a check of the configuration can be raced: the mounts must not follow
    it either). Held when the secret was not printed and no hook was left."""
    from mechasandbox.config.loading import load_policy  # cattrs: only for this check

    token = secrets.token_hex(8)
    (arena.outside / "secret").write_text(token)
    ref = arena.workspace / "ref"
    ref.symlink_to(arena.outside)
    (arena.workspace / ".git" / "hooks").mkdir(parents=True)
    (arena.workspace / ".mechasandbox.toml").write_text(
        f'[filesystem]\nreadable = ["{ref}"]\nprotected = ["/"]\n'
    )
    script = "cat ref/secret; echo x > .git/hooks/pre-commit"
    loaded = load_policy(workspace=str(arena.workspace))
    policies = [] if isinstance(loaded, Failure) else [loaded.unwrap().policy]
    (arena.workspace / ".mechasandbox.toml").unlink()
    direct = FilesystemPolicy(readable=(str(ref),), writable=(str(ref),))
    policies.append(attrs.evolve(POLICY, filesystem=direct))
    for policy in policies:
        outcome = _run(
            backend,
            arena,
            ["sh", "-c", script],
            attrs.evolve(policy, enforcement=Enforcement.BEST_EFFORT),
        )
        if isinstance(outcome, str):
            return outcome
        if token.encode() in outcome.stdout:
            return False
    return not (arena.workspace / ".git" / "hooks" / "pre-commit").exists()


# A global sysctl (no namespace has its own): a write to it that goes through is a write to
# the host kernel's settings, as one to `kernel.core_pattern` would be (its `|program` runs
# as host root at the next crash).
KERNEL_SETTING = Path("/proc/sys/fs/lease-break-time")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def write_kernel_setting(backend: Backend, arena: Arena) -> bool | str:
    """Writes the value `fs.lease-break-time` has back into it, so the host changes in
    nothing even where the write goes through; the command says whether it did. Held when
    it did not, or when the kernel it wrote to is not the host's (gVisor's has a boot id of
    its own)."""
    if not KERNEL_SETTING.exists() or not BOOT_ID.exists():
        return f"this kernel has no {KERNEL_SETTING} or {BOOT_ID}"
    script = (
        f"v=$(cat {KERNEL_SETTING}) && printf '%s\\n' \"$v\" > {KERNEL_SETTING} "
        f"&& echo written; cat {BOOT_ID}; echo ran"
    )
    outcome = _run(backend, arena, ["sh", "-c", script])
    if isinstance(outcome, str):
        return outcome
    said = outcome.stdout.decode(errors="replace").split()
    if "ran" not in said:
        return "the command did not run to its end"
    if "written" not in said:
        return True
    if BOOT_ID.read_text().strip() in said:
        return False
    if len(said) == 3:  # written, another kernel's boot id, ran
        return True
    return "the write went through, and the sandbox did not tell which kernel it reached"


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


def follow_git_settings(backend: Backend, arena: Arena) -> bool | str:
    """Git runs what its settings lead to: a `core.hooksPath` directory (missing here), an
    included configuration file, a nested repository's configuration. Held when none of
    them could be planted."""
    _repository(
        arena.workspace / ".git",
        "[core]\n\thooksPath = tools/hooks\n[include]\n\tpath = ../tools/extra.gitconfig\n",
    )
    tools = arena.workspace / "tools"
    tools.mkdir()
    (tools / "extra.gitconfig").write_text("")
    nested = _repository(arena.workspace / "src" / "lib" / ".git", "[core]\n")
    script = (
        "mkdir -p tools/hooks; echo x > tools/hooks/pre-commit; "
        "echo '[core] fsmonitor = evil' >> tools/extra.gitconfig; "
        "echo '[core] fsmonitor = evil' >> src/lib/.git/config"
    )
    return _held_after(
        backend,
        arena,
        script,
        lambda _: (
            not (tools / "hooks" / "pre-commit").exists()
            and "evil" not in (tools / "extra.gitconfig").read_text()
            and "evil" not in (nested / "config").read_text()
        ),
    )


def make_armed_repository(backend: Backend, arena: Arena) -> bool | str:
    """A repository the command makes cannot be protected beforehand: held when the one it
    made, with a setting that runs a command, is no longer where git would find it."""
    (arena.workspace / ".git" / "hooks").mkdir(parents=True)
    (arena.workspace / ".git" / "config").write_text("[core]\n")
    (arena.workspace / "src").mkdir()
    script = (
        "mkdir -p src/new/.git/refs src/new/.git/objects; "
        "echo 'ref: refs/heads/main' > src/new/.git/HEAD; "
        "printf '[core]\\n\\tfsmonitor = evil\\n' > src/new/.git/config"
    )
    config = arena.workspace / "src" / "new" / ".git" / "config"
    return _held_after(
        backend, arena, script, lambda _: not (config.exists() and "evil" in config.read_text())
    )


def env_secret(backend: Backend, arena: Arena) -> bool | str:
    token = os.environ.get(ENV_SECRET_NAME)
    if token is None:
        return "plant_environment_secret() was not called before the backends were built"
    outcome = _run(backend, arena, ["env"])
    return outcome if isinstance(outcome, str) else token.encode() not in outcome.stdout


def _loader_report(path: Path) -> dict[str, str]:
    """Variables that make this platform's loader write a report to `path` (glibc adds the
    pid to the name): a harmless stand-in for LD_PRELOAD / DYLD_INSERT_LIBRARIES."""
    if sys.platform == "darwin":
        return {"DYLD_PRINT_LIBRARIES": "1", "DYLD_PRINT_TO_FILE": str(path)}
    return {"LD_DEBUG": "files", "LD_DEBUG_OUTPUT": str(path)}


def launcher_loader(backend: Backend, arena: Arena) -> bool | str:
    """The policy's variables (a project layer writes them) set the loader's report file
    to a path outside the workspace, which only a process outside the sandbox can write:
    held when no report appears there, i.e. no launcher that runs on the host (bwrap,
    sandbox-exec, an engine's CLI) got them. A host process given the same variables first
    shows that this host's loader honours them: else nothing could be seen."""
    control = arena.outside / "control"
    subprocess.run(
        [sys.executable, "-S", "-c", ""], env=_loader_report(control), check=False, timeout=30
    )
    if not any(arena.outside.glob("control*")):
        return "this host's loader ignores its report variables: nothing to observe"
    variables = tuple(sorted(_loader_report(arena.outside / "launcher").items()))
    policy = attrs.evolve(POLICY, environment=EnvironmentPolicy(set=variables))
    outcome = _run(backend, arena, ["true"], policy)
    if isinstance(outcome, str):
        return outcome
    return not any(arena.outside.glob("launcher*"))


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


def _python() -> str | None:
    return next(
        (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None
    )


def unix_socket_with_full_network(backend: Backend, arena: Arena) -> bool | str:
    """A path socket in a readable directory (as docker.sock or the ssh agent's are), an
    abstract one (as the session bus's, X11's), and a datagram one (as journald's) sent to
    through a socketpair: host control, not network."""
    python = _python()
    if python is None:
        return "no python3 in the system roots to make the connection with"
    path = str(arena.outside / "agent.sock")
    datagram = str(arena.outside / "notify.sock")
    abstract = "\0mechasandbox-verify-" + secrets.token_hex(6)
    policy = attrs.evolve(
        POLICY,
        network=NetworkPolicy(mode=NetworkMode.FULL),
        filesystem=attrs.evolve(POLICY.filesystem, readable=(str(arena.outside),)),
    )
    code = (
        "import socket\n"
        f"for address in ({path!r}, {abstract!r}):\n"
        "    try:\n"
        "        socket.socket(socket.AF_UNIX).connect(address)\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        f"    pair[0].sendto(b'x', {datagram!r})\n"
        "except OSError:\n"
        "    pass\n"
    )
    with contextlib.ExitStack() as stack:
        servers = []
        for address in (path, abstract):
            server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            server.bind(address)
            server.listen(2)
            server.setblocking(False)
            servers.append(server)
        receiver = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        receiver.bind(datagram)
        receiver.setblocking(False)
        # Anyone may connect (as to docker.sock for its group): a refusal must come from
        # the sandbox, not from the socket's mode, when the command runs as another uid.
        for socket_path in (path, datagram):
            os.chmod(socket_path, 0o777)  # noqa: S103
        outcome = _run(backend, arena, [python, "-c", code], policy)
        if isinstance(outcome, str):
            return outcome
        with contextlib.suppress(BlockingIOError):
            receiver.recv(8)
            return False
        for server in servers:
            try:
                connection, _ = server.accept()
            except BlockingIOError:
                continue
            connection.close()
            return False
        return True


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
