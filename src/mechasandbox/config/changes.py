"""Explicit changes on top of every configuration layer: the command line's options, or the
same from a library caller (`Application.from_config(changes=...)`).

Unlike a layer, which replaces what it sets, changes extend the policy's lists (`--allow-read
P` adds P to what the files allow) and replace single values (`--timeout`). They are the
caller's own word, so they may widen what the files say.
"""

from __future__ import annotations

from typing import Any

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.config.loading import ResolvedConfig
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Enforcement, HostProcesses, NetworkMode, Policy

Texts = tuple[str, ...]


@attrs.frozen(kw_only=True)
class PolicyChanges:
    """Values already parsed (seconds, bytes); None and empty mean "no change"."""

    allow_read: Texts = ()
    allow_write: Texts = ()
    deny_read: Texts = ()
    deny_write: Texts = ()
    network: NetworkMode | None = None
    allow_domains: Texts = ()
    deny_domains: Texts = ()
    allow_unix_sockets: Texts = ()
    pass_env: Texts = ()
    set_env: tuple[tuple[str, str], ...] = ()
    # Limits attribute -> value, e.g. {"timeout_s": 30.0}: the names of `Limits`.
    limits: tuple[tuple[str, float | int], ...] = ()
    best_effort: bool = False
    host_processes: HostProcesses | None = None
    backend: str | None = None
    image: str | None = None
    runtime: str | None = None
    pool_size: int | None = None

    def apply(self, resolved: ResolvedConfig) -> Result[ResolvedConfig, ConfigInvalid]:
        return self.policy(resolved.policy).map(
            lambda policy: attrs.evolve(
                resolved,
                policy=policy,
                backend=self.backend or resolved.backend,
                image=self.image or resolved.image,
                runtime=self.runtime or resolved.runtime,
                pool_size=resolved.pool_size if self.pool_size is None else self.pool_size,
            )
        )

    def policy(self, base: Policy) -> Result[Policy, ConfigInvalid]:
        """`base` with these changes."""
        try:
            return Success(self._applied(base))
        except (TypeError, ValueError) as error:  # a value the domain refuses
            return Failure(ConfigInvalid(problem=str(error), source="command line"))

    def _applied(self, base: Policy) -> Policy:
        limit_changes: dict[str, Any] = dict(self.limits)
        limits = attrs.evolve(base.limits, **limit_changes)
        fs = base.filesystem
        net = base.network
        env = base.environment
        return Policy(
            filesystem=attrs.evolve(
                fs,
                readable=fs.readable + self.allow_read,
                writable=fs.writable + self.allow_write,
                deny_read=fs.deny_read + self.deny_read,
                deny_write=fs.deny_write + self.deny_write,
            ),
            network=attrs.evolve(
                net,
                mode=self.network or net.mode,
                allow=net.allow + self.allow_domains,
                deny=net.deny + self.deny_domains,
                allow_unix_sockets=net.allow_unix_sockets + self.allow_unix_sockets,
            ),
            limits=limits,
            environment=attrs.evolve(
                env,
                pass_through=env.pass_through + self.pass_env,
                set=env.set + self.set_env,
            ),
            enforcement=Enforcement.BEST_EFFORT if self.best_effort else base.enforcement,
            host_processes=self.host_processes or base.host_processes,
        )
