"""What a backend can enforce on this host, and what a policy asks for."""

from __future__ import annotations

import enum

import attrs

from mechasandbox.domain.policy import HostProcesses, NetworkMode, Policy


class Protection(enum.Enum):
    """One protection a policy can require and a backend can give."""

    FILESYSTEM_READ = "filesystem-read"  # reads confined: secrets outside the policy unreadable
    FILESYSTEM_WRITE = "filesystem-write"  # writes confined to the workspace and private tmp
    PROTECTED_PATHS = "protected-paths"  # "runs later" files in the workspace not writable
    NETWORK_NONE = "network-none"  # no egress at all
    NETWORK_ALLOWLIST = "network-allowlist"  # egress only through the allowlist proxy
    # Of the host's unix sockets (path and abstract), only those the policy names are
    # reachable. Without names every backend keeps them all out; with names a backend must
    # tell the named ones from the rest (Landlock cannot: it does not govern connect()).
    NAMED_UNIX_SOCKETS = "named-unix-sockets"
    # Host processes cannot be signalled, traced, or have their environment/memory read.
    PID_ISOLATION = "pid-isolation"
    # Host processes are not even listed (a pid namespace); see `HostProcesses`.
    HOST_PROCESSES_HIDDEN = "host-processes-hidden"
    ENVIRONMENT = "environment"  # the command sees only the scrubbed environment
    TIMEOUT = "timeout"
    TREE_TEARDOWN = "tree-teardown"  # nothing outlives the run, setsid'd children included
    CPU = "cpu"
    MEMORY = "memory"
    PROCESSES = "processes"
    OPEN_FILES = "open-files"
    FILE_SIZE = "file-size"


def required_protections(policy: Policy) -> frozenset[Protection]:
    """Every protection `policy` asks for; a strict run needs a backend that gives them all."""
    required = {
        Protection.FILESYSTEM_READ,
        Protection.FILESYSTEM_WRITE,
        Protection.PID_ISOLATION,
        Protection.ENVIRONMENT,
        Protection.TREE_TEARDOWN,
    }
    if policy.host_processes is HostProcesses.HIDDEN:
        required.add(Protection.HOST_PROCESSES_HIDDEN)
    if policy.filesystem.protected:
        required.add(Protection.PROTECTED_PATHS)
    if policy.network.mode is NetworkMode.NONE:
        required.add(Protection.NETWORK_NONE)
    elif policy.network.mode is NetworkMode.ALLOWLIST:
        required.add(Protection.NETWORK_ALLOWLIST)
    if policy.network.allow_unix_sockets:
        required.add(Protection.NAMED_UNIX_SOCKETS)
    limits = policy.limits
    optional = (
        (limits.timeout_s, Protection.TIMEOUT),
        (limits.cpu_time_s, Protection.CPU),
        (limits.memory_bytes, Protection.MEMORY),
        (limits.max_processes, Protection.PROCESSES),
        (limits.max_open_files, Protection.OPEN_FILES),
        (limits.max_file_size_bytes, Protection.FILE_SIZE),
    )
    required.update(protection for value, protection in optional if value is not None)
    return frozenset(required)


@attrs.frozen(kw_only=True)
class Capabilities:
    """A backend's honest report: what it enforces here and how, and what it cannot."""

    backend: str
    enforced: frozenset[Protection]
    # How each enforced protection is achieved, or why a missing one is not ("memory":
    # "cgroup v1 memory controller"). Shown by `doctor`.
    details: tuple[tuple[Protection, str], ...] = ()
    # Protections weaker than asked or not enforced here: every run's result repeats them.
    warnings: tuple[str, ...] = ()
    # Information, no gap (the engine's version, the image, a warm pool's size): results
    # carry them under `notes`, which the CLI prints only with `--verbose`.
    notes: tuple[str, ...] = ()

    def missing(self, policy: Policy) -> tuple[Protection, ...]:
        """Protections `policy` needs that this backend cannot give, in a stable order."""
        needed = required_protections(policy) - self.enforced
        return tuple(p for p in Protection if p in needed)

    def detail(self, protection: Protection) -> str | None:
        return next((text for p, text in self.details if p is protection), None)
