"""Checking a network policy's patterns before anything starts."""

from __future__ import annotations

from returns.result import Result, Success

from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import NetworkPolicy


def validate_network(network: NetworkPolicy) -> Result[None, ConfigInvalid]:
    """The patterns parse and none is too wide (checked whatever the mode), so that a bad
    pattern is a `ConfigInvalid` naming it, never a proxy that fails to start mid-run."""
    if not network.allow and not network.deny:
        return Success(None)
    from mechasandbox.network.patterns import compile_allowlist  # only when there are any

    return compile_allowlist(network.allow, network.deny).map(lambda _: None)
