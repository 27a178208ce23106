"""The pure compiler: a request and a policy -> the `docker run` / `podman run` arguments.

Nothing here touches the host: every fact the compiler needs (the workspace's real path,
which protected paths exist, the engine's quirks) is passed in, so the argv is
golden-testable on any machine.
"""

from __future__ import annotations

import enum

import attrs

from mechasandbox.backends.base import HostContext, scrubbed_environment
from mechasandbox.backends.oci.env_file import ENV_FILE
from mechasandbox.backends.oci.lifeline import (
    STDIN_PATH,
    WATCHER_PROCESSES,
    Lifeline,
    keeper_argv,
    watched_argv,
)
from mechasandbox.backends.oci.policy_mounts import PolicyMounts, mount_args
from mechasandbox.backends.workspace.placeholders import FileContents, file_placeholder
from mechasandbox.domain.limits import GIB, Limits
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.limits.rlimits import rlimits_for
from mechasandbox.network.bridge import PROXY_SOCKET, PROXY_URL, ProxyBridge, bridge_argv
from mechasandbox.network.environment import proxy_environment

LABEL_RUN = "mechasandbox.run"
LABEL_OWNER = "mechasandbox.owner"
NAME_PREFIX = "mechasandbox-"

# The home directory the command sees: the host's does not exist in the image, and the
# read-only root leaves /tmp (a private tmpfs) as the one writable place outside the workspace.
CONTAINER_HOME = "/tmp"

# The size of that /tmp (a tmpfs): half the memory limit, so that a command filling it gets
# "No space left on device" while its processes still have the other half (tmpfs pages are
# charged to the container's memory cgroup, as they are to the run's cgroup under
# bubblewrap); without a memory limit, half the default one.
TMP_BYTES_WITHOUT_MEMORY_LIMIT = 2 * GIB

_ULIMIT_NAMES = {
    "RLIMIT_CORE": "core",
    "RLIMIT_CPU": "cpu",
    "RLIMIT_NOFILE": "nofile",
    "RLIMIT_FSIZE": "fsize",
    "RLIMIT_NPROC": "nproc",
}


class EngineKind(enum.Enum):
    DOCKER = "docker"
    PODMAN = "podman"


class Runtime(enum.Enum):
    """The OCI runtime: the engine's default (runc/crun) or gVisor's `runsc`."""

    DEFAULT = "default"
    RUNC = "runc"
    RUNSC = "runsc"


@attrs.frozen(kw_only=True)
class EngineTraits:
    """How one engine differs from the other, as the compiler needs to know it.

    `init`: whether `--init` can be used (podman needs an init binary on the host).
    `init_path`: podman's `--init` needs catatonit; where it is missing we point it at tini.
    `nproc_ulimit`: rootful podman raises RLIMIT_NPROC to 4194304 unless told otherwise,
    which fails without CAP_SYS_RESOURCE; we set it to the process limit instead.
    `runtime_network_flag`: podman hands runtime flags per run (`--runtime-flag`), docker
    only through the daemon's runtime registration (`runtimeArgs`), which the probe checks.
    `keep_id`: rootless podman maps the host uid to itself so workspace files stay the user's.
    `tmpfs_copy_up`: podman copies what is at a tmpfs's mount point into it unless the
    mount says `notmpcopyup` (a tmpfs that masks a directory would show its content).
    `bind_options`: podman takes mount options on a bind (`nosuid,nodev`); docker's
    `--mount` refuses them (its binds are covered otherwise: no-new-privileges makes a
    setuid file inert inside, the device cgroup keeps device nodes closed, the seccomp
    profile keeps setuid files from being made).
    """

    kind: EngineKind
    init: bool = True
    init_path: str | None = None
    nproc_ulimit: bool = False
    runtime_network_flag: bool = False
    keep_id: bool = False
    tmpfs_copy_up: bool = False
    bind_options: bool = False

    @staticmethod
    def docker() -> EngineTraits:
        return EngineTraits(kind=EngineKind.DOCKER)

    @staticmethod
    def podman(
        *, init: bool = True, init_path: str | None = None, rootless: bool = False
    ) -> EngineTraits:
        return EngineTraits(
            kind=EngineKind.PODMAN,
            init=init,
            init_path=init_path,
            nproc_ulimit=True,
            runtime_network_flag=True,
            keep_id=rootless,
            tmpfs_copy_up=True,
            bind_options=True,
        )


@attrs.frozen(kw_only=True)
class ContainerRun:
    """The impure facts of one run, gathered before compiling.

    `workspace` is the real path; `owner` identifies this host process for reaping.
    Protected paths (relative to the workspace, see `engine.protection_layout`):
    `protected` exist and are re-bound read-only onto themselves; `pinned` are their
    existing parent directories, bound read-write onto themselves so that they cannot be
    renamed (a mount point gives EBUSY); `placeholders` are missing ones, covered by the
    read-only empty directory `empty_dir` so that they cannot be created (the caller makes
    the mount point on the host before the container, and removes it afterwards); those
    git reads as files (`.git/commondir`, see `placeholders.FILE_PLACEHOLDERS`) by the file
    the caller makes there, bound read-only onto itself, as are `file_placeholders` (the
    run's others: see `with_git_indirections`).
    `unix_sockets`: real paths of the host unix sockets the policy names, bound read-only at
    the same path (see `unix_sockets.find_named_sockets`); no other host socket is mounted.

    `mounts`: the policy's readable, writable and masked paths (see `policy_mounts`); a
    protection mount at or below a mask is left out (the mask covers it).

    `seccomp_profile`: the file of `SeccompProfiles.path()` (None: the engine's
    default profile). `lifeline`: how the container is tied to this process (None: not
    tied, for an image without /bin/sh; see `lifeline`). `cidfile`: where the engine CLI
    writes the container's id (`--cidfile`), for finding its processes on this host if the
    engine goes away (see `engine_loss`). `agent`: a session's container, whose process is
    the session agent (see `oci.session`).
    """

    run_id: str
    owner: str
    workspace: str
    protected: tuple[str, ...] = ()
    pinned: tuple[str, ...] = ()
    placeholders: tuple[str, ...] = ()
    empty_dir: str | None = None
    unix_sockets: tuple[str, ...] = ()

    mounts: PolicyMounts = PolicyMounts()
    seccomp_profile: str | None = None
    lifeline: Lifeline | None = None
    file_placeholders: FileContents = ()
    cidfile: str | None = None
    agent: SessionAgent | None = None

    @property
    def name(self) -> str:
        return NAME_PREFIX + self.run_id


# Where a session's agent binary is bound, read-only (it needs nothing from the image).
AGENT_PATH = "/run/mechasandbox/agent"


@attrs.frozen
class SessionAgent:
    """A session container's process: the static agent at `host_path` on this host, bound
    read-only at `AGENT_PATH`, run with `arguments` (its channel, idle timeout, lifetime)."""

    host_path: str
    arguments: tuple[str, ...]


def container_environment(policy: Policy, host: HostContext) -> dict[str, str]:
    """The scrubbed environment, adapted to a container.

    The host's PATH names host directories, so PATH comes from the image unless the policy
    sets it explicitly; HOME points at the private /tmp unless the policy sets it.
    """
    env = scrubbed_environment(policy.environment, dict(host.env))
    explicit = dict(policy.environment.set)
    if "PATH" not in explicit:
        env.pop("PATH", None)
    env.setdefault("HOME", CONTAINER_HOME)
    return env


def _ulimits(policy: Policy, engine: EngineTraits) -> list[str]:
    settings = rlimits_for(
        policy.limits,
        memory_by_rlimit=False,  # the memory cgroup (--memory) bounds the container
        processes_by_rlimit=engine.nproc_ulimit,
    )
    args: list[str] = []
    for setting in settings:
        name = _ULIMIT_NAMES.get(setting.resource)
        if name is not None:
            args += ["--ulimit", f"{name}={setting.soft}:{setting.hard}"]
    return args


def command_environment(
    policy: Policy, host: HostContext, *, bridge: ProxyBridge | None = None
) -> dict[str, str]:
    """What the command gets: the container environment, plus the proxy's in allowlist
    mode. It goes to the engine in an env file on a descriptor (see `env_file`)."""
    env = container_environment(policy, host)
    if bridge is not None:
        env.update(proxy_environment(PROXY_URL))
    return env


def _environment_args() -> list[str]:
    """The values are never on the CLI's command line (readable by every user in /proc)."""
    return ["--env-file", ENV_FILE]


def tmp_bytes(limits: Limits) -> int:
    """The size of the container's private /tmp (see `TMP_BYTES_WITHOUT_MEMORY_LIMIT`)."""
    if limits.memory_bytes is None:
        return TMP_BYTES_WITHOUT_MEMORY_LIMIT
    return max(limits.memory_bytes // 2, 1)


def _bind(source: str, target: str, *, readonly: bool) -> list[str]:
    spec = f"type=bind,source={source},target={target}"
    return ["--mount", spec + (",readonly" if readonly else "")]


def _protection_mounts(run: ContainerRun) -> list[str]:
    """Pinned parents, read-only protected entries and placeholders, shallowest first."""
    workspace = run.workspace
    files = dict(run.file_placeholders)
    wanted: list[tuple[int, int, list[str]]] = []
    for order, (entries, kind) in enumerate(
        ((run.pinned, "pin"), (run.protected, "ro"), (run.placeholders, "placeholder"))
    ):
        for relative in entries:
            clean = relative.strip("/")
            path = f"{workspace}/{clean}"
            if run.mounts.masked(path):
                continue  # a deny_read mask covers it (a mount there would uncover it)
            if kind == "pin":
                mount = _bind(path, path, readonly=False)
            elif kind == "ro" or file_placeholder(path, files) is not None:
                # (a file placeholder: the file the host made, pinned read-only)
                mount = _bind(path, path, readonly=True)
            elif run.empty_dir is not None:
                mount = _bind(run.empty_dir, path, readonly=True)
            else:
                continue
            wanted.append((clean.count("/"), order, mount))
    args: list[str] = []
    for _depth, _order, mount in sorted(wanted, key=lambda item: (item[0], item[1])):
        args += mount
    return args


def _socket_mounts(run: ContainerRun) -> list[str]:
    """The named host unix sockets, read-only: connect() needs no write access."""
    return [arg for path in run.unix_sockets for arg in _bind(path, path, readonly=True)]


def _policy_mounts(run: ContainerRun, engine: EngineTraits) -> list[str]:
    """The policy's readable, writable and masked paths (`policy_mounts`), without a second
    mount where a protected path has one already."""
    relative = (*run.pinned, *run.protected, *run.placeholders)
    taken = frozenset(f"{run.workspace}/{path.strip('/')}" for path in relative)
    return mount_args(run.mounts, tmpfs_copy_up=engine.tmpfs_copy_up, taken=taken)


def _bridge_mount(bridge: ProxyBridge | None) -> list[str]:
    """The run's proxy socket, read-only where the bridge script's socat connects to it."""
    return [] if bridge is None else _bind(bridge.socket, PROXY_SOCKET, readonly=True)


# The long-lived process of a pooled container: commands come in by `exec`. (Untied: an
# image without /bin/sh; a tied keeper waits on its lifeline instead, see `lifeline`.)
KEEPER_ARGV = ("sleep", "infinity")


def _seccomp_args(run: ContainerRun, runtime: Runtime, engine: EngineTraits) -> list[str]:
    """Our profile instead of the engine's default. gVisor ignores a container's seccomp
    profile unless told (`--oci-seccomp`): podman says so per run; docker's runsc must be
    registered with it (the probe checks)."""
    if run.seccomp_profile is None:
        return []
    args = ["--security-opt", f"seccomp={run.seccomp_profile}"]
    if runtime is Runtime.RUNSC and engine.runtime_network_flag:
        args += ["--runtime-flag", "oci-seccomp"]
    return args


def _harden_binds(args: list[str], engine: EngineTraits) -> list[str]:
    """Every bind mount `nosuid,nodev` where the engine takes mount options on binds."""
    if not engine.bind_options:
        return args
    hardened = list(args)
    for index in range(1, len(hardened)):
        if hardened[index - 1] == "--mount" and hardened[index].startswith("type=bind,"):
            hardened[index] += ",nosuid,nodev"
    return hardened


def _entry(
    request: RunRequest, run: ContainerRun, *, keeper: bool, bridge: ProxyBridge | None
) -> list[str]:
    """The container's process: the command (behind the bridge script, under the
    watcher), or a pool's keeper."""
    if run.agent is not None:
        return [AGENT_PATH, *run.agent.arguments]
    if keeper:
        return keeper_argv() if run.lifeline is not None else list(KEEPER_ARGV)
    argv = request.argv if bridge is None else tuple(bridge_argv(bridge, request.argv))
    return list(argv) if run.lifeline is None else watched_argv(run.lifeline, argv)


def _input_mount(run: ContainerRun, *, keeper: bool) -> list[str]:
    lifeline = run.lifeline
    if keeper or lifeline is None or lifeline.stdin_file is None:
        return []
    return _bind(lifeline.stdin_file, STDIN_PATH, readonly=True)


def _extra_processes(run: ContainerRun, *, keeper: bool) -> int:
    """Processes of ours under the pids limit besides the command's: the keeper, or the
    watcher."""
    if keeper or run.agent is not None:
        return 1
    return WATCHER_PROCESSES if run.lifeline is not None else 0


def _process_args(
    request: RunRequest, run: ContainerRun, engine: EngineTraits, *, keeper: bool
) -> list[str]:
    """Its init, and how the CLI stays attached (or not)."""
    args: list[str] = []
    if engine.init and run.lifeline is None and run.agent is None:
        # A real PID 1 that reaps zombies and forwards signals; the command is its child.
        # (A tied container's PID 1 is its watcher, which the command cannot signal; a
        # session's is its agent, a child subreaper that kills what each command leaves.)
        args.append("--init")
        if engine.init_path is not None:
            args += ["--init-path", engine.init_path]
    if run.lifeline is not None or run.agent is not None:
        args.append("--interactive")  # the lifeline, or the session agent's channel
    elif request.stdin is not None and not keeper:
        args.append("--interactive")
    elif keeper:
        args.append("--detach")
    return args


def compile_container_args(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    image: str,
    runtime: Runtime,
    engine: EngineTraits,
    *,
    run: ContainerRun,
    cpus: float | None = None,
    keeper: bool = False,
    bridge: ProxyBridge | None = None,
) -> tuple[str, ...]:
    """The arguments after the engine executable: `run ... IMAGE ARGS...`.

    The workspace is bind-mounted at the same path it has on the host, so paths the agent
    saw (in compiler errors, stack traces, its own notes) mean the same on both sides.
    The container runs as the host's uid:gid so files it writes belong to the user.

    `keeper`: a warm-pool container: running its keeper (the request's argv and stdin are
    ignored; detached when it is not tied to us, else attached to its lifeline), without
    the command's environment (each `exec` passes it), and with one more process allowed
    (the keeper itself) under the pids limit.

    `run.lifeline`: the container is attached (`--interactive`: its stdin is the lifeline)
    and its entry is the watcher, which runs the command with its input from `STDIN_PATH`.

    `bridge` (allowlist mode): the run's proxy socket is mounted read-only at
    `PROXY_SOCKET`, the proxy variables point at `PROXY_URL`, and the command runs behind
    the bridge script, which first starts the image's socat on the container's loopback.
    The container stays `--network none`. Not for keepers (see pool_settings); a session's
    container (`run.agent`) gets the session proxy's socket mounted for its life, and its
    agent starts each command behind the bridge (see `oci.session`).
    """
    limits = policy.limits
    workspace = run.workspace
    if keeper:
        bridge = None  # a keeper outlives each run's proxy socket (see POOLED_ALLOWLIST)
    # A session's container is kept like a pool's: its agent starts each command with that
    # command's own environment, from the records it is sent.
    keeper = keeper or run.agent is not None
    if keeper:
        request = RunRequest(argv=KEEPER_ARGV, workspace=request.workspace)
    args: list[str] = [
        "run",
        "--name",
        run.name,
        "--label",
        f"{LABEL_RUN}={run.run_id}",
        "--label",
        f"{LABEL_OWNER}={run.owner}",
        *(["--cidfile", run.cidfile] if run.cidfile is not None else []),
        "--pull",
        "never",  # never reach a registry: the image must already be there
        "--log-driver",
        "none",  # output goes to us only, not also to an unbounded log on the engine's disk
    ]
    args += _process_args(request, run, engine, keeper=keeper)
    args += [
        "--network",
        "none",
        "--ipc",
        "private",
        "--hostname",
        "sandbox",
        "--read-only",
        "--tmpfs",
        f"/tmp:rw,nosuid,nodev,mode=1777,size={tmp_bytes(limits)}",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        *_seccomp_args(run, runtime, engine),
        "--user",
        f"{host.uid}:{host.gid}",
    ]
    if engine.keep_id:
        args += ["--userns", "keep-id"]
    args += _bind(workspace, workspace, readonly=False)
    args += _protection_mounts(run)
    args += _socket_mounts(run)

    args += _policy_mounts(run, engine)
    args += _bridge_mount(bridge)
    args += _input_mount(run, keeper=keeper)
    if run.agent is not None:
        args += _bind(run.agent.host_path, AGENT_PATH, readonly=True)
    args += ["--workdir", workspace]
    if limits.memory_bytes is not None:
        memory = str(limits.memory_bytes)
        args += ["--memory", memory, "--memory-swap", memory]
    if limits.max_processes is not None:
        args += ["--pids-limit", str(limits.max_processes + _extra_processes(run, keeper=keeper))]
    if cpus is not None:
        args += ["--cpus", f"{cpus:g}"]
    args += _ulimits(policy, engine)
    if runtime is not Runtime.DEFAULT:
        args += ["--runtime", runtime.value]
        if runtime is Runtime.RUNSC and engine.runtime_network_flag:
            args += ["--runtime-flag", "network=none"]
    if not keeper:
        args += _environment_args()
    args = _harden_binds(args, engine)  # (before the image: the command's own words follow)
    # The entrypoint is ours: an image's ENTRYPOINT must not wrap it.
    argv = _entry(request, run, keeper=keeper, bridge=bridge)
    args += ["--entrypoint", argv[0], image, *argv[1:]]
    return tuple(args)


def compile_exec_args(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    *,
    container: str,
    workspace: str,
) -> tuple[str, ...]:
    """`exec ... CONTAINER ARGV...`: one command in a running (pooled) keeper container.

    The container's cgroup limits (memory, pids, cpus) and ulimits apply to the exec'd
    process; user, working directory and environment are given per exec, as `run` would.
    """
    args: list[str] = ["exec"]
    if request.stdin is not None:
        args.append("--interactive")
    args += ["--user", f"{host.uid}:{host.gid}", "--workdir", workspace]
    args += _environment_args()
    args += [container, *request.argv]
    return tuple(args)
