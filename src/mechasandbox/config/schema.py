"""The shape of one configuration layer: every key optional, nothing resolved yet.

A layer (the packaged defaults, the user file, a project file, `--config`, the CLI) says
only what it sets. Keeping "not set" (`None`) apart from "set to the default" is what lets
the loader merge layers and tell a project file that narrows from one that widens.
Names follow the files (`limits.memory`), not the domain (`Limits.memory_bytes`), so that
error messages can quote them back.
"""

from __future__ import annotations

import enum

import attrs

from mechasandbox.domain.policy import Enforcement, HostProcesses, NetworkMode


class Unlimited(enum.Enum):
    """`"unlimited"` in a file: TOML has no null, and "no limit" must be said explicitly."""

    UNLIMITED = "unlimited"


UNLIMITED = Unlimited.UNLIMITED

Paths = tuple[str, ...]
Names = tuple[str, ...]


@attrs.frozen(kw_only=True)
class BackendSettings:
    name: str | None = None  # `auto` or a name of `backends.catalog` (checked when read)
    image: str | None = None  # container backends: the image to run in
    runtime: str | None = None  # container backends: the OCI runtime, e.g. "runsc"
    # docker: how many containers to keep started ahead of runs (the user's layers only)
    pool_size: int | None = None


@attrs.frozen(kw_only=True)
class RaySettings:
    """`[ray]`: where `backend = "ray"` sends runs (the user's layers only: a project file
    never sends the workspace to a cluster). None: the default (docs/ray.md)."""

    address: str | None = None  # the cluster's GCS, "10.0.0.1:6379"; "auto": this node's
    backend: str | None = None  # what each node runs: `auto` or a confining catalog name
    max_transfer: int | None = None  # bytes of workspace each way (tar in, changes back)
    grace: float | None = None  # seconds past the timeout before the caller cancels
    retries: int | None = None  # runs again on a lost node only when > 0 (opt-in)


NO_RAY = RaySettings()


@attrs.frozen(kw_only=True)
class FilesystemSettings:
    readable: Paths | None = None
    writable: Paths | None = None
    deny_read: Paths | None = None
    deny_write: Paths | None = None
    protected: Paths | None = None
    toolchains: Paths | None = None  # "auto" and paths; "none" in a file is ()
    umask: int | None = None


@attrs.frozen(kw_only=True)
class NetworkSettings:
    mode: NetworkMode | None = None
    allow: Names | None = None
    deny: Names | None = None
    allow_unix_sockets: Paths | None = None


@attrs.frozen(kw_only=True)
class LimitsSettings:
    """Durations in seconds and sizes in bytes, already parsed from their file spelling."""

    timeout: float | Unlimited | None = None
    cpu_time: float | Unlimited | None = None
    memory: int | Unlimited | None = None
    max_processes: int | Unlimited | None = None
    max_open_files: int | Unlimited | None = None
    max_file_size: int | Unlimited | None = None
    max_output: int | None = None  # always bounded: captured output lives in memory


@attrs.frozen(kw_only=True)
class EnvironmentSettings:
    allow: Names | None = None
    pass_: Names | None = None  # `pass` in files; a keyword in Python
    set: tuple[tuple[str, str], ...] | None = None


@attrs.frozen(kw_only=True)
class Settings:
    """One layer of configuration, as read from one file or given by one caller."""

    backend: BackendSettings = BackendSettings()
    ray: RaySettings = RaySettings()
    filesystem: FilesystemSettings = FilesystemSettings()
    network: NetworkSettings = NetworkSettings()
    limits: LimitsSettings = LimitsSettings()
    environment: EnvironmentSettings = EnvironmentSettings()
    enforcement: Enforcement | None = None
    host_processes: HostProcesses | None = None
