"""Every backend, once: its name, how it is built, where `auto` ranks it, what it needs.

Everything that knows backend names derives from `CATALOG`: the `--backend` choices and
the configuration's accepted names (`NAMES`), `auto`'s candidates (`AUTO_ORDER`), the
CLI's loop-free path (`LOOPLESS`), the narrowing rule's unconfined backends, the
composition root's providers (`mechasandbox.containers`), `doctor` and `doctor --verify`.

Adding a backend is adding an entry here and its `build` function (see
docs/architecture.md, "Adding a backend"). This module imports no backend: each `build`
imports its own when called (through `factories`), so that a platform's modules stay out
of the others' imports and a CLI call pays for the one backend it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import attrs

from mechasandbox.backends import factories

if TYPE_CHECKING:
    from mechasandbox.backends.base import Backend, HostContext
    from mechasandbox.backends.git_facts import GitFacts
    from mechasandbox.backends.linux.private_tmp import PrivateTmpDirs
    from mechasandbox.backends.oci.state import EngineState
    from mechasandbox.backends.probe_cache import ProbeCache
    from mechasandbox.backends.workspace.placeholders import WorkspacePlaceholders
    from mechasandbox.config.schema import RaySettings
    from mechasandbox.limits.cgroup import CgroupManager
    from mechasandbox.network.session import EgressProxy
    from mechasandbox.runner.interruption import Interruption
    from mechasandbox.runner.protocol import ProcessRunner

AUTO = "auto"


@attrs.frozen(kw_only=True)
class BackendDeps:
    """What the composition root hands every backend's `build`: each takes what it uses.

    `egress` is a callable, not the value: the proxy's settings are made when the first
    backend that keeps them is built, not for every composition.
    """

    runner: ProcessRunner
    host: HostContext
    egress: Callable[[], EgressProxy]
    probe_cache: ProbeCache | None = None
    image: str | None = None
    runtime: str | None = None
    pool_size: int | None = None
    ray: RaySettings | None = None
    # What the caller's SIGINT/SIGTERM feed (`Core.interruption`), for a backend whose runs
    # no runner of this process holds (ray).
    interruption: Interruption | None = None


# The configuration settings a backend reads besides the policy (`backend.image`...).
IMAGE = "image"
RUNTIME = "runtime"
POOL_SIZE = "pool_size"
RAY = "ray"


@attrs.frozen(kw_only=True)
class BackendEntry:
    """One backend of the catalog.

    `build`: makes the backend from the root's pieces; a generator when the backend holds
    something to release (the root closes it in `shutdown_resources()`).
    `auto_rank`: its place among `auto`'s candidates, strongest first; None: never chosen
    by `auto` (`none`).
    `loopless`: its `run` waits on nothing but its runner unless the network mode is
    allowlist (the proxy serves from an event loop), so that with a blocking runner it
    needs no event loop (`runner.blocking`): how the CLI runs it.
    `confines`: it confines the file system or the network; a project file may not choose
    one that does not (that would widen the user's policy).
    `settings`: the backend settings of the configuration it reads.
    `state`: the state objects of the root it keeps (`STATE`'s names), handed to `build`
    as keyword arguments: what backends remember across runs (placeholders, private tmp
    dirs, the pool of cgroups, the container engines' live containers, what the search
    for git indirections read) belongs to the root, shared by its backends and closed in
    `shutdown_resources()` after them.
    """

    name: str
    build: Callable[..., Backend] | Callable[..., Iterator[Backend]]
    summary: str
    auto_rank: int | None
    loopless: bool = False
    confines: bool = True
    settings: frozenset[str] = frozenset()
    state: frozenset[str] = frozenset()


# The root's state objects, by the name a backend's `build` takes each as.
PLACEHOLDERS = "placeholders"
TMP_DIRS = "tmp_dirs"
CGROUPS = "cgroups"
ENGINE_STATE = "engine_state"
GIT_FACTS = "git_facts"


def _none(deps: BackendDeps) -> Backend:
    return factories.none(deps.runner, deps.host)


def _process(deps: BackendDeps, *, cgroups: CgroupManager | str) -> Backend:
    return factories.process(deps.runner, deps.host, cgroups=cgroups)


def _bubblewrap(
    deps: BackendDeps,
    *,
    placeholders: WorkspacePlaceholders,
    cgroups: CgroupManager | str,
    git_facts: GitFacts,
) -> Backend:
    return factories.bubblewrap(
        deps.runner,
        deps.host,
        egress=deps.egress(),
        probe_cache=deps.probe_cache,
        placeholders=placeholders,
        cgroups=cgroups,
        git=git_facts,
    )


def _landlock(
    deps: BackendDeps,
    *,
    tmp_dirs: PrivateTmpDirs,
    cgroups: CgroupManager | str,
    git_facts: GitFacts,
) -> Backend:
    return factories.landlock(
        deps.runner,
        deps.host,
        egress=deps.egress(),
        tmp_dirs=tmp_dirs,
        cgroups=cgroups,
        git=git_facts,
    )


def _engine(engine: str, deps: BackendDeps, state: EngineState, git: GitFacts) -> Backend:
    return factories.container_engine(
        engine,
        runner=deps.runner,
        host=deps.host,
        image=deps.image,
        runtime=deps.runtime,
        egress=deps.egress(),
        state=state,
        git=git,
    )


def _docker(
    deps: BackendDeps, *, engine_state: EngineState, git_facts: GitFacts
) -> Iterator[Backend]:
    """Docker behind a warm pool of pre-started containers when `pool_size` is set."""
    yield from factories.pooled(_engine("docker", deps, engine_state, git_facts), deps.pool_size)


def _podman(deps: BackendDeps, *, engine_state: EngineState, git_facts: GitFacts) -> Backend:
    return _engine("podman", deps, engine_state, git_facts)


def _seatbelt(deps: BackendDeps, *, git_facts: GitFacts) -> Backend:
    return factories.seatbelt(deps.runner, deps.host, egress=deps.egress(), git=git_facts)


def _apple_container(deps: BackendDeps) -> Backend:
    return factories.apple_container(deps.runner, deps.host, image=deps.image)


def _ray(deps: BackendDeps) -> Iterator[Backend]:
    """Runs on the nodes of a Ray cluster, each with its own local backend (the extra
    `mechasandbox[ray]`); the connection it opened is closed with the root."""
    yield from factories.ray_cluster(
        deps.ray, image=deps.image, runtime=deps.runtime, interruption=deps.interruption
    )


# In the order `--backend` lists them (CLI.md); `auto_rank` orders `auto`'s candidates,
# strongest first. On macOS `auto` tries Apple Container (when its service runs and an
# image is configured), then Seatbelt, then the container engines.
CATALOG: tuple[BackendEntry, ...] = (
    BackendEntry(
        name="none",
        build=_none,
        summary="no sandbox at all: runs the command as it is",
        auto_rank=None,
        loopless=True,
        confines=False,
    ),
    BackendEntry(
        name="process",
        build=_process,
        summary="a plain child process with resource limits only",
        auto_rank=7,
        loopless=True,
        confines=False,
        state=frozenset({CGROUPS}),
    ),
    BackendEntry(
        name="landlock",
        build=_landlock,
        summary="Linux Landlock rules and seccomp in the child, no namespaces",
        auto_rank=2,
        loopless=True,
        state=frozenset({TMP_DIRS, CGROUPS, GIT_FACTS}),
    ),
    BackendEntry(
        name="bubblewrap",
        build=_bubblewrap,
        summary="Linux namespaces with bubblewrap: own mount, PID, network view",
        auto_rank=1,
        loopless=True,
        state=frozenset({PLACEHOLDERS, CGROUPS, GIT_FACTS}),
    ),
    BackendEntry(
        name="docker",
        build=_docker,
        summary="a Docker container per run (optionally gVisor, optionally a warm pool)",
        auto_rank=5,
        settings=frozenset({IMAGE, RUNTIME, POOL_SIZE}),
        state=frozenset({ENGINE_STATE, GIT_FACTS}),
    ),
    BackendEntry(
        name="podman",
        build=_podman,
        summary="a Podman container per run (optionally gVisor)",
        auto_rank=6,
        settings=frozenset({IMAGE, RUNTIME}),
        state=frozenset({ENGINE_STATE, GIT_FACTS}),
    ),
    BackendEntry(
        name="seatbelt",
        build=_seatbelt,
        summary="macOS: a sandbox-exec profile",
        auto_rank=4,
        state=frozenset({GIT_FACTS}),
    ),
    BackendEntry(
        name="apple-container",
        build=_apple_container,
        summary="macOS: one lightweight VM per run (Apple's `container`)",
        auto_rank=3,
        settings=frozenset({IMAGE}),
    ),
    BackendEntry(
        name="ray",
        build=_ray,
        summary="each run on a node of a Ray cluster, under that node's own backend",
        auto_rank=None,
        settings=frozenset({RAY, IMAGE, RUNTIME}),
    ),
)

BY_NAME = {entry.name: entry for entry in CATALOG}
# `--backend` and `backend.name`: `auto`, then every backend.
NAMES: tuple[str, ...] = (AUTO, *(entry.name for entry in CATALOG))
AUTO_ORDER: tuple[str, ...] = tuple(
    entry.name
    for entry in sorted(CATALOG, key=lambda e: e.auto_rank or 0)
    if entry.auto_rank is not None
)
LOOPLESS = frozenset(entry.name for entry in CATALOG if entry.loopless)
UNCONFINED = frozenset(entry.name for entry in CATALOG if not entry.confines)


def unknown_reason(name: str) -> str:
    return f"unknown backend {name!r} (known: {', '.join(NAMES)})"
