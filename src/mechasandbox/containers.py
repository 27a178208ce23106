"""The composition root: dependency-injector containers built from configuration.

One call gives a library user exactly what the CLI gets, from the same configuration
layers (packaged defaults, the user file, the workspace's project files, `files`, then
explicit `changes`):

    app = Application.from_config(workspace="/path/to/repo").unwrap()
    try:
        sandbox = app.services.sandbox()            # typed: a `Sandbox`
        result = sandbox.run_sync(["make", "test"])
    finally:
        app.shutdown_resources()                    # stops what runs, releases backend state

Tests swap pieces with provider overrides, e.g. ``app.core.runner.override(fake_runner)``
or ``app.backends.selected.override(fake_backend)``. Providers stay synchronous because
dependency-injector's async providers are asyncio-only and this library runs on anyio.
Every backend comes from `backends.catalog`; nothing here names one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
from dependency_injector import containers, providers
from returns.result import Result

from mechasandbox.backends import catalog, factories
from mechasandbox.backends.base import Backend, HostContext
from mechasandbox.backends.probe_cache import ProbeCache
from mechasandbox.backends.registry import AutoBackend, MissingBackend
from mechasandbox.config.changes import PolicyChanges
from mechasandbox.config.loading import DISCOVER, ResolvedConfig, UserFile, load_policy
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import NetworkPolicy, Policy
from mechasandbox.runner.client import SpawnHelperClient
from mechasandbox.runner.interruption import Interruption
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.sandbox import Sandbox

if TYPE_CHECKING:
    from mechasandbox.config.schema import Settings


def _runner(
    helper: SpawnHelperClient | None, interruption: Interruption | None
) -> Iterator[ProcessRunner]:
    # Imported here: it brings anyio, which the CLI's loop-free path does without.
    from mechasandbox.runner.runner import HelperProcessRunner

    runner = HelperProcessRunner(helper=helper, interruption=interruption)
    try:
        yield runner
    finally:
        runner.close()


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


def _owned(factory: Callable[[], C]) -> Iterator[C]:
    """State a backend keeps across runs, owned by the root: closed by
    `shutdown_resources()` (each also releases itself at exit if never closed)."""
    state = factory()
    try:
        yield state
    finally:
        state.close()


def _compose_policy(base: Policy, limits: Limits, network: NetworkPolicy) -> Policy:
    return attrs.evolve(base, limits=limits, network=network)


def _select(name: str, named: providers.Aggregate[Backend], auto: Callable[[], Backend]) -> Backend:
    """The configured backend; a name the catalog does not know is unavailable, never
    another backend."""
    if name == catalog.AUTO:
        return auto()
    if name in named.providers:
        return named(name)
    return MissingBackend(backend_name=name, reason=catalog.unknown_reason(name))


def _each_backend(
    deps: providers.Provider[catalog.BackendDeps], state: dict[str, providers.Provider[Any]]
) -> dict[str, providers.Provider[Backend]]:
    return {
        entry.name: providers.Resource(
            entry.build, deps, **{name: state[name] for name in entry.state}
        )
        for entry in catalog.CATALOG
    }


def _after_sweep(_swept: None, **deps: Any) -> catalog.BackendDeps:
    """The backends' pieces, once the leftovers of dead processes are gone (`Core.swept`)."""
    return catalog.BackendDeps(**deps)


def _auto_candidates(named: providers.Aggregate[Backend]) -> list[providers.Provider[Backend]]:
    return [named.providers[name] for name in catalog.AUTO_ORDER]


class Core(containers.DeclarativeContainer):
    """Host facts, the one process runner, the configured base policy."""

    config = providers.Configuration(strict=True)
    host = providers.Singleton(HostContext.current)
    # The spawn helper's client the runner uses (None: its own). The CLI hands in the one
    # it started first thing, so that the helper's start overlaps its own.
    helper: providers.Provider[SpawnHelperClient | None] = providers.Object(None)
    # What stops the runs when the caller is told to stop (`runner.interruption`; the CLI
    # hands in the one its SIGINT and SIGTERM handlers feed). None: signals do as they do.
    interruption: providers.Provider[Interruption | None] = providers.Object(None)
    runner: providers.Provider[ProcessRunner] = providers.Resource(
        _runner, helper=helper, interruption=interruption
    )
    # The policy every layer of configuration resolved to (`from_config`).
    base_policy: providers.Provider[Policy] = providers.Callable(lambda p: p, config.policy)
    # Names the allowlist proxy resolves; tests override it with a fake mapping names to
    # loopback servers they started.
    resolver = providers.Singleton(factories.system_resolver)
    egress = providers.Singleton(factories.egress_proxy, resolver=resolver)
    # Where backends remember a successful probe across processes (the CLI's per-user
    # cache, `ProbeCache`); None: each process probes.
    probe_cache: providers.Provider[ProbeCache | None] = providers.Object(None)


class Backends(containers.DeclarativeContainer):
    """Every backend of the catalog by name (`named`), `auto`, and `selected`: the one the
    configuration's `backend` names."""

    config = providers.Configuration(strict=True)
    core = providers.DependenciesContainer()

    # What backends remember across runs, shared by the backends of this root (made when
    # the first backend that keeps one is built). They are in this container, handed
    # to each backend's resource directly, so that `shutdown_resources()` closes the
    # backends first (docker's pool ends its containers) and their state after.
    placeholders = providers.Resource(_owned, factories.workspace_placeholders)
    tmp_dirs = providers.Resource(_owned, factories.private_tmp_dirs)
    cgroups = providers.Resource(factories.cgroups)
    # docker's and podman's (one, as they share the workspaces they protect).
    engine_state = providers.Resource(_owned, factories.engine_state)
    # What the search for git indirections read, for every backend that protects paths.
    git_facts = providers.Resource(_owned, factories.git_facts)
    # What dead processes of this user left behind, removed once: before the first backend
    # of this root is built (`deps` needs it).
    swept = providers.Resource(
        factories.sweep_leftovers, placeholders=placeholders.provider, cgroups=cgroups.provider
    )
    deps = providers.Singleton(
        _after_sweep,
        swept,
        runner=core.runner,
        host=core.host,
        egress=core.egress.provider,
        probe_cache=core.probe_cache,
        image=config.image,
        runtime=config.runtime,
        pool_size=config.pool_size,
        ray=config.ray,
        interruption=core.interruption,
    )
    # A Resource each: a backend that holds something (docker's pool) is closed by
    # `shutdown_resources()`. `named("bubblewrap")` builds (once) and returns one.
    named: providers.Aggregate[Backend] = providers.Aggregate(
        _each_backend(
            deps,
            {
                catalog.PLACEHOLDERS: placeholders,
                catalog.TMP_DIRS: tmp_dirs,
                catalog.CGROUPS: cgroups,
                catalog.ENGINE_STATE: engine_state,
                catalog.GIT_FACTS: git_facts,
            },
        )
    )
    # Strongest first; `none` is never a candidate.
    auto: providers.Provider[Backend] = providers.Singleton(
        AutoBackend, candidates=providers.List(*_auto_candidates(named))
    )
    selected: providers.Provider[Backend] = providers.Singleton(
        _select, config.backend, named.provider, auto.provider
    )


class Services(containers.DeclarativeContainer):
    """The policy pieces (each overridable) and the sandbox facade."""

    config = providers.Configuration(strict=True)
    core = providers.DependenciesContainer()
    backends = providers.DependenciesContainer()

    limits: providers.Provider[Limits] = providers.Callable(
        lambda policy: policy.limits, core.base_policy
    )
    network: providers.Provider[NetworkPolicy] = providers.Callable(
        lambda policy: policy.network, core.base_policy
    )
    policy: providers.Provider[Policy] = providers.Callable(
        _compose_policy, core.base_policy, limits, network
    )
    sandbox: providers.Provider[Sandbox] = providers.Singleton(
        Sandbox,
        backend=backends.selected,
        policy=policy,
        workspace=config.workspace,
        backend_chosen_by=config.backend_chosen_by,
    )


CONFIG_DEFAULTS: Mapping[str, Any] = {
    "backend": catalog.AUTO,
    "image": None,
    "runtime": None,
    "pool_size": None,
    "ray": None,  # `[ray]` (None: nothing set)
    "policy": Policy(),
    "workspace": None,  # runs' default workspace (None: the current directory)
    "files": (),  # the configuration files read, lowest layer first
    "warnings": (),  # project settings that were ignored, and why
    "backend_chosen_by": None,  # the project file that chose `backend`, if one did
}


def configuration(resolved: ResolvedConfig, workspace: str | None) -> dict[str, Any]:
    """The container's configuration for a resolved set of layers."""
    return {
        "backend": resolved.backend,
        "image": resolved.image,
        "runtime": resolved.runtime,
        "pool_size": resolved.pool_size,
        "ray": resolved.ray,
        "policy": resolved.policy,
        "workspace": workspace,
        "files": resolved.files,
        "warnings": resolved.warnings,
        "backend_chosen_by": resolved.backend_chosen_by,
    }


class Application(containers.DeclarativeContainer):
    """The root. Build it with `from_config`; `Application()` alone is the packaged
    defaults (the `auto` backend, `Policy()`), with `app.config` to set by hand."""

    config = providers.Configuration(strict=True, default=dict(CONFIG_DEFAULTS))
    # Declared as the containers they give (at run time a `providers.Container`, whose
    # attributes are the providers of the class named), so that `app.services.sandbox()`
    # is typed `Sandbox` under mypy --strict.
    core: Core = providers.Container(Core, config=config)  # type: ignore[assignment]
    backends: Backends = providers.Container(  # type: ignore[assignment]
        Backends, core=core, config=config
    )
    services: Services = providers.Container(  # type: ignore[assignment]
        Services, core=core, backends=backends, config=config
    )

    @classmethod
    def from_config(
        cls,
        *,
        workspace: str | None = None,
        files: Sequence[str] = (),
        user_file: str | UserFile | None = DISCOVER,
        settings: Settings | None = None,
        changes: PolicyChanges | None = None,
    ) -> Result[Application, ConfigInvalid]:
        """The application for runs in `workspace` (default: the current directory, now), from
        every configuration layer, as the CLI builds it.

        `files`: more configuration files (`--config`), over the user's and the project's.
        `user_file`: a path, None for none, or `DISCOVER` (`~/.config/mechasandbox/...`).
        `settings`: one more layer, in the files' vocabulary (see `config.structure_settings`).
        `changes`: explicit changes last, in the command line's vocabulary (they may widen).
        The project's files may only narrow; what they tried and could not do is in
        `app.config.warnings()`.
        """
        import os

        root = os.getcwd() if workspace is None else workspace  # "" is refused, not "here"
        resolved = load_policy(
            workspace=root, user_file=user_file, extra_files=tuple(files), overrides=settings
        )
        if changes is not None:
            resolved = resolved.bind(changes.apply)
        return resolved.map(lambda config: cls.from_resolved(config, workspace=root))

    @classmethod
    def from_resolved(cls, resolved: ResolvedConfig, *, workspace: str | None) -> Application:
        """The application for a configuration already resolved (`config.load_policy`)."""
        app = cls()
        app.config.from_dict(configuration(resolved, workspace))
        return app
