"""The composition root: dependency-injector containers built from configuration.

    app = Application()
    app.config.from_dict({"backend": "auto"})
    sandbox = app.services.sandbox()
    ...
    app.shutdown_resources()        # kills anything still running, stops the spawn helper

Tests swap pieces with provider overrides, e.g. ``app.core.runner.override(fake_runner)``
or ``app.backends.selected.override(fake_backend)``. Providers stay synchronous because
dependency-injector's async providers are asyncio-only and this library runs on anyio.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
from dependency_injector import containers, providers

from mechasandbox.backends import factories
from mechasandbox.backends.base import HostContext
from mechasandbox.backends.probe_cache import ProbeCache
from mechasandbox.backends.registry import AutoBackend
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import NetworkPolicy, Policy
from mechasandbox.runner.client import SpawnHelperClient
from mechasandbox.runner.protocol import ProcessRunner
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.sandbox import Sandbox


def _runner(helper: SpawnHelperClient | None) -> Iterator[ProcessRunner]:
    runner = HelperProcessRunner(helper=helper)
    try:
        yield runner
    finally:
        runner.close()


def _by_name(
    backends: dict[str, providers.Provider[Any]],
) -> dict[str, providers.Provider[Any]]:
    """Selector keys are backend names, some of which (`apple-container`) are not identifiers."""
    return backends


def _compose_policy(base: Policy, limits: Limits, network: NetworkPolicy) -> Policy:
    return attrs.evolve(base, limits=limits, network=network)


class Core(containers.DeclarativeContainer):
    """Host facts, the one process runner, the configured base policy."""

    config = providers.Configuration(strict=True)
    host = providers.Singleton(HostContext.current)
    # The spawn helper's client the runner uses (None: its own). The CLI hands in the one
    # it started first thing, so that the helper's start overlaps its own.
    helper: providers.Provider[SpawnHelperClient | None] = providers.Object(None)
    runner = providers.Resource(_runner, helper=helper)
    base_policy = providers.Object(Policy())
    # Names the allowlist proxy resolves; tests override it with a fake mapping names to
    # loopback servers they started.
    resolver = providers.Singleton(factories.system_resolver)
    egress = providers.Singleton(factories.egress_proxy, resolver=resolver)
    # Where backends remember a successful probe across processes (the CLI's per-user
    # cache, `ProbeCache`); None: each process probes.
    probe_cache: providers.Provider[ProbeCache | None] = providers.Object(None)


class Backends(containers.DeclarativeContainer):
    """Every backend, and `selected`: the one the configuration's `backend` names."""

    config = providers.Configuration(strict=True)
    core = providers.DependenciesContainer()

    none = providers.Singleton(factories.none, runner=core.runner, host=core.host)
    process = providers.Singleton(factories.process, runner=core.runner, host=core.host)
    bubblewrap = providers.Singleton(
        factories.bubblewrap,
        runner=core.runner,
        host=core.host,
        egress=core.egress,
        probe_cache=core.probe_cache,
    )
    landlock = providers.Singleton(
        factories.landlock, runner=core.runner, host=core.host, egress=core.egress
    )
    docker = providers.Singleton(
        factories.container_engine,
        "docker",
        runner=core.runner,
        host=core.host,
        image=config.image,
        runtime=config.runtime,
        egress=core.egress,
    )
    docker_pooled = providers.Resource(factories.pooled, docker, size=config.pool_size)
    podman = providers.Singleton(
        factories.container_engine,
        "podman",
        runner=core.runner,
        host=core.host,
        image=config.image,
        runtime=config.runtime,
        egress=core.egress,
    )
    seatbelt = providers.Singleton(
        factories.seatbelt, runner=core.runner, host=core.host, egress=core.egress
    )
    apple_container = providers.Singleton(
        factories.apple_container, runner=core.runner, host=core.host, image=config.image
    )

    # Strongest first; `none` is never a candidate.
    auto = providers.Singleton(
        AutoBackend,
        candidates=providers.List(
            bubblewrap, landlock, apple_container, seatbelt, docker_pooled, podman, process
        ),
    )

    selected = providers.Selector(
        config.backend,
        **_by_name(
            {
                "auto": auto,
                "none": none,
                "process": process,
                "bubblewrap": bubblewrap,
                "landlock": landlock,
                "docker": docker_pooled,
                "podman": podman,
                "seatbelt": seatbelt,
                "apple-container": apple_container,
            }
        ),
    )


class Services(containers.DeclarativeContainer):
    """The policy pieces (each overridable) and the sandbox facade."""

    core = providers.DependenciesContainer()
    backends = providers.DependenciesContainer()

    limits = providers.Callable(lambda policy: policy.limits, core.base_policy)
    network = providers.Callable(lambda policy: policy.network, core.base_policy)
    policy = providers.Callable(_compose_policy, core.base_policy, limits, network)
    sandbox = providers.Singleton(Sandbox, backend=backends.selected, policy=policy)


CONFIG_DEFAULTS = {"backend": "auto", "image": None, "runtime": None, "pool_size": None}


class Application(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True, default=CONFIG_DEFAULTS)
    core = providers.Container(Core, config=config)
    backends = providers.Container(Backends, core=core, config=config)
    services = providers.Container(Services, core=core, backends=backends)
