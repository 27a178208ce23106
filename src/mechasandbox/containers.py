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

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.none import NoneBackend
from mechasandbox.backends.process import ProcessBackend
from mechasandbox.backends.registry import AutoBackend, MissingBackend
from mechasandbox.domain.limits import Limits
from mechasandbox.domain.policy import NetworkPolicy, Policy
from mechasandbox.network.proxy import SystemResolver
from mechasandbox.network.session import EgressProxy
from mechasandbox.runner.runner import HelperProcessRunner, ProcessRunner
from mechasandbox.sandbox import Sandbox


def _runner() -> Iterator[ProcessRunner]:
    runner = HelperProcessRunner()
    try:
        yield runner
    finally:
        runner.close()


def _bubblewrap(runner: ProcessRunner, host: HostContext, egress: EgressProxy) -> Any:
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

    return BubblewrapBackend(runner=runner, host=host, egress=egress)


def _landlock(runner: ProcessRunner, host: HostContext, egress: EgressProxy) -> Any:
    """Imported on first use: Linux-only modules stay out of other platforms' imports."""
    from mechasandbox.backends.linux.landlock import LandlockBackend

    return LandlockBackend(runner=runner, host=host, egress=egress)


def _seatbelt(runner: ProcessRunner, host: HostContext, egress: EgressProxy) -> Any:
    from mechasandbox.backends.macos.seatbelt import SeatbeltBackend

    return SeatbeltBackend(runner=runner, host=host, egress=egress)


def _apple_container(runner: ProcessRunner, host: HostContext, image: str | None) -> Any:
    """Unavailable (with the reason) until an image is configured: no implicit default."""
    from mechasandbox.backends.macos.apple_container import AppleContainerBackend

    return AppleContainerBackend(runner=runner, host=host, image=image or None)


def _container_engine(
    engine: str,
    *,
    runner: ProcessRunner,
    host: HostContext,
    image: str | None,
    runtime: str | None,
    egress: EgressProxy,
) -> Any:
    """Docker or Podman with the configured image and OCI runtime (`runsc` for gVisor)."""
    from mechasandbox.backends.oci import DockerBackend, PodmanBackend, Runtime

    backend_class = DockerBackend if engine == "docker" else PodmanBackend
    options: dict[str, Any] = {"runner": runner, "host": host, "egress": egress}
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
    return backend_class(**options)


def _pooled(backend: Any, size: int | None) -> Iterator[Any]:
    """Docker behind a warm pool of pre-started containers when `pool_size` is set."""
    from mechasandbox.backends.oci import OciBackend, PooledBackend, PoolSettings

    if not size or not isinstance(backend, OciBackend) or backend.kind != "docker":
        yield backend
        return
    pooled = PooledBackend(backend=backend, settings=PoolSettings(size=size))
    try:
        yield pooled
    finally:
        pooled.close()


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
    runner = providers.Resource(_runner)
    base_policy = providers.Object(Policy())
    # Names the allowlist proxy resolves; tests override it with a fake mapping names to
    # loopback servers they started.
    resolver = providers.Singleton(SystemResolver)
    egress = providers.Singleton(EgressProxy, resolver=resolver)


class Backends(containers.DeclarativeContainer):
    """Every backend, and `selected`: the one the configuration's `backend` names."""

    config = providers.Configuration(strict=True)
    core = providers.DependenciesContainer()

    none = providers.Singleton(NoneBackend, runner=core.runner, host=core.host)
    process = providers.Singleton(ProcessBackend, runner=core.runner, host=core.host)
    bubblewrap = providers.Singleton(
        _bubblewrap, runner=core.runner, host=core.host, egress=core.egress
    )
    landlock = providers.Singleton(
        _landlock, runner=core.runner, host=core.host, egress=core.egress
    )
    docker = providers.Singleton(
        _container_engine,
        "docker",
        runner=core.runner,
        host=core.host,
        image=config.image,
        runtime=config.runtime,
        egress=core.egress,
    )
    docker_pooled = providers.Resource(_pooled, docker, size=config.pool_size)
    podman = providers.Singleton(
        _container_engine,
        "podman",
        runner=core.runner,
        host=core.host,
        image=config.image,
        runtime=config.runtime,
        egress=core.egress,
    )
    seatbelt = providers.Singleton(
        _seatbelt, runner=core.runner, host=core.host, egress=core.egress
    )
    apple_container = providers.Singleton(
        _apple_container, runner=core.runner, host=core.host, image=config.image
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
