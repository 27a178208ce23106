"""How each backend is built from what a composition root provides (a runner, the host's
facts, the egress settings, the state it shares). The catalog's build functions
(`backends.catalog`) call these for the composition root (`mechasandbox.containers`).

Each imports its backend's module when called: a platform's modules stay out of other
platforms' imports, and a caller that builds one backend pays for that one only.

What a backend remembers across runs is a state object with a `close` (see each backend's
fields); its factory takes it as a parameter, None meaning the backend's own, so that a
composition root can pass one it shares and closes at shutdown.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mechasandbox.backends.base import Backend, HostContext
    from mechasandbox.backends.git_facts import GitFacts
    from mechasandbox.backends.linux.private_tmp import PrivateTmpDirs
    from mechasandbox.backends.oci.state import EngineState
    from mechasandbox.backends.probe_cache import ProbeCache
    from mechasandbox.backends.workspace.placeholders import WorkspacePlaceholders
    from mechasandbox.config.schema import RaySettings
    from mechasandbox.limits.cgroup import CgroupManager
    from mechasandbox.network.proxy.resolver import Resolver
    from mechasandbox.network.session import EgressProxy
    from mechasandbox.runner.interruption import Interruption
    from mechasandbox.runner.protocol import ProcessRunner


def none(runner: ProcessRunner, host: HostContext) -> Backend:
    from mechasandbox.backends.none import NoneBackend

    return NoneBackend(runner=runner, host=host)


def _given(**state: object) -> dict[str, Any]:
    """The state objects a root passes (None: the backend makes its own)."""
    return {name: value for name, value in state.items() if value is not None}


def process(
    runner: ProcessRunner, host: HostContext, cgroups: CgroupManager | str | None = None
) -> Backend:
    """`cgroups`: the runs' cgroup manager (state: its pool; None: the backend's own)."""
    from mechasandbox.backends.process import ProcessBackend

    return ProcessBackend(runner=runner, host=host, **_given(cgroups=cgroups))


def bubblewrap(
    runner: ProcessRunner,
    host: HostContext,
    egress: EgressProxy | None = None,
    probe_cache: ProbeCache | None = None,
    placeholders: WorkspacePlaceholders | None = None,
    cgroups: CgroupManager | str | None = None,
    git: GitFacts | None = None,
) -> Backend:
    """`probe_cache`: where a successful probe is remembered across processes.
    `placeholders`, `cgroups`, `git` (what the search for git indirections read): state
    (None: the backend's own)."""
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

    return BubblewrapBackend(
        runner=runner,
        host=host,
        egress=egress,
        probe_cache=probe_cache,
        **_given(placeholders=placeholders, cgroups=cgroups, git=git),
    )


def landlock(
    runner: ProcessRunner,
    host: HostContext,
    egress: EgressProxy | None = None,
    tmp_dirs: PrivateTmpDirs | None = None,
    cgroups: CgroupManager | str | None = None,
    git: GitFacts | None = None,
) -> Backend:
    """`tmp_dirs` (the private tmp dirs kept for later runs), `cgroups`, `git`: state
    (None: the backend's own)."""
    from mechasandbox.backends.linux.landlock import LandlockBackend

    return LandlockBackend(
        runner=runner,
        host=host,
        egress=egress,
        **_given(tmp_dirs=tmp_dirs, cgroups=cgroups, git=git),
    )


def cgroups() -> Iterator[CgroupManager | str]:
    """This host's cgroup manager for a composition root to share between its backends;
    its pool of cgroups is removed at shutdown."""
    from mechasandbox.backends.resources import default_cgroups

    manager = default_cgroups()
    try:
        yield manager
    finally:
        if not isinstance(manager, str):
            manager.close()


def workspace_placeholders() -> WorkspacePlaceholders:
    """A state of placeholders for a composition root to share between its bubblewrap
    backends and close at shutdown."""
    from mechasandbox.backends.workspace.placeholders import WorkspacePlaceholders

    return WorkspacePlaceholders()


def private_tmp_dirs() -> PrivateTmpDirs:
    """A state of kept private tmp dirs for a composition root to share between its
    landlock backends and close at shutdown."""
    from mechasandbox.backends.linux.private_tmp import PrivateTmpDirs

    return PrivateTmpDirs()


def sweep_leftovers(
    placeholders: Callable[[], WorkspacePlaceholders],
    cgroups: Callable[[], CgroupManager | str],
) -> None:
    """Remove what dead processes of this user left behind (after SIGKILL, a crash): the
    temp dirs and files named after their owner (`leftovers`), the placeholders their
    journals list and those journals, their pooled cgroups. One listing per place, only
    what belonged to a process that is gone. A composition root calls it once, before it
    builds its first backend (see docs/failure-semantics.md)."""
    from mechasandbox.leftovers import holds_any, state_directory, sweep_temp_dir

    sweep_temp_dir()
    if sys.platform.startswith("linux"):
        state = state_directory()
        # Journals (and their stashes) exist only while a process has placeholders, or
        # after one died: without any, the placeholders' state is not even imported.
        if state is not None and holds_any(state / "placeholders", (".paths", ".stash")):
            placeholders().sweep()
        manager = cgroups()
        if not isinstance(manager, str):
            manager.sweep()


def git_facts() -> GitFacts:
    """What the search for git indirections reads, for a composition root to share between
    the backends that protect the workspace (it holds nothing outside the process)."""
    from mechasandbox.backends.git_facts import GitFacts

    return GitFacts()


def seatbelt(
    runner: ProcessRunner, host: HostContext, egress: EgressProxy, git: GitFacts | None = None
) -> Backend:
    """`git`: state (None: the backend's own)."""
    from mechasandbox.backends.macos.seatbelt import SeatbeltBackend

    return SeatbeltBackend(runner=runner, host=host, egress=egress, **_given(git=git))


def apple_container(runner: ProcessRunner, host: HostContext, image: str | None) -> Backend:
    """Unavailable (with the reason) until an image is configured: no implicit default."""
    from mechasandbox.backends.macos.apple_container import AppleContainerBackend

    return AppleContainerBackend(runner=runner, host=host, image=image or None)


def container_engine(
    engine: str,
    *,
    runner: ProcessRunner,
    host: HostContext,
    image: str | None,
    runtime: str | None,
    egress: EgressProxy,
    state: EngineState | None = None,
    git: GitFacts | None = None,
) -> Backend:
    """Docker or Podman with the configured image and OCI runtime (`runsc` for gVisor).
    `state`: what the backend keeps across runs (`engine_state`; None: its own), one
    shared by docker and podman, closed on shutdown; `git`: likewise, what the search for
    git indirections read."""
    from mechasandbox.backends.oci import DockerBackend, PodmanBackend, Runtime
    from mechasandbox.backends.registry import MissingBackend

    backend_class = DockerBackend if engine == "docker" else PodmanBackend
    options: dict[str, Any] = {"runner": runner, "host": host, "egress": egress}
    options.update(_given(state=state, git=git))
    if image:
        options["image"] = image
    if runtime:
        try:
            options["runtime"] = Runtime(runtime)
        except ValueError:
            known = ", ".join(r.value for r in Runtime)
            return MissingBackend(
                backend_name=engine, reason=f"unknown OCI runtime {runtime!r} (known: {known})"
            )
    built: Backend = backend_class(**options)
    return built


def engine_state() -> EngineState:
    """The live containers, placeholders, profile files... the docker and podman backends
    keep across runs (see `EngineState`): a resource, closed on shutdown."""
    from mechasandbox.backends.oci.state import EngineState

    return EngineState()


def pooled(backend: Backend, size: int | None) -> Iterator[Backend]:
    """Docker behind a warm pool of pre-started containers when `size` is set."""
    from mechasandbox.backends.oci import OciBackend, PooledBackend, PoolSettings

    if not size or not isinstance(backend, OciBackend) or backend.kind != "docker":
        yield backend
        return
    pool = PooledBackend(backend=backend, settings=PoolSettings(size=size))
    try:
        yield pool
    finally:
        pool.close()


def ray_cluster(
    settings: RaySettings | None,
    *,
    image: str | None,
    runtime: str | None,
    interruption: Interruption | None = None,
) -> Iterator[Backend]:
    """The `ray` backend for `settings` (`[ray]`); unavailable, with the reason, without the
    extra or an address. The connection to the cluster it opens is closed afterwards."""
    from mechasandbox.backends.cluster.backend import RayBackend
    from mechasandbox.backends.cluster.connection import ClusterConnection
    from mechasandbox.config.schema import NO_RAY

    connection = ClusterConnection(settings=settings or NO_RAY)
    try:
        yield RayBackend(
            connection=connection, image=image, runtime=runtime, interruption=interruption
        )
    finally:
        connection.close()


def system_resolver() -> Resolver:
    """The host's own name resolution, for the allowlist proxy."""
    from mechasandbox.network.proxy.resolver import SystemResolver

    return SystemResolver()


def egress_proxy(resolver: Resolver) -> EgressProxy:
    from mechasandbox.network.session import EgressProxy

    return EgressProxy(resolver=resolver)
