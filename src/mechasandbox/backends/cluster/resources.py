"""What a node advertises it can enforce, as custom Ray resources, and what a run asks for.

A node started with `python -m mechasandbox.backends.cluster.node` (see `node_command`)
probes its own backends, as `doctor` does there, and advertises for each confining
backend that is available (a *variant*: the backend's name, or `docker+runsc` for a
container engine under another OCI runtime)::

    mechasandbox:bubblewrap               the backend runs on this node
    mechasandbox:bubblewrap:memory        ... and enforces this protection here

each with the quantity `PLENTY`, so that asking for 1 of each only says "here" (how many
runs a node takes at once is Ray's CPUs: a run takes one). A run asks for the variant and
every protection its policy requires (best-effort runs the variant only), so Ray places it
only on a node that enforces the whole policy; the node's own backend checks again and
refuses what it cannot enforce (fail closed), as a local run would. `none` and `process`
confine nothing and are never advertised.

Pure: no Ray import. The cluster's view (`ray.nodes()`) is read in `connection`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from mechasandbox.domain.capabilities import Capabilities, Protection, required_protections
from mechasandbox.domain.policy import Enforcement, Policy

PREFIX = "mechasandbox"
PLENTY = 10_000.0


def variant(backend: str, runtime: str | None) -> str:
    """The name a node advertises a backend under: `docker+runsc` for another runtime."""
    return f"{backend}+{runtime}" if runtime else backend


def split_variant(name: str) -> tuple[str, str | None]:
    backend, _, runtime = name.partition("+")
    return backend, runtime or None


def variant_resource(name: str) -> str:
    return f"{PREFIX}:{name}"


def protection_resource(name: str, protection: Protection) -> str:
    return f"{PREFIX}:{name}:{protection.value}"


def advertised(capabilities: Iterable[tuple[str, Capabilities]]) -> dict[str, float]:
    """The resources of a node whose available variants enforce `capabilities`."""
    resources: dict[str, float] = {}
    for name, found in capabilities:
        resources[variant_resource(name)] = PLENTY
        for protection in found.enforced:
            resources[protection_resource(name, protection)] = PLENTY
    return resources


def asked(name: str, policy: Policy) -> dict[str, float]:
    """What a run of `policy` under the variant `name` asks Ray for."""
    wanted = {variant_resource(name): 1.0}
    if policy.enforcement is Enforcement.STRICT:
        wanted.update((protection_resource(name, p), 1.0) for p in required_protections(policy))
    return wanted


@attrs.frozen(kw_only=True)
class NodeView:
    """One live node as the cluster describes it."""

    node_id: str
    address: str
    resources: Mapping[str, float]

    def variants(self) -> tuple[str, ...]:
        marker = f"{PREFIX}:"
        return tuple(
            key[len(marker) :]
            for key in self.resources
            if key.startswith(marker) and key.count(":") == 1
        )

    def enforced(self, name: str) -> frozenset[Protection]:
        return frozenset(
            protection
            for protection in Protection
            if protection_resource(name, protection) in self.resources
        )


def missing_on_best(
    nodes: Iterable[NodeView], name: str, policy: Policy
) -> tuple[Protection, ...] | None:
    """The protections `policy` needs that the node closest to enforcing it under `name`
    lacks (empty: one node has them all); None when no node runs `name` at all."""
    needed = required_protections(policy)
    best: tuple[Protection, ...] | None = None
    for node in nodes:
        if name not in node.variants():
            continue
        lacking = tuple(p for p in Protection if p in needed - node.enforced(name))
        if best is None or len(lacking) < len(best):
            best = lacking
    return best
