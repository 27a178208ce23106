"""The `apple-container` backend: Apple's `container` CLI, one lightweight Linux VM per run.

What it enforces: the command sees only the image and the mounts we give it (the
workspace read-write at its own path, the policy's extra paths), so host secrets are out
of reach and writes land only in the workspace or the private `/tmp` (a tmpfs: the image's
root is read-only); host processes are in another kernel; `--network none` leaves the VM
without a network interface; `--memory` bounds the whole VM. The command runs as the
caller's uid and gid with every capability dropped, so the rlimits given with `--ulimit`
bind it (CPU time, open files, file size, and the process count, which in its VM counts
only the run's processes). Timeouts and cancellation kill and delete the container.

What it does not: protected paths *inside* the workspace (the mount is one read-write
tree), `deny_read`/`deny_write` paths inside a mount, the network allowlist (no bridge to
the host proxy yet), and the process count for a root caller (RLIMIT_NPROC does not bind
root). Its capabilities say so.

The flags need a recent `container` CLI (`CLI_FLAG_VERSIONS`); the probe reads
`container --version` and says which flag an older one lacks.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import posixpath
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable

import anyio
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan, scrubbed_environment
from mechasandbox.backends.capability_table import RUNNER, CapabilityTable
from mechasandbox.backends.template import Job, Launch, SpawningBackend, spawn_spec
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import (
    BackendUnavailable,
    ConfigInvalid,
    PolicyUnsupported,
    SandboxError,
)
from mechasandbox.domain.limits import MIB
from mechasandbox.domain.policy import Enforcement, NetworkMode, Policy
from mechasandbox.domain.request import RunRequest, Terminal, terminal_refused
from mechasandbox.domain.result import RunResult
from mechasandbox.limits.rlimits import rlimits_for
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import SpawnSpec

# Shown in `policy` output when no image is configured; never pulled.
IMAGE_PLACEHOLDER = "<no image configured>"
MIN_MACOS = (26,)
# Inside the Linux VM the host's PATH (/opt/homebrew/bin, ...) means nothing.
LINUX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The home directory the command sees, unless the policy sets one: the host's does not
# exist in the image, and the read-only root leaves the private /tmp as the one writable
# place outside the mounts (as for docker and podman).
CONTAINER_HOME = "/tmp"
# Each flag the backend emits and the CLI release that brought it (apple/container's
# `Flags.swift` at each tag). Below the newest of them the backend is unavailable: an
# older CLI refuses the unknown flag, so no run would start anyway.
CLI_FLAG_VERSIONS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("--network none", (0, 6, 0)),
    ("--read-only", (0, 8, 0)),
    ("--ulimit", (0, 9, 0)),
    ("--cap-drop", (0, 12, 0)),
)
MIN_CLI_VERSION = max(version for _flag, version in CLI_FLAG_VERSIONS)
# `container --version`: "container CLI version 0.12.3 (build: release, commit: 1a2b3c4)".
_CLI_VERSION = re.compile(r"\bversion (\d+)\.(\d+)\.(\d+)\b")
NAME_PREFIX = "mechasandbox-"
_CLEANUP_TIMEOUT_S = 30.0
_STATUS_TTL_S = 30.0
# `-v`/`--mount` values are split on these: a path holding one cannot be passed safely.
_MOUNT_SEPARATORS = (":", ",", "=", "\n", "\x00")


@attrs.frozen(kw_only=True)
class ContainerInvocation:
    """`container run` arguments plus the env-file they refer to (kept off the argv, where
    other local users could read values with `ps`)."""

    argv: tuple[str, ...]
    name: str
    env_file: str
    warnings: tuple[str, ...] = ()


def _mount_path(path: str, field: str) -> Result[str, ConfigInvalid]:
    bad = next((sep for sep in _MOUNT_SEPARATORS if sep in path), None)
    if bad is not None:
        return Failure(
            ConfigInvalid(
                problem=f"path {path!r} contains {bad!r}, which container mount syntax "
                "cannot carry",
                field=field,
            )
        )
    if not posixpath.isabs(path):
        return Failure(ConfigInvalid(problem=f"path {path!r} must be absolute", field=field))
    return Success(posixpath.normpath(path))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


Mount = tuple[str, bool]  # (host path, read-only)


def _mounts(
    request: RunRequest, policy: Policy, host: HostContext, realpath: Callable[[str], str]
) -> Result[tuple[Mount, ...], SandboxError]:
    """The workspace read-write, then the policy's readable (read-only) and writable paths.

    The CLI mounts directories only (virtiofs); a file path fails when the run starts."""
    fs = policy.filesystem
    wanted = [("workspace", request.workspace, False)]
    wanted += [("filesystem.readable", host.expand(p), True) for p in fs.readable]
    wanted += [("filesystem.writable", host.expand(p), False) for p in fs.writable]
    mounts: list[Mount] = []
    for field, path, readonly in wanted:
        if not posixpath.isabs(path):  # before realpath, which would use our own cwd
            return Failure(ConfigInvalid(problem=f"path {path!r} must be absolute", field=field))
        checked = _mount_path(realpath(path), field)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        mounts.append((checked.unwrap(), readonly))
    return Success(tuple(mounts))


def _carve_outs(
    policy: Policy, host: HostContext, mounts: tuple[Mount, ...], realpath: Callable[[str], str]
) -> Result[tuple[str, ...], SandboxError]:
    """deny_read/deny_write paths inside a mount cannot be carved out of it: refuse (strict)
    or warn (best-effort)."""
    workspace = mounts[0][0]
    fs = policy.filesystem
    checks = [("deny_read", e, Protection.FILESYSTEM_READ, False) for e in fs.deny_read]
    checks += [("deny_write", e, Protection.FILESYSTEM_WRITE, True) for e in fs.deny_write]
    warnings: list[str] = []
    for label, entry, protection, writable_only in checks:
        path = realpath(posixpath.join(workspace, host.expand(entry)))
        exposed = any(
            _within(path, mount) for mount, readonly in mounts if not (writable_only and readonly)
        )
        if not exposed:
            continue
        if policy.enforcement is Enforcement.STRICT:
            return Failure(PolicyUnsupported(backend="apple-container", missing=(protection,)))
        warnings.append(f"not enforced by apple-container: {label} {entry!r} is inside a mount")
    return Success(tuple(warnings))


def _container_env(policy: Policy, host: HostContext) -> Result[str, SandboxError]:
    """The env-file content: the scrubbed environment, with a Linux PATH unless set and
    HOME in the private /tmp unless the policy passes or sets one."""
    env = scrubbed_environment(policy.environment, dict(host.env))
    if "PATH" not in dict(policy.environment.set):
        env["PATH"] = LINUX_PATH
    env.setdefault("HOME", CONTAINER_HOME)
    for key, value in env.items():
        # The CLI splits its env-file on every Unicode line break, and on the first "=".
        if len(f"{key}={value}".splitlines()) != 1 or "=" in key:
            return Failure(
                ConfigInvalid(
                    problem=f"environment variable {key!r} cannot be passed (line break or '=')",
                    field="environment",
                )
            )
    return Success("".join(f"{key}={value}\n" for key, value in sorted(env.items())))


def _identity_and_limits(policy: Policy, host: HostContext) -> list[str]:
    """The command as the caller's uid and gid, without capabilities, on a read-only root
    with a private /tmp, under the policy's rlimits.

    Not root, and no CAP_SYS_RESOURCE: the rlimits bind and cannot be raised. RLIMIT_NPROC
    counts the processes of the uid, and in the run's own VM only the run's have it; for a
    root caller (uid 0 here too) it does not bind and is left out. Memory is the VM's
    (`--memory`), not RLIMIT_AS.
    """
    args = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    args += ["--uid", str(host.uid), "--gid", str(host.gid)]
    settings = rlimits_for(policy.limits, memory_by_rlimit=False, processes_by_rlimit=host.uid != 0)
    for setting in settings:  # RLIMIT_NOFILE -> nofile: the CLI's names
        name = setting.resource.removeprefix("RLIMIT_").lower()
        args += ["--ulimit", f"{name}={setting.soft}:{setting.hard}"]
    return args


def compile_args(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    *,
    cli: str,
    image: str,
    name: str,
    env_file: str,
    cpus: int | None = None,
    realpath: Callable[[str], str] = posixpath.normpath,
) -> Result[ContainerInvocation, SandboxError]:
    """The `container run` argv for `request` under `policy` (pure; `realpath` injected).

    The workspace is mounted read-write at its own host path, so paths the agent prints
    mean the same inside and out; extra readable/writable paths likewise, read-only or not.
    `--entrypoint` is the command itself, so an image's entrypoint never wraps it.
    `--interactive` only when the request has stdin: otherwise the CLI keeps it closed.
    """
    if policy.network.mode is NetworkMode.ALLOWLIST:
        return Failure(
            PolicyUnsupported(backend="apple-container", missing=(Protection.NETWORK_ALLOWLIST,))
        )

    def invocation(mounts: tuple[Mount, ...]) -> Result[ContainerInvocation, SandboxError]:
        argv: list[str] = [cli, "run", "--rm", "--name", name]
        if request.stdin is not None:
            argv.append("--interactive")
        if policy.network.mode is NetworkMode.NONE:
            argv += ["--network", "none"]
        argv += _identity_and_limits(policy, host)
        if policy.limits.memory_bytes is not None:
            argv += ["--memory", f"{max(1, math.ceil(policy.limits.memory_bytes / MIB))}M"]
        if cpus is not None:
            argv += ["--cpus", str(cpus)]
        for path, readonly in mounts:
            suffix = ",readonly" if readonly else ""
            argv += ["--mount", f"type=bind,source={path},target={path}{suffix}"]
        argv += ["--workdir", mounts[0][0], "--env-file", env_file]
        argv += ["--entrypoint", request.argv[0], image, *request.argv[1:]]
        warnings = _carve_outs(policy, host, mounts, realpath)
        content = _container_env(policy, host)
        return warnings.bind(
            lambda found: content.map(
                lambda text: ContainerInvocation(
                    argv=tuple(argv), name=name, env_file=text, warnings=found
                )
            )
        )

    return _mounts(request, policy, host, realpath).bind(invocation)


def parse_cli_version(output: str) -> tuple[int, int, int] | None:
    """The release in `container --version`'s output, None when it names none."""
    match = _CLI_VERSION.search(output)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


def cli_version_problem(output: str) -> str | None:
    """None when `container --version`'s output names a release new enough for every flag
    of `CLI_FLAG_VERSIONS`; else why not, naming the release and what it lacks."""
    version = parse_cli_version(output)
    needed = ".".join(map(str, MIN_CLI_VERSION))
    if version is None:
        shown = output.strip()[:200] or "nothing"
        return f"cannot tell the `container` CLI's release (`container --version` said {shown})"
    if version >= MIN_CLI_VERSION:
        return None
    lacking = ", ".join(flag for flag, since in CLI_FLAG_VERSIONS if version < since)
    shown = ".".join(map(str, version))
    return f"the `container` CLI is {shown}; {needed} or newer is needed (it lacks {lacking})"


class CliVersion:
    """`container --version` of a CLI: its output, or why it gave none. Read once per
    binary (path, inode and modification time, so an upgrade is read again). State of a
    backend (its field); it holds nothing outside the process."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int, int], str] = {}

    def __call__(self, cli: str) -> Result[str, str]:
        try:
            status = os.stat(cli)
        except OSError as error:
            return Failure(f"`container --version` failed: {error}")
        key = (cli, status.st_ino, status.st_mtime_ns)
        if key in self._seen:
            return Success(self._seen[key])
        try:
            completed = subprocess.run(
                [cli, "--version"], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return Failure(f"`container --version` failed: {error}")
        output = (completed.stdout + completed.stderr).decode(errors="replace").strip()
        if completed.returncode != 0:
            return Failure(f"`container --version` exited {completed.returncode}: {output}")
        self._seen[key] = output
        return Success(output)


def _macos_version() -> tuple[int, ...]:
    release = platform.mac_ver()[0]
    return tuple(int(part) for part in release.split(".") if part.isdigit())


class SystemStatus:
    """`container system status` of a CLI: None when it says the services run, else why
    not. A "running" is believed for `_STATUS_TTL_S` (every probe asks; the answer takes
    a process). State of a backend (its field); it holds nothing outside the process."""

    def __init__(self) -> None:
        self._ok_until: dict[str, float] = {}

    def __call__(self, cli: str) -> str | None:
        now = time.monotonic()
        if self._ok_until.get(cli, 0.0) > now:
            return None
        try:
            completed = subprocess.run(
                [cli, "system", "status"], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`container system status` failed: {error}"
        if completed.returncode != 0:
            output = (completed.stdout + completed.stderr).decode(errors="replace").strip()
            return f"container services are not running (`container system start`): {output}"
        self._ok_until[cli] = now + _STATUS_TTL_S
        return None


@attrs.frozen(kw_only=True)
class ContainerSetting:
    """What a run's compile gets besides the policy: the CLI, the container's name and the
    env-file's path."""

    cli: str
    name: str
    env_file: str


_RLIMIT = "in the VM, as the caller's uid without capabilities"
_APPLE_CONTAINER = RUNNER | CapabilityTable(
    enforced={
        Protection.FILESYSTEM_READ: "VM sees only the image and the mounts",
        Protection.FILESYSTEM_WRITE: "only the mounts reach the host; read-only root, "
        "private /tmp (tmpfs)",
        Protection.NETWORK_NONE: "--network none: no interface in the VM",
        Protection.PID_ISOLATION: "separate kernel per run",
        Protection.TREE_TEARDOWN: "container kill + delete on timeout/cancel",
        Protection.MEMORY: "--memory of the VM",
        Protection.CPU: f"--ulimit cpu (RLIMIT_CPU) {_RLIMIT}",
        Protection.OPEN_FILES: f"--ulimit nofile (RLIMIT_NOFILE) {_RLIMIT}",
        Protection.FILE_SIZE: f"--ulimit fsize (RLIMIT_FSIZE) {_RLIMIT}",
    },
    gaps={
        Protection.PROTECTED_PATHS: "the workspace is one read-write mount",
        Protection.NETWORK_ALLOWLIST: "no bridge from the VM to the host proxy",
        Protection.NAMED_UNIX_SOCKETS: "host unix sockets are not passed to the VM",
    },
)
_PROCESSES = CapabilityTable(
    enforced={
        Protection.PROCESSES: "--ulimit nproc (RLIMIT_NPROC): the caller's uid has only "
        "the run's processes in its VM"
    }
)
_PROCESSES_ROOT = CapabilityTable(
    gaps={Protection.PROCESSES: "RLIMIT_NPROC does not apply to root (the caller's uid, 0)"}
)


@attrs.frozen(kw_only=True)
class AppleContainerBackend(SpawningBackend[ContainerInvocation, ContainerSetting]):
    """Runs each command as `container run --rm … IMAGE argv` in a fresh VM.

    `image` must provide the command's toolchain and must be configured: without one the
    backend is unavailable (so `auto` moves on to Seatbelt) rather than pulling a public
    image the user never chose. `cpus` sets the VM's CPU count. The
    callables are injection points for tests (CLI lookup, macOS version, the CLI's
    `--version`, service status).
    """

    runner: ProcessRunner
    host: HostContext = attrs.field(factory=HostContext.current)
    image: str | None = None
    cpus: int | None = None
    realpath: Callable[[str], str] = os.path.realpath
    which: Callable[[str], str | None] = shutil.which
    macos_version: Callable[[], tuple[int, ...]] = _macos_version
    # (Reads each binary's release once: see `CliVersion`.)
    cli_version: Callable[[str], Result[str, str]] = attrs.field(
        factory=CliVersion, eq=False, repr=False
    )
    # (Remembers a "running" for a while: see `SystemStatus`.)
    system_status: Callable[[str], str | None] = attrs.field(
        factory=SystemStatus, eq=False, repr=False
    )

    @property
    def name(self) -> str:
        return "apple-container"

    def _cli(self) -> Result[str, BackendUnavailable]:
        def unavailable(reason: str) -> Result[str, BackendUnavailable]:
            return Failure(BackendUnavailable(backend=self.name, reason=reason))

        if self.host.platform != "darwin":
            return unavailable(f"needs macOS 26+ (this host is {self.host.platform})")

        version = self.macos_version()
        if version < MIN_MACOS:
            shown = ".".join(map(str, version)) or "unknown"
            return unavailable(f"needs macOS 26+ (this is macOS {shown})")
        cli = self.which("container")
        if cli is None:
            return unavailable("the `container` CLI is not installed (github.com/apple/container)")
        output = self.cli_version(cli)
        if isinstance(output, Failure):
            return unavailable(output.failure())
        too_old = cli_version_problem(output.unwrap())
        if too_old is not None:
            return unavailable(too_old)
        problem = self.system_status(cli)
        if problem is not None:
            return unavailable(problem)
        if not self.image:
            return unavailable("no image configured (set `image` to one that has your tools)")
        return Success(cli)

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        processes = _PROCESSES_ROOT if self.host.uid == 0 else _PROCESSES
        table = _APPLE_CONTAINER | processes
        return self._cli().map(lambda _cli: table.capabilities(self.name))

    def compile(
        self, job: Job, setting: ContainerSetting
    ) -> Result[Launch[ContainerInvocation], SandboxError]:
        if isinstance(job.request.stdin, Terminal):  # its CLI would need the caller's pty
            return Failure(ConfigInvalid(problem=terminal_refused(self.name), field="stdin"))
        compiled = compile_args(
            attrs.evolve(job.request, workspace=job.workspace),
            job.policy,
            job.host,
            cli=setting.cli,
            image=self.image or IMAGE_PLACEHOLDER,
            name=setting.name,
            env_file=setting.env_file,
            cpus=self.cpus,
            realpath=self.realpath,
        )
        return compiled.map(
            lambda invocation: Launch(
                spec=spawn_spec(
                    job, argv=invocation.argv, env=_cli_env(job.host), executable=setting.cli
                ),
                compiled=invocation,
                warnings=invocation.warnings,
            )
        )

    def plan_setting(self, policy: Policy) -> ContainerSetting:
        return ContainerSetting(
            cli=self.which("container") or "container",
            name=NAME_PREFIX + "<run-id>",
            env_file="<private env file>",
        )

    def describe(
        self, job: Job, launch: Launch[ContainerInvocation], setting: ContainerSetting
    ) -> LaunchPlan:
        invocation = launch.compiled
        names = " ".join(line.split("=", 1)[0] for line in invocation.env_file.splitlines())
        return LaunchPlan(
            backend=self.name,
            sections=(
                ("argv", " ".join(invocation.argv)),
                ("environment", names),
                ("image", self.image or IMAGE_PLACEHOLDER),
            ),
            warnings=invocation.warnings
            + (() if self.image else ("no image configured: runs are refused",)),
        )

    def open_setting(
        self, workspace: str, policy: Policy
    ) -> Result[ContainerSetting, SandboxError]:
        def opened(cli: str) -> ContainerSetting:
            private = tempfile.mkdtemp(prefix=NAME_PREFIX)
            name = NAME_PREFIX + uuid.uuid4().hex[:16]
            return ContainerSetting(cli=cli, name=name, env_file=os.path.join(private, "env"))

        found: Result[str, SandboxError] = self._cli()
        return found.map(opened)

    def close_setting(self, setting: ContainerSetting, workspace: str) -> None:
        shutil.rmtree(os.path.dirname(setting.env_file), ignore_errors=True)

    async def launch(
        self, job: Job, launch: Launch[ContainerInvocation], setting: ContainerSetting
    ) -> Result[RunResult, SandboxError]:
        """The env-file written (private, as the directory it is in); after a run that did
        not finish, the container killed and deleted."""
        fd = os.open(setting.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(launch.compiled.env_file)
        finished = False
        try:
            result = await super().launch(job, launch, setting)
            finished = isinstance(result, Success) and result.unwrap().exit_code is not None
        finally:
            if not finished:
                with anyio.CancelScope(shield=True):
                    await self._remove(setting.cli, setting.name, job.workspace)
        return result

    async def _remove(self, cli: str, name: str, cwd: str) -> None:
        """Kill and delete the container: killing the CLI alone leaves the VM running."""
        for argv in ((cli, "kill", name), (cli, "delete", "--force", name)):
            spec = SpawnSpec(
                argv=argv,
                env=_cli_env(self.host),
                cwd=cwd,
                timeout_s=_CLEANUP_TIMEOUT_S,
                executable=cli,
            )
            with contextlib.suppress(Exception):
                await self.runner.run(spec)


def _cli_env(host: HostContext) -> tuple[tuple[str, str], ...]:
    """The CLI itself needs little: it talks to the container services over XPC."""
    host_env = dict(host.env)
    keep = ("HOME", "PATH", "TMPDIR", "USER")
    return tuple(sorted((k, host_env[k]) for k in keep if k in host_env))
