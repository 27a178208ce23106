"""What docker and podman share: probing an engine, running one container, cleaning up.

Everything is driven through the engine's CLI, spawned by the injected `ProcessRunner`
(why the CLI and not docker-py: see docs/backends-containers.md). The container is run
with a name and without `--rm`, so that after it ends we can ask the engine whether it was
OOM-killed or never started, and then remove it ourselves.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import queue
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import anyio
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan, check_workspace
from mechasandbox.backends.execute import disarm_after, prepare_run, run_started
from mechasandbox.backends.git_indirections import planned_policy
from mechasandbox.backends.oci import lifeline
from mechasandbox.backends.oci.compiler import (
    LABEL_OWNER,
    LABEL_RUN,
    ContainerRun,
    EngineKind,
    EngineTraits,
    Runtime,
    command_environment,
    compile_container_args,
    tmp_bytes,
)
from mechasandbox.backends.oci.env_file import ENV_FILE_FD, env_file, env_file_hook
from mechasandbox.backends.oci.lifeline import Lifeline
from mechasandbox.backends.oci.policy_mounts import PolicyMounts, survey
from mechasandbox.backends.oci.seccomp_profile import profile_path
from mechasandbox.backends.outcome import classify
from mechasandbox.backends.unix_sockets import find_named_sockets
from mechasandbox.backends.workspace.guards import GuardSet
from mechasandbox.backends.workspace.placeholders import (
    is_placeholder,
    journal_placeholders,
    make_placeholders,
    placeholder_state_directory,
    remove_empty,
)
from mechasandbox.backends.workspace.workspace_locks import WorkspaceLocks, locked_too_long
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    ConfigInvalid,
    MemoryLimit,
    SandboxError,
    SpawnFailed,
)
from mechasandbox.domain.policy import Enforcement, NetworkMode, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult, Usage
from mechasandbox.leftovers import temp_prefix
from mechasandbox.network.bridge import (
    BRIDGE_FAILED,
    BRIDGE_PREFIX,
    PROXY_PORT,
    PROXY_SOCKET,
    PROXY_SOCKET_PLACEHOLDER,
    ProxyBridge,
)
from mechasandbox.network.proxy import RunningProxy
from mechasandbox.network.session import EgressProxy, run_with_proxy
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

# The image the recipe in mechasandbox/images builds (Dockerfile online, busybox offline).
DEFAULT_IMAGE = "mechasandbox/sandbox:latest"

# Host variables the engine CLI itself needs (where the engine is, its config and
# credentials). The CLI gets these and nothing else, so that a bare `NAME` can never pick up
# a host secret; the command's environment is passed as explicit NAME=VALUE lines of an env
# file on a descriptor (see `env_file`), never on the CLI's command line.
CLI_ENV_NAMES = (
    "PATH",
    "HOME",
    "LANG",
    "TMPDIR",
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "DOCKER_API_VERSION",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINER_SSHKEY",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
)

_CLI_TIMEOUT_S = 60.0
_CLI_OUTPUT_BYTES = 1024 * 1024
_SIGNAL_BASE = 128  # the engine reports "killed by signal N" as exit status 128 + N
_ENGINE_ERROR = 125  # the engine failed before or while starting the container
_PROBE_TTL_S = 30.0
_REMOVE_ATTEMPTS = 4


def cli_environment(host_env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    env = {name: host_env[name] for name in CLI_ENV_NAMES if name in host_env}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return tuple(sorted(env.items()))


class _BlockingWorker:
    """One long-lived daemon thread that runs specs to completion for synchronous callers.

    It has its own event loop, so `probe` and the exit handler can spawn through the
    injected runner even when called from inside a running loop; being a daemon thread,
    it still works inside atexit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: (
            queue.SimpleQueue[tuple[ProcessRunner, SpawnSpec, concurrent.futures.Future[Any]]]
            | None
        ) = None

    def _loop(self) -> None:
        assert self._jobs is not None
        while True:
            runner, spec, future = self._jobs.get()
            try:
                future.set_result(anyio.run(runner.run, spec))
            except BaseException as error:  # handed to the waiting caller
                future.set_exception(error)

    def run(self, runner: ProcessRunner, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        with self._lock:
            if self._jobs is None:
                self._jobs = queue.SimpleQueue()
                threading.Thread(target=self._loop, name="mechasandbox-oci", daemon=True).start()
            jobs = self._jobs
        future: concurrent.futures.Future[Result[ProcessOutcome, SpawnFailed]] = (
            concurrent.futures.Future()
        )
        jobs.put((runner, spec, future))
        return future.result()


_WORKER = _BlockingWorker()


def run_blocking(runner: ProcessRunner, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
    """Run `spec` to completion from synchronous code, even inside a running event loop.

    `Backend.probe` and the exit handler are synchronous; the worker thread has its own
    event loop, so they can still spawn through the injected runner.
    """
    return _WORKER.run(runner, spec)


@attrs.frozen(kw_only=True)
class EngineInfo:
    """What the probe learnt about the engine."""

    version: str
    runtimes: frozenset[str]
    traits: EngineTraits
    memory: bool = True
    pids: bool = True
    runsc_problem: str | None = None  # why runsc cannot be used, when it is registered
    warnings: tuple[str, ...] = ()
    socat: str | None = None  # the image's allowlist forwarder, when the bridge can work
    no_bridge: str = "not probed"  # why there is no allowlist bridge, when `socat` is None
    shell: bool = False  # the image has /bin/sh: its containers can be tied (see `lifeline`)


# What the image has: /bin/sh (the lifeline's watcher) and socat (its path, or None), per
# engine CLI and image id: starting a container to look is slow, and an image id never
# changes content.
_FORWARDERS: dict[tuple[str, str], tuple[bool, str | None]] = {}
_FORWARDERS_LOCK = threading.Lock()
_SHELL_MARK = "mechasandbox-sh"
_FORWARDER_PROBE = f"echo {_SHELL_MARK}; command -v socat"
STDIN_PLACEHOLDER = "<per-run input file>"


@attrs.define
class _ProbeCache:
    at: float = 0.0
    value: Result[tuple[Capabilities, EngineInfo, str], BackendUnavailable] | None = None


# Containers of runs still going in this process: removed at interpreter exit.
_LIVE: dict[str, tuple[ProcessRunner, str, tuple[tuple[str, str], ...]]] = {}
_LIVE_LOCK = threading.Lock()


def _remove_live_at_exit() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE.items())
        _LIVE.clear()
    for name, (runner, executable, env) in live:
        spec = SpawnSpec(argv=(executable, "rm", "--force", name), env=env, cwd="/", timeout_s=30.0)
        with contextlib.suppress(Exception):
            run_blocking(runner, spec)


def _cleanup_at_exit() -> None:
    _remove_live_at_exit()
    _release_all_at_exit()


atexit.register(_cleanup_at_exit)


def owner_id() -> str:
    """This host process, as written into every container's owner label."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _tail(data: bytes, limit: int = 500) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:] if text else "(no output)"


def _is_init_exec_failure(stderr: bytes) -> bool:
    """tini (docker --init, podman-init) could not exec the command."""
    return b"[FATAL tini (" in stderr and b"exec " in stderr and b" failed: " in stderr


@attrs.frozen(kw_only=True)
class ProtectionLayout:
    """How the protected paths of one workspace are covered (relative paths, see
    `ContainerRun`), and the ones that cannot be (`problems`: symlinks)."""

    protected: tuple[str, ...] = ()
    pinned: tuple[str, ...] = ()
    placeholders: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def _relative_in(workspace: str, entry: str) -> str | None:
    """`entry` relative to the workspace, or None when it is outside (the read-only root
    covers it already) or under the home directory (not mounted)."""
    if entry.startswith("~"):
        return None
    if os.path.isabs(entry):
        clean = os.path.normpath(entry)
        if not clean.startswith(workspace.rstrip("/") + "/"):
            return None
        entry = clean[len(workspace.rstrip("/")) + 1 :]
    clean = os.path.normpath(entry)
    if clean in (".", "") or clean == ".." or clean.startswith("../"):
        return None
    return clean


_UNMOUNTABLE = ",\n\"'"


def protection_layout(workspace: str, entries: tuple[str, ...]) -> ProtectionLayout:
    """Walk each protected entry down from the workspace, as the bubblewrap backend does:
    existing directories on the way are pinned (bound onto themselves, so `mv .git g`
    fails with EBUSY), the entry itself (or the first non-directory) is re-bound read-only,
    and the first missing component gets a read-only empty directory, so it cannot be
    created. A symlink on the way cannot be covered: it is reported as a problem."""
    pinned: list[str] = []
    protected: list[str] = []
    placeholders: list[str] = []
    problems: list[str] = []
    for entry in entries:
        relative = _relative_in(workspace, entry)
        if relative is None:
            continue
        if any(char in relative for char in _UNMOUNTABLE):
            # A comma or quote would be read as the next field of `--mount` (nested
            # repositories are found by name: an earlier run chose these names).
            problems.append(
                f"{workspace}/{relative}: a container mount path cannot contain {_UNMOUNTABLE!r}"
            )
            continue
        parts = relative.split("/")
        for index in range(len(parts)):
            current = "/".join(parts[: index + 1])
            path = os.path.join(workspace, current)
            last = index == len(parts) - 1
            if os.path.islink(path):
                problems.append(
                    f"{path} is a symlink: its target can be made read-only but the link "
                    "itself could be replaced"
                )
                break
            if not os.path.lexists(path) or _is_held_placeholder(path):
                placeholders.append(current)
                break
            if last or not os.path.isdir(path):
                protected.append(current)
                break
            pinned.append(current)

    def unique(paths: list[str], *covered: list[str]) -> tuple[str, ...]:
        seen = {path for group in covered for path in group}
        return tuple(path for path in dict.fromkeys(paths) if path not in seen)

    return ProtectionLayout(
        protected=unique(protected),
        pinned=unique(pinned, protected, placeholders),
        placeholders=unique(placeholders, protected),
        problems=tuple(dict.fromkeys(problems)),
    )


# An empty read-only directory of this process: the source of every placeholder mount.
_EMPTY: list[str] = []
_EMPTY_LOCK = threading.Lock()
# Placeholder mount points this process's containers are using, with how many use each:
# one is removed from the host only when no live container still has it mounted (removing
# a mount point on the host would detach the mount inside the container): none of ours in
# its workspace (`_WORKSPACE_USERS`; until then it waits in `_UNUSED`), and none of another
# process of this user (`workspace_locks`, shared with bubblewrap's runs).
_PLACEHOLDER_USERS: dict[str, int] = {}
_WORKSPACE_USERS: dict[str, int] = {}
_UNUSED: dict[str, list[str]] = {}
_LOCKS: list[WorkspaceLocks] = []


def _workspace_locks() -> WorkspaceLocks:
    if not _LOCKS:
        directory = placeholder_state_directory()
        _LOCKS.append(WorkspaceLocks(directory / "workspaces" if directory else None))
    return _LOCKS[0]


def _is_held_placeholder(path: str) -> bool:
    """A placeholder (an empty directory, or a file placeholder with just its content)
    one of our live containers holds: still "missing" for the next run (not a real path
    to re-bind)."""
    with _EMPTY_LOCK:
        held = path in _PLACEHOLDER_USERS
    return held and is_placeholder(path)


def empty_directory() -> str:
    with _EMPTY_LOCK:
        if not _EMPTY or not os.path.isdir(_EMPTY[0]):
            path = tempfile.mkdtemp(prefix=temp_prefix("empty"))
            os.chmod(path, 0o500)  # read-only for its owner too
            _EMPTY[:] = [path]
        return _EMPTY[0]


def hold_placeholders(workspace: str, paths: tuple[str, ...]) -> bool:
    """A container of ours in `workspace` (with these placeholders) is about to start; its
    mounts may also stand on another process's placeholders, hence the workspace's lock.
    False: it could not be had (see `WorkspaceLocks.enter`): do not start, do not release."""
    with _EMPTY_LOCK:
        if not _WORKSPACE_USERS.get(workspace) and not _workspace_locks().enter(workspace):
            return False
        journal_placeholders(workspace, paths)  # swept by the next start if we die
        _WORKSPACE_USERS[workspace] = _WORKSPACE_USERS.get(workspace, 0) + 1
        for path in paths:
            _PLACEHOLDER_USERS[path] = _PLACEHOLDER_USERS.get(path, 0) + 1
        return True


def release_placeholders(workspace: str, paths: tuple[str, ...]) -> None:
    """That container is gone: remove the empty mount points the engine made on the host
    once no container uses them (anything someone put there meanwhile stays)."""
    with _EMPTY_LOCK:
        for path in paths:
            users = _PLACEHOLDER_USERS.get(path, 0) - 1
            if users > 0:
                _PLACEHOLDER_USERS[path] = users
            else:
                _PLACEHOLDER_USERS.pop(path, None)
                _UNUSED.setdefault(workspace, []).append(path)
        remaining = _WORKSPACE_USERS.get(workspace, 0) - 1
        if remaining > 0:
            _WORKSPACE_USERS[workspace] = remaining
            return
        _WORKSPACE_USERS.pop(workspace, None)
        _workspace_locks().leave(workspace, _UNUSED.pop(workspace, []), remove_empty)


def _release_all_at_exit() -> None:
    with _EMPTY_LOCK:
        workspaces = list(_WORKSPACE_USERS)
        for workspace in workspaces:
            _WORKSPACE_USERS[workspace] = 1
        held = tuple(_PLACEHOLDER_USERS)
        for path in held:
            _PLACEHOLDER_USERS[path] = 1
    for workspace in workspaces:
        mine = tuple(p for p in held if p.startswith(workspace.rstrip("/") + "/"))
        release_placeholders(workspace, mine)
    with _EMPTY_LOCK:
        for path in _EMPTY:
            with contextlib.suppress(OSError):
                os.rmdir(path)


@attrs.frozen(kw_only=True)
class OciBackend:
    """A container backend driven through an engine CLI; docker and podman subclass it.

    `image` must already be present in the engine (`--pull never`): see mechasandbox.images.
    `runtime` picks the OCI runtime (`Runtime.RUNSC` for gVisor). `executable` overrides
    the CLI found on PATH. `cpus` optionally caps CPU bandwidth (`--cpus`).
    """

    kind: ClassVar[str] = "oci"

    runner: ProcessRunner
    image: str = DEFAULT_IMAGE
    runtime: Runtime = Runtime.DEFAULT
    executable: str | None = None
    cpus: float | None = None
    host: HostContext = attrs.field(factory=HostContext.current)
    probe_ttl_s: float = _PROBE_TTL_S
    egress: EgressProxy = attrs.field(factory=EgressProxy)
    _cache: _ProbeCache = attrs.field(factory=_ProbeCache, init=False, eq=False, repr=False)

    @property
    def name(self) -> str:
        return self.kind

    # -- engine-specific hooks ------------------------------------------------------------

    def _info_args(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _parse_info(self, document: Any) -> EngineInfo | str:
        raise NotImplementedError

    def _label_template(self, key: str) -> str:
        """A Go template printing label `key` in `ps --format` (the engines differ)."""
        return f'{{{{.Label "{key}"}}}}'

    # -- probing --------------------------------------------------------------------------

    def _unavailable(self, reason: str) -> BackendUnavailable:
        return BackendUnavailable(backend=self.name, reason=reason)

    def _cli_env(self) -> tuple[tuple[str, str], ...]:
        return cli_environment(dict(self.host.env))

    def _find_executable(self) -> str | None:
        command = self.executable or self.kind
        if os.sep in command:
            return command if os.access(command, os.X_OK) else None
        return shutil.which(command, path=dict(self.host.env).get("PATH", os.defpath))

    def _cli_spec(
        self,
        executable: str,
        args: tuple[str, ...],
        *,
        stdin: bytes | None = None,
        timeout_s: float | None = _CLI_TIMEOUT_S,
        max_output_bytes: int = _CLI_OUTPUT_BYTES,
        env_file: bytes | None = None,
    ) -> SpawnSpec:
        """`env_file`: the command's env file, readable by the CLI on `ENV_FILE_FD`."""
        return SpawnSpec(
            argv=(executable, *args),
            env=self._cli_env(),
            cwd="/",
            stdin=stdin,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            executable=executable,
            hooks=() if env_file is None else (env_file_hook(env_file),),
        )

    def _probe_engine(
        self,
    ) -> Result[tuple[Capabilities, EngineInfo, str], BackendUnavailable]:
        executable = self._find_executable()
        if executable is None:
            return Failure(
                self._unavailable(f"{self.executable or self.kind} CLI not found on PATH")
            )
        info = run_blocking(
            self.runner, self._cli_spec(executable, self._info_args(), timeout_s=20.0)
        )
        if isinstance(info, Failure):
            return Failure(self._unavailable(f"cannot run {executable}: {info.failure().reason}"))
        outcome = info.unwrap()
        if outcome.exit_code != 0:
            return Failure(self._unavailable(f"engine not reachable: {_tail(outcome.stderr)}"))
        try:
            parsed = self._parse_info(json.loads(outcome.stdout))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return Failure(self._unavailable(f"cannot read the engine's info: {error!r}"))
        if isinstance(parsed, str):
            return Failure(self._unavailable(parsed))
        if self.runtime is Runtime.RUNSC:
            if "runsc" not in parsed.runtimes:
                return Failure(self._unavailable("gVisor runtime 'runsc' is not registered"))
            if parsed.runsc_problem is not None:
                return Failure(self._unavailable(parsed.runsc_problem))
        elif self.runtime is not Runtime.DEFAULT and self.runtime.value not in parsed.runtimes:
            return Failure(self._unavailable(f"runtime {self.runtime.value!r} is not registered"))
        image = run_blocking(
            self.runner,
            self._cli_spec(
                executable, ("image", "inspect", "--format", "{{.Id}}", self.image), timeout_s=20.0
            ),
        )
        if isinstance(image, Failure) or image.unwrap().exit_code != 0:
            return Failure(
                self._unavailable(
                    f"image {self.image!r} is not present in the engine (it is never pulled): "
                    "build it from the recipe mechasandbox ships "
                    "(`python -m mechasandbox.images` says where and how)"
                )
            )
        parsed = self._with_forwarder(parsed, executable, image.unwrap().stdout.decode().strip())
        return Success((self._capabilities(parsed), parsed, executable))

    def _with_forwarder(self, info: EngineInfo, executable: str, image_id: str) -> EngineInfo:
        """`info` with the image's /bin/sh and socat, found by running the image once
        (cached per image id); the lifeline's watcher needs the one, the allowlist bridge
        the other."""
        key = (executable, image_id)
        with _FORWARDERS_LOCK:
            found = _FORWARDERS.get(key)
        if found is None:
            found = self._find_forwarder(info, executable)
            with _FORWARDERS_LOCK:
                _FORWARDERS[key] = found
        shell, socat = found
        info = attrs.evolve(info, shell=shell)
        if self.runtime is Runtime.RUNSC:
            return attrs.evolve(
                info,
                no_bridge=(
                    "not bridged under gVisor: runsc does not let the container connect to "
                    "a host unix socket (the proxy's)"
                ),
            )
        if socat is None:
            return attrs.evolve(
                info,
                no_bridge=(
                    f"image {self.image!r} has no socat on its PATH: the bridge to the proxy "
                    "needs it (`python -m mechasandbox.images`); best-effort runs have no network "
                    "at all"
                ),
            )
        return attrs.evolve(info, socat=socat, no_bridge="")

    def _find_forwarder(self, info: EngineInfo, executable: str) -> tuple[bool, str | None]:
        """Run `sh -c 'echo MARK; command -v socat'` in the image, as a run would be
        started (offline, --network none, read-only, no capabilities; the mounted
        "workspace" is our empty read-only directory): (has /bin/sh, socat's path)."""
        empty = empty_directory()
        run = ContainerRun(run_id=secrets.token_hex(8), owner=owner_id(), workspace=empty)
        args = compile_container_args(
            RunRequest(argv=("/bin/sh", "-c", _FORWARDER_PROBE), workspace=empty),
            Policy(),
            self.host,
            self.image,
            Runtime.DEFAULT,  # the image's content does not depend on the runtime
            info.traits,
            run=run,
        )
        found = run_blocking(
            self.runner,
            self._cli_spec(executable, ("run", "--rm", *args[1:]), timeout_s=30.0, env_file=b""),
        )
        if isinstance(found, Failure):
            return False, None
        lines = found.unwrap().stdout.decode(errors="replace").strip().split("\n")
        shell = lines[0] == _SHELL_MARK
        if found.unwrap().exit_code != 0 or len(lines) != 2 or not lines[1].startswith("/"):
            return shell, None
        return shell, lines[1]

    def _engine(self) -> Result[tuple[Capabilities, EngineInfo, str], BackendUnavailable]:
        now = time.monotonic()
        cached = self._cache.value
        if cached is None or now - self._cache.at > self.probe_ttl_s:
            cached = self._probe_engine()
            self._cache.value, self._cache.at = cached, now
        return cached

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        return self._engine().map(lambda found: found[0])

    def _capabilities(self, info: EngineInfo) -> Capabilities:
        runtime = {
            Runtime.DEFAULT: "the engine's default runtime",
            Runtime.RUNC: "runc",
            Runtime.RUNSC: "gVisor (runsc): a user-space kernel between the command and the host",
        }[self.runtime]
        enforced = {
            Protection.FILESYSTEM_READ,
            Protection.FILESYSTEM_WRITE,
            Protection.PROTECTED_PATHS,
            Protection.NETWORK_NONE,
            Protection.NAMED_UNIX_SOCKETS,
            Protection.PID_ISOLATION,
            Protection.HOST_PROCESSES_HIDDEN,
            Protection.ENVIRONMENT,
            Protection.TIMEOUT,
            Protection.CPU,
            Protection.OPEN_FILES,
            Protection.FILE_SIZE,
        }
        details = [
            (
                Protection.FILESYSTEM_READ,
                "only the image, the workspace, the policy's readable and writable paths and "
                "a private /tmp are mounted; deny_read paths they show are masked, a home "
                "directory they contain is hidden",
            ),
            (
                Protection.FILESYSTEM_WRITE,
                "read-only root; writable: workspace, the policy's writable paths, a sized "
                "tmpfs /tmp; no setuid/setgid file can be made (seccomp profile)",
            ),
            (
                Protection.PROTECTED_PATHS,
                "read-only self-binds; parents pinned against rename (EBUSY); missing ones "
                "covered by a read-only empty directory (created on the host for the run); "
                "a run whose cover a host process replaces is stopped (50 ms watch)",
            ),
            (Protection.NETWORK_NONE, "--network none: loopback only"),
            (
                Protection.NAMED_UNIX_SOCKETS,
                "own network namespace; no host socket mounted but the named ones, bound "
                "read-only at their real path",
            ),
            self._allowlist_detail(info),
            (Protection.PID_ISOLATION, f"own PID namespace; runtime: {runtime}"),
            (Protection.HOST_PROCESSES_HIDDEN, "own PID namespace"),
            (
                Protection.ENVIRONMENT,
                f"only the scrubbed environment, in an env file on descriptor {ENV_FILE_FD} "
                "(never on the CLI's command line)",
            ),
            self._teardown_detail(info),
            (Protection.CPU, "--ulimit cpu (RLIMIT_CPU per process)"),
            (Protection.OPEN_FILES, "--ulimit nofile"),
            (Protection.FILE_SIZE, "--ulimit fsize"),
        ]
        if info.socat is not None:
            enforced.add(Protection.NETWORK_ALLOWLIST)
        if info.shell:
            enforced.add(Protection.TREE_TEARDOWN)
        if info.memory:
            enforced.add(Protection.MEMORY)
            details.append((Protection.MEMORY, "--memory with --memory-swap equal (cgroup)"))
        else:
            details.append((Protection.MEMORY, "the engine reports no memory cgroup support"))
        if info.pids:
            enforced.add(Protection.PROCESSES)
            details.append(
                (Protection.PROCESSES, "--pids-limit (pids cgroup; forks beyond it fail)")
            )
        else:
            details.append((Protection.PROCESSES, "the engine reports no pids cgroup support"))
        warnings = (*info.warnings, f"{self.kind} {info.version}, image {self.image}")
        return Capabilities(
            backend=self.name,
            enforced=frozenset(enforced),
            details=tuple(details),
            warnings=warnings,
        )

    def _teardown_detail(self, info: EngineInfo) -> tuple[Protection, str]:
        removed = "the container is force-removed on timeout, cancel, exit"
        if not info.shell:
            return (
                Protection.TREE_TEARDOWN,
                f"{removed}; but image {self.image!r} has no /bin/sh for the watcher that "
                "ties the container to this process: if this process is killed, the command "
                "runs on until the next run's sweep removes it",
            )
        return (
            Protection.TREE_TEARDOWN,
            f"{removed}; tied to this process: its stdin is a pipe only this process holds, "
            "and a watcher in the container kills everything when it closes (a killed "
            "caller leaves nothing running; the next run removes the stopped container); "
            "the deadline is enforced inside too",
        )

    def _allowlist_detail(self, info: EngineInfo) -> tuple[Protection, str]:
        if info.socat is None:
            return (Protection.NETWORK_ALLOWLIST, info.no_bridge)
        return (
            Protection.NETWORK_ALLOWLIST,
            f"--network none; the run's proxy socket mounted read-only at {PROXY_SOCKET} and "
            f"the image's {info.socat} forwarding 127.0.0.1:{PROXY_PORT} to it; no route, "
            "no DNS inside",
        )

    def _bridge(self, info: EngineInfo, policy: Policy, socket: str) -> ProxyBridge | None:
        if policy.network.mode is not NetworkMode.ALLOWLIST or info.socat is None:
            return None
        return ProxyBridge(socket=socket, socat=info.socat)

    # -- compiling ------------------------------------------------------------------------

    def _container_run(
        self,
        workspace: str,
        policy: Policy,
        *,
        layout: ProtectionLayout | None = None,
        mounts: PolicyMounts | None = None,
    ) -> ContainerRun:
        if layout is None:
            layout = self._protection_layout(workspace, policy)
        return ContainerRun(
            run_id=secrets.token_hex(8),
            owner=owner_id(),
            workspace=workspace,
            protected=layout.protected,
            pinned=layout.pinned,
            placeholders=layout.placeholders,
            empty_dir=empty_directory() if layout.placeholders else None,
            unix_sockets=find_named_sockets(policy, self.host, workspace).bind,
            mounts=mounts or PolicyMounts(),
            seccomp_profile=profile_path(),
        )

    @staticmethod
    def _policy_mounts(
        workspace: str, policy: Policy, host: HostContext
    ) -> Result[PolicyMounts, SandboxError]:
        """The policy's readable, writable and masked paths, from the host as it is now."""
        surveyed: Result[PolicyMounts, SandboxError] = survey(workspace, policy, host)
        return surveyed

    @staticmethod
    def _env_file(
        policy: Policy, host: HostContext, bridge: ProxyBridge | None = None
    ) -> Result[bytes, SandboxError]:
        """The command's environment as the env file the CLI reads on `ENV_FILE_FD`."""
        made: Result[bytes, SandboxError] = env_file(
            command_environment(policy, host, bridge=bridge)
        )
        return made

    def _protection_layout(self, workspace: str, policy: Policy) -> ProtectionLayout:
        fs = policy.filesystem
        return protection_layout(workspace, (*fs.protected, *fs.deny_write))

    def _check_protection(
        self, layout: ProtectionLayout, policy: Policy
    ) -> Result[tuple[str, ...], SandboxError]:
        """Refuse a strict run whose protected paths cannot all be covered; otherwise the
        warnings for the ones that are not."""
        if not layout.problems:
            return Success(())
        if policy.enforcement is Enforcement.STRICT:
            return Failure(ConfigInvalid(problem=layout.problems[0], field="filesystem.protected"))
        return Success(tuple(f"not protected: {problem}" for problem in layout.problems))

    def _placeholder_paths(self, run: ContainerRun) -> tuple[str, ...]:
        return tuple(os.path.join(run.workspace, path) for path in run.placeholders)

    @staticmethod
    def _guards(run: ContainerRun) -> GuardSet:
        """The host paths the container's protection mounts stand on, watched during the
        run (see `linux.guards`: a host process replacing one takes its mount off in the
        container too). The placeholders are made here, before the engine would, so that
        they are watched as well. On Linux only: elsewhere the engine runs in a VM and its
        mounts are not on this host's directory entries."""
        if not sys.platform.startswith("linux"):
            return GuardSet(())
        make_placeholders(os.path.join(run.workspace, p) for p in run.placeholders)
        relative = (*run.pinned, *run.protected, *run.placeholders)
        guarded = [(os.path.join(run.workspace, p.strip("/")), "write") for p in relative]
        return GuardSet((*guarded, *((path, "read") for path in run.mounts.masks)))

    def _check_mountable(self, workspace: str) -> Result[str, SandboxError]:
        if any(char in workspace for char in ",\n\"'"):
            return Failure(
                ConfigInvalid(
                    problem=(
                        f"workspace {workspace!r}: a container mount path cannot contain "
                        "commas, quotes or newlines"
                    ),
                    field="workspace",
                )
            )
        return Success(workspace)

    def _traits(self) -> EngineTraits:
        engine = self._engine()
        if isinstance(engine, Failure):
            return self._default_traits()
        info: EngineInfo = engine.unwrap()[1]
        return info.traits

    def _default_traits(self) -> EngineTraits:
        raise NotImplementedError

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        def render(workspace: str) -> Result[LaunchPlan, SandboxError]:
            planned = planned_policy(policy, workspace, host)
            mounts = self._policy_mounts(workspace, planned, host)
            if isinstance(mounts, Failure):
                return Failure(mounts.failure())
            run = self._container_run(workspace, planned, mounts=mounts.unwrap())
            engine = self._engine()
            bridge = (
                self._bridge(engine.unwrap()[1], policy, PROXY_SOCKET_PLACEHOLDER)
                if isinstance(engine, Success)
                else None
            )
            env = command_environment(policy, host, bridge=bridge)
            checked = self._env_file(policy, host, bridge)
            if isinstance(checked, Failure):
                return Failure(checked.failure())
            if isinstance(engine, Success) and engine.unwrap()[1].shell:
                stdin = None if request.stdin is None else STDIN_PLACEHOLDER
                run = attrs.evolve(run, lifeline=_lifeline(policy, stdin))
            args = compile_container_args(
                request,
                planned,
                host,
                self.image,
                self.runtime,
                self._traits(),
                run=run,
                cpus=self.cpus,
                bridge=bridge,
            )
            return Success(
                LaunchPlan(
                    backend=self.name,
                    sections=(
                        ("engine", self.executable or self.kind),
                        ("image", self.image),
                        ("runtime", self.runtime.value),
                        ("argv", shlex.join((self.executable or self.kind, *args))),
                        (
                            f"environment (env file on descriptor {ENV_FILE_FD})",
                            " ".join(f"{name}=…" for name in sorted(env)),
                        ),
                        ("/tmp", f"tmpfs of {tmp_bytes(policy.limits)} bytes"),
                    ),
                )
            )

        workspace: Result[str, SandboxError] = check_workspace(request)
        return workspace.bind(self._check_mountable).bind(render)

    # -- running --------------------------------------------------------------------------

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        engine = self._engine()
        if isinstance(engine, Failure):
            return await self._run(request, policy)  # (prepare_run reports it)
        key = (self.kind, engine.unwrap()[2])
        return await lifeline.sweep_beside(
            key,
            self.reap_leftovers,
            lambda: self._run(request, policy),
            concurrently=engine.unwrap()[1].traits.kind is not EngineKind.PODMAN,
        )

    async def _run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        prepared = prepare_run(self, request, policy)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        warnings, workspace, policy = prepared.unwrap()
        mountable = self._check_mountable(workspace)
        if isinstance(mountable, Failure):
            return Failure(mountable.failure())
        _capabilities, info, executable = self._engine().unwrap()
        layout = self._protection_layout(workspace, policy)
        checked = self._check_protection(layout, policy)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        named = find_named_sockets(policy, self.host, workspace)
        warnings = (*warnings, *checked.unwrap(), *named.warnings)
        surveyed = self._policy_mounts(workspace, policy, self.host)
        if isinstance(surveyed, Failure):
            return Failure(surveyed.failure())
        run = self._container_run(workspace, policy, layout=layout, mounts=surveyed.unwrap())
        started = run_started()
        if self._bridge(info, policy, PROXY_SOCKET_PLACEHOLDER) is None:
            # No bridge: a best-effort allowlist run has no network at all.
            launched = await self._launch(executable, info, request, policy, run, warnings, None)
            return disarm_after(launched, workspace, policy, started)

        async def body(proxy: RunningProxy | None) -> Result[RunResult, SandboxError]:
            socket = str(proxy.socket_path) if proxy is not None else PROXY_SOCKET_PLACEHOLDER
            bridge = self._bridge(info, policy, socket)
            return await self._launch(executable, info, request, policy, run, warnings, bridge)

        proxied = await run_with_proxy(self.egress, policy.network, body)
        return disarm_after(proxied, workspace, policy, started)

    async def _launch(
        self,
        executable: str,
        info: EngineInfo,
        request: RunRequest,
        policy: Policy,
        run: ContainerRun,
        warnings: tuple[str, ...],
        bridge: ProxyBridge | None,
    ) -> Result[RunResult, SandboxError]:
        made = self._env_file(policy, self.host, bridge)
        if isinstance(made, Failure):
            return Failure(made.failure())
        stdin_file = None
        if info.shell:
            stdin_file = lifeline.write_input(request.stdin, uid=self.host.uid, gid=self.host.gid)
            run = attrs.evolve(run, lifeline=_lifeline(policy, stdin_file))
        try:
            return await self._launch_tied(
                executable, info, request, policy, run, warnings, bridge, made.unwrap()
            )
        finally:
            lifeline.remove_input(stdin_file)

    async def _launch_tied(
        self,
        executable: str,
        info: EngineInfo,
        request: RunRequest,
        policy: Policy,
        run: ContainerRun,
        warnings: tuple[str, ...],
        bridge: ProxyBridge | None,
        env_file: bytes,
    ) -> Result[RunResult, SandboxError]:
        args = compile_container_args(
            request,
            policy,
            self.host,
            self.image,
            self.runtime,
            info.traits,
            run=run,
            cpus=self.cpus,
            bridge=bridge,
        )
        spec = self._cli_spec(
            executable,
            args,
            stdin=request.stdin,
            timeout_s=policy.limits.timeout_s,
            max_output_bytes=policy.limits.max_output_bytes,
            env_file=env_file,
        )
        if run.lifeline is not None:
            quick = ("--time", "0") if self.kind == "podman" else ()
            removal = (executable, "rm", "--force", *quick, run.name)
            spec = lifeline.tie(spec, removal=removal)
        placeholders = self._placeholder_paths(run)
        if not hold_placeholders(run.workspace, placeholders):
            return Failure(BackendFailed(backend=self.name, reason=locked_too_long("container")))
        with _LIVE_LOCK:
            _LIVE[run.name] = (self.runner, executable, self._cli_env())
        guards = self._guards(run)
        interrupted = True
        try:
            launched = await self.runner.run(attrs.evolve(spec, watch=guards.watcher()))
            if isinstance(launched, Failure):
                interrupted = False
                return Failure(BackendFailed(backend=self.name, reason=launched.failure().message))
            outcome = launched.unwrap()
            if outcome.stopped is not None:  # a guard came off: the finally removes it
                return Failure(
                    BackendFailed(backend=self.name, reason=f"stopped: {outcome.stopped}")
                )
            if outcome.timed_out:
                # Killing the CLI client does not stop the container: the finally removes it.
                result = self._result(outcome, warnings, exit_code=None, signal=None)
                return classify(result, limits=policy.limits, timed_out=True)
            interrupted = False
            return await self._conclude(
                executable,
                run=run,
                request=request,
                policy=policy,
                outcome=outcome,
                warnings=warnings,
                bridged=bridge is not None,
            )
        finally:
            guards.close()
            with anyio.CancelScope(shield=True):
                await self._remove(executable, run, thorough=interrupted)
            with _LIVE_LOCK:
                _LIVE.pop(run.name, None)
            release_placeholders(run.workspace, placeholders)

    def _result(
        self,
        outcome: ProcessOutcome,
        warnings: tuple[str, ...],
        *,
        exit_code: int | None,
        signal: int | None,
    ) -> RunResult:
        # The CLI's rusage is not the container's: report none rather than a wrong figure.
        return RunResult(
            backend=self.name,
            exit_code=exit_code,
            signal=signal,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            duration_s=outcome.duration_s,
            usage=Usage(),
            warnings=warnings,
        )

    async def _state(self, executable: str, run: ContainerRun) -> dict[str, Any] | None:
        """The container's `.State` (OOMKilled, Error, ExitCode), or None if it was never made."""
        inspected = await self.runner.run(
            self._cli_spec(executable, ("inspect", "--format", "{{json .State}}", run.name))
        )
        if isinstance(inspected, Failure) or inspected.unwrap().exit_code != 0:
            return None
        try:
            state = json.loads(inspected.unwrap().stdout)
        except ValueError:
            return None
        return state if isinstance(state, dict) else None

    async def _conclude(
        self,
        executable: str,
        *,
        run: ContainerRun,
        request: RunRequest,
        policy: Policy,
        outcome: ProcessOutcome,
        warnings: tuple[str, ...],
        bridged: bool = False,
    ) -> Result[RunResult, SandboxError]:
        if bridged and outcome.stderr.startswith(BRIDGE_PREFIX):
            failed = _bridge_failure(outcome, request.argv[0], backend=self.name, image=self.image)
            if failed is not None:
                return Failure(failed)
        if run.lifeline is not None:
            unstarted = lifeline.exec_failure(outcome, request.argv[0], image=self.image)
            if unstarted is not None:
                return Failure(unstarted)
        code: int | None = outcome.exit_code
        signal: int | None = outcome.signal
        if code is not None and _SIGNAL_BASE < code <= _SIGNAL_BASE + 64:
            signal = code - _SIGNAL_BASE
            code = None
        result = self._result(outcome, warnings, exit_code=code, signal=signal)
        status = outcome.exit_code
        if status in (_ENGINE_ERROR, 126, 127) or signal is not None:
            state = await self._state(executable, run)
            never_started = state is None or bool(state.get("Error"))
            if state is not None and state.get("OOMKilled") and policy.limits.memory_bytes:
                detail = (
                    f"memory limit of {policy.limits.memory_bytes} bytes exceeded; "
                    "the container was OOM-killed"
                )
                return Failure(MemoryLimit(detail=detail, partial=result))
            if status == _ENGINE_ERROR and never_started:
                return Failure(BackendFailed(backend=self.name, reason=_tail(outcome.stderr)))
            if status in (126, 127) and (never_started or _is_init_exec_failure(outcome.stderr)):
                reason = "command not found" if status == 127 else "not executable"
                return Failure(
                    SpawnFailed(
                        command=request.argv[0],
                        reason=f"{reason} in image {self.image!r}: {_tail(outcome.stderr, 200)}",
                        exit_status=status,
                    )
                )
        return classify(result, limits=policy.limits, timed_out=False)

    async def _remove(self, executable: str, run: ContainerRun, *, thorough: bool) -> None:
        """Force-remove the container (kills what still runs in it).

        `thorough` is for a run we interrupted: the CLI may have died while the engine was
        still creating the container, so look again until no container carries the label.
        """
        for attempt in range(_REMOVE_ATTEMPTS if thorough else 1):
            await self.runner.run(self._cli_spec(executable, ("rm", "--force", run.name)))
            if not thorough:
                return
            listed = await self.runner.run(
                self._cli_spec(
                    executable,
                    ("ps", "--all", "--quiet", "--filter", f"label={LABEL_RUN}={run.run_id}"),
                )
            )
            if (
                isinstance(listed, Success)
                and listed.unwrap().exit_code == 0
                and not listed.unwrap().stdout.strip()
            ):
                return
            await anyio.sleep(0.25 * (attempt + 1))

    async def reap_leftovers(
        self, *, include_live: bool = False
    ) -> Result[tuple[str, ...], SandboxError]:
        """Remove labelled containers whose owner process is gone (after a host crash).

        Containers of another live process on this host are kept unless `include_live`;
        those of another host (a shared remote engine) are kept unless `include_live`.
        """
        engine = self._engine()
        if isinstance(engine, Failure):
            return Failure(engine.failure())
        executable = engine.unwrap()[2]
        listed = await self.runner.run(
            self._cli_spec(
                executable,
                (
                    "ps",
                    "--all",
                    "--filter",
                    f"label={LABEL_RUN}",
                    "--format",
                    "{{.Names}}\t" + self._label_template(LABEL_OWNER),
                ),
            )
        )
        if isinstance(listed, Failure):
            return Failure(BackendFailed(backend=self.name, reason=listed.failure().message))
        if listed.unwrap().exit_code != 0:
            return Failure(BackendFailed(backend=self.name, reason=_tail(listed.unwrap().stderr)))
        doomed: list[str] = []
        for line in listed.unwrap().stdout.decode().splitlines():
            name, _, owner = line.partition("\t")
            if name and (include_live or _owner_gone(owner.strip())):
                doomed.append(name.strip())
        for name in doomed:
            await self.runner.run(self._cli_spec(executable, ("rm", "--force", name)))
        return Success(tuple(doomed))


def _lifeline(policy: Policy, stdin_file: str | None) -> Lifeline:
    return Lifeline(
        deadline_s=lifeline.deadline_for(policy.limits.timeout_s), stdin_file=stdin_file
    )


def _bridge_failure(
    outcome: ProcessOutcome, command: str, *, backend: str, image: str
) -> SandboxError | None:
    """The bridge script's own failures: the forwarder did not start (125), or its shell
    could not exec the command (`mechasandbox-bridge: ...: exec: X: not found`, 127/126)."""
    message = _tail(outcome.stderr, 300)
    if outcome.exit_code == BRIDGE_FAILED:
        return BackendFailed(backend=backend, reason=message)
    if outcome.exit_code in (126, 127) and b": exec: " in outcome.stderr.split(b"\n")[0]:
        reason = "command not found" if outcome.exit_code == 127 else "not executable"
        return SpawnFailed(
            command=command,
            reason=f"{reason} in image {image!r}: {message}",
            exit_status=outcome.exit_code,
        )
    return None


def _owner_gone(owner: str, *, alive: Callable[[int], bool] | None = None) -> bool:
    hostname, _, pid_text = owner.rpartition(":")
    if hostname != socket.gethostname() or not pid_text.isdigit():
        return False
    check = alive or _pid_alive
    return not check(int(pid_text))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def reap_leftovers(
    engine: OciBackend, *, include_live: bool = False
) -> Result[tuple[str, ...], SandboxError]:
    """Remove containers left by mechasandbox processes that died (see `OciBackend`)."""
    return await engine.reap_leftovers(include_live=include_live)
