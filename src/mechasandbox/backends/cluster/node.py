"""The node's side of a run: what a Ray worker process executes for the `ray` backend.

`serve` is a Ray generator task. It unpacks the workspace into a fresh directory of the
node, runs the command there through mechasandbox's own composition root and facade
(`Application`, `Sandbox.run_async`: the same code path, policy checks and teardown as a
local run, under the node's backend named by the run), yields the output as it comes,
then the result unchanged and what the run changed in its workspace.

Fail closed: a run is refused when its variant is not one this node advertised (Ray
placed it on the resources it asked for, so this only happens to a node started without
them), and the node's backend refuses a policy it cannot enforce, as it would locally.

The node's applications (one per variant, holding the spawn helper and its warm
children, which is what makes a warm run fast) live in `NODE`, this module's one
process-wide object: a Ray worker process runs task after task and has no other place to
keep them (Ray offers no per-worker state for tasks). They end with the worker process:
the spawn helper kills its runs when its control socket closes, and the next composition
root on the node sweeps what a killed one left (`leftovers`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import attrs
from returns.result import Success

from mechasandbox.backends.cluster import transfer
from mechasandbox.backends.cluster.resources import split_variant, variant_resource
from mechasandbox.backends.cluster.wire import NodeFinished, NodeOutput, NodeRun, NodeStarted
from mechasandbox.containers import Application
from mechasandbox.domain.errors import BackendFailed, BackendUnavailable, SandboxError
from mechasandbox.domain.events import OutputEvent
from mechasandbox.domain.policy import NetworkMode, NetworkPolicy, Policy
from mechasandbox.domain.result import RunResult
from mechasandbox.leftovers import temp_prefix

# How long the cluster's addresses are taken as known (one GCS call when older).
_ADDRESSES_TTL_S = 5.0
# Output gathered for this long at most before it is sent on (one message per batch).
BATCH_S = 0.02


@attrs.define
class _NodeState:
    """The applications of this worker process, by variant and image, each built with the
    cluster's addresses refused by its allowlist proxy (rebuilt when those change)."""

    applications: dict[tuple[str, str | None], tuple[frozenset[str], Application]] = attrs.field(
        factory=dict
    )
    addresses: frozenset[str] = frozenset()
    addresses_read: float = float("-inf")
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def cluster_addresses(self) -> frozenset[str]:
        import ray

        now = time.monotonic()
        if now - self.addresses_read > _ADDRESSES_TTL_S:
            found = {str(node.get("NodeManagerAddress", "")) for node in ray.nodes()}
            self.addresses = frozenset(a for a in found if _is_address(a))
            self.addresses_read = now
        return self.addresses

    def application(self, variant: str, image: str | None) -> Application:
        addresses = self.cluster_addresses()
        with self.lock:
            known = self.applications.get((variant, image))
            if known is not None and known[0] == addresses:
                return known[1]
            if known is not None:
                known[1].shutdown_resources()
            built = _build(variant, image, addresses)
            self.applications[(variant, image)] = (addresses, built)
            return built


NODE = _NodeState()


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _build(variant: str, image: str | None, addresses: frozenset[str]) -> Application:
    from dependency_injector import providers

    from mechasandbox.network.addresses import AddressRules
    from mechasandbox.network.session import EgressProxy

    backend, runtime = split_variant(variant)
    app = Application()
    app.config.from_dict(
        {
            **app.config(),
            "backend": backend,
            "runtime": runtime,
            "image": image,
        }
    )
    # A name that resolves to a node of the cluster is refused by the allowlist proxy, as
    # the host's own addresses are: Ray's ports run code for whoever reaches them.
    networks = tuple(ipaddress.ip_network(a) for a in sorted(addresses))
    app.core.egress.override(
        providers.Singleton(
            EgressProxy,
            resolver=app.core.resolver,
            address_rules=AddressRules(denied_networks=networks),
        )
    )
    return app


def _node_path(path: str, caller: str, here: str) -> str:
    if path == caller or path.startswith(caller.rstrip("/") + "/"):
        return here + path[len(caller.rstrip("/")) :]
    return path


def node_policy(policy: Policy, caller: str, here: str, cluster: frozenset[str]) -> Policy:
    """The caller's policy on this node: its paths in the caller's workspace are the node's
    copy, and no address of the cluster is reachable through the allowlist, even one the
    allowlist names (a deny pattern wins over an allowed IP literal)."""
    fs = policy.filesystem

    def moved(paths: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_node_path(p, caller, here) for p in paths)

    filesystem = attrs.evolve(
        fs,
        readable=moved(fs.readable),
        writable=moved(fs.writable),
        deny_read=moved(fs.deny_read),
        deny_write=moved(fs.deny_write),
    )
    network: NetworkPolicy = policy.network
    if network.mode is NetworkMode.ALLOWLIST:
        literals = tuple(f"[{a}]" if ":" in a else a for a in sorted(cluster))
        network = attrs.evolve(network, deny=(*network.deny, *literals))
    return attrs.evolve(policy, filesystem=filesystem, network=network)


def serve(run: NodeRun) -> Iterator[NodeStarted | NodeOutput | NodeFinished]:
    """The Ray task (a generator: see the module's docstring)."""
    import ray

    context = ray.get_runtime_context()
    node_id = context.get_node_id()
    address = ray.util.get_node_ip_address()

    def finished(outcome: RunResult | SandboxError, **more: object) -> NodeFinished:
        return NodeFinished(node_id=node_id, address=address, outcome=outcome, **more)  # type: ignore[arg-type]

    if variant_resource(run.variant) not in context.get_assigned_resources():
        reason = f"this node ({address}) does not advertise {run.variant!r}"
        yield finished(BackendUnavailable(backend=run.variant, reason=reason))
        return
    yield NodeStarted(node_id=node_id, address=address)
    workspace = tempfile.mkdtemp(prefix=temp_prefix("ray"))
    try:
        unpacked = transfer.extract(run.workspace, workspace, run.max_transfer)
        if not isinstance(unpacked, Success):
            reason = f"the workspace was refused on the node: {unpacked.failure().reason}"
            yield finished(BackendFailed(backend="ray", reason=reason))
            return
        before = transfer.snapshot(workspace)
        app = NODE.application(run.variant, run.image)
        policy = node_policy(run.policy, run.caller_workspace, workspace, NODE.addresses)
        outcome: list[RunResult | SandboxError] = []
        yield from _streamed(app, run, workspace, policy, outcome)
        changes = transfer.pack_changes(workspace, before, run.max_transfer)
        unwritten = unpacked.unwrap()
        if isinstance(changes, Success):
            yield finished(outcome[0], changes=changes.unwrap(), warnings=unwritten)
        else:
            yield finished(outcome[0], refused=changes.failure().reason, warnings=unwritten)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _streamed(
    app: Application,
    run: NodeRun,
    workspace: str,
    policy: Policy,
    outcome: list[RunResult | SandboxError],
) -> Iterator[NodeOutput]:
    """Run the command in a thread of its own (its event loop), yielding its output in
    batches while it runs; its result lands in `outcome`."""
    import anyio

    chunks: queue.SimpleQueue[OutputEvent | None] = queue.SimpleQueue()
    sandbox = app.services.sandbox()

    def body() -> None:
        try:
            ran = anyio.run(
                lambda: sandbox.run_async(
                    list(run.argv),
                    workspace=workspace,
                    stdin=run.stdin,
                    policy=policy,
                    on_stdout=lambda data: chunks.put(OutputEvent("stdout", data)),
                    on_stderr=lambda data: chunks.put(OutputEvent("stderr", data)),
                )
            )
            outcome.append(ran.unwrap() if isinstance(ran, Success) else ran.failure())
        except BaseException as error:  # a bug: said, not lost with the thread
            outcome.append(BackendFailed(backend="ray", reason=f"on the node: {error!r}"))
        finally:
            chunks.put(None)

    thread = threading.Thread(target=body, name="mechasandbox-node-run", daemon=True)
    thread.start()
    ended = False
    while not ended:
        batch: list[OutputEvent] = []
        first = chunks.get()
        deadline = time.monotonic() + BATCH_S
        item = first
        while True:
            if item is None:
                ended = True
                break
            batch.append(item)
            with contextlib.suppress(queue.Empty):
                item = chunks.get(timeout=max(0.0, deadline - time.monotonic()))
                continue
            break
        if batch:
            yield NodeOutput(events=tuple(batch))
    thread.join()
