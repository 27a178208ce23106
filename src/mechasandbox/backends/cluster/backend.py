"""The `ray` backend: each run on a node of a Ray cluster, under that node's own backend.

The caller's side of a run (the node's is `node.serve`):

1. checks what a local run checks (the workspace, the network patterns) and refuses what
   cannot mean the same on another machine: extra writable paths (the writes would stay
   on the node), named unix sockets (they would be the node's), a terminal;
2. picks the variant (`[ray] backend`; for `auto`, the first of `auto`'s order that some
   node enforces the whole policy under) and asks Ray for its resources, so that the run
   is placed only where its policy is enforced (`resources`); strict runs that no node can
   enforce are refused here with what the closest node lacks;
3. sends the workspace as a tar archive (capped: `[ray] max_transfer`), its denied reads
   left out, and collects the output as it comes, then the node's result unchanged with
   `node` set, and writes the run's changes back (`transfer`: never a protected path,
   never through a link, no link out, no device, no set-user-ID bit);
4. keeps a deadline of its own: the node enforces the timeout, and once the run has
   started there, the caller cancels the task (`ray.cancel(force=True)`) when
   timeout + `[ray] grace` has passed without an answer: a `Timeout` with what arrived. A
   node that dies is a `NodeLost` with what arrived, never run again unless the caller
   opted in (`[ray] retries`): the command may have had side effects.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan, check_workspace
from mechasandbox.backends.catalog import AUTO, AUTO_ORDER, BY_NAME
from mechasandbox.backends.cluster import transfer
from mechasandbox.backends.cluster.connection import ClusterConnection
from mechasandbox.backends.cluster.resources import (
    NodeView,
    asked,
    missing_on_best,
    split_variant,
    variant,
)
from mechasandbox.backends.cluster.submission import Submission
from mechasandbox.backends.cluster.wire import NodeFinished, NodeRun
from mechasandbox.backends.execute import disarm_after, run_started
from mechasandbox.backends.git_facts import GitFacts
from mechasandbox.backends.git_indirections import with_git_indirections
from mechasandbox.backends.session_base import BackendSession, SessionSettings
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    ConfigInvalid,
    PolicyUnsupported,
    SandboxError,
    Timeout,
    partial_result,
)
from mechasandbox.domain.limits import MIB
from mechasandbox.domain.policy import Enforcement, Policy
from mechasandbox.domain.request import RunRequest, StreamedInput, Terminal, terminal_refused
from mechasandbox.domain.result import RunResult
from mechasandbox.network.validation import validate_network
from mechasandbox.runner.interruption import Interruption

DEFAULT_MAX_TRANSFER = 256 * MIB
_CONTAINER_ENGINES = frozenset({"docker", "podman"})


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _relative_inside(paths: tuple[str, ...], root: str) -> tuple[str, ...]:
    """Those of `paths` (absolute, or from `~`) inside the workspace `root`, relative."""
    found = [os.path.expanduser(p) for p in paths]
    return tuple(os.path.relpath(p, root) for p in found if p.startswith("/") and _inside(p, root))


@attrs.frozen(kw_only=True)
class _Placement:
    variant: str
    resources: dict[str, float]


@attrs.frozen(kw_only=True)
class Prepared:
    """A run or a session checked and placed (`RayBackend.prepare`): the caller's real
    `workspace`, the variant and Ray resources asked, the policy with the workspace's git
    indirections protected (`guarded`), the relative paths never written back
    (`protected`) nor sent (`leave_out`), and the transfer cap."""

    workspace: str
    variant: str
    resources: dict[str, float]
    guarded: Policy
    protected: tuple[str, ...]
    leave_out: tuple[str, ...]
    cap: int


@attrs.frozen(kw_only=True)
class RayBackend:
    """`pinned_to`: a node id every run goes to (`pinned`; `preferred`: there while it
    lives, elsewhere else); None: Ray spreads the runs over the nodes that enforce their
    policy."""

    connection: ClusterConnection
    image: str | None = None
    runtime: str | None = None
    pinned_to: str | None = None
    preferred: bool = False
    git: GitFacts = attrs.field(factory=GitFacts)
    # The caller's SIGINT/SIGTERM (the CLI's): each stops the runs under way (their tasks
    # cancelled), which end as `Interrupted` with the output that arrived.
    interruption: Interruption | None = None

    @property
    def name(self) -> str:
        return "ray"

    def pinned(self, node_id: str, *, preferred: bool = False) -> RayBackend:
        """This backend with every run on the node `node_id` (and nowhere else; with
        `preferred`, elsewhere when that node is gone or cannot take it)."""
        return attrs.evolve(self, pinned_to=node_id, preferred=preferred)

    # --- what runs where -------------------------------------------------------------------
    @property
    def _configured(self) -> str:
        return self.connection.settings.backend or AUTO

    def _variant_of(self, backend: str) -> str:
        return variant(backend, self.runtime if backend in _CONTAINER_ENGINES else None)

    def _candidates(self) -> tuple[str, ...]:
        if self._configured != AUTO:
            return (self._variant_of(self._configured),)
        return tuple(self._variant_of(name) for name in AUTO_ORDER if BY_NAME[name].confines)

    def _nodes(self) -> tuple[NodeView, ...]:
        nodes = self.connection.nodes()
        if self.pinned_to is not None and not self.preferred:
            nodes = tuple(node for node in nodes if node.node_id == self.pinned_to)
        return nodes

    def _placement(self, policy: Policy) -> Result[_Placement, SandboxError]:
        nodes = self._nodes()
        closest: tuple[str, tuple[Protection, ...]] | None = None
        for name in self._candidates():
            missing = missing_on_best(nodes, name, policy)
            if missing is None:
                continue
            if not missing or policy.enforcement is Enforcement.BEST_EFFORT:
                return Success(_Placement(variant=name, resources=asked(name, policy)))
            if closest is None:
                closest = (name, missing)
        if closest is not None:
            return Failure(PolicyUnsupported(backend=f"ray/{closest[0]}", missing=closest[1]))
        where = f"node {self.pinned_to}" if self.pinned_to else "no node of the cluster"
        wanted = " or ".join(self._candidates())
        reason = (
            f"{where} advertises {wanted} (start nodes with `mechasandbox-ray-node`, docs/ray.md)"
        )
        return Failure(BackendUnavailable(backend="ray", reason=reason))

    # --- the Backend protocol --------------------------------------------------------------
    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        joined = self.connection.connect()
        if isinstance(joined, Failure):
            return Failure(joined.failure())
        nodes = self._nodes()
        for name in self._candidates():
            serving = [node for node in nodes if name in node.variants()]
            if serving:
                enforced = max((node.enforced(name) for node in serving), key=len)
                note = f"{len(serving)} of {len(nodes)} Ray nodes run {name}"
                return Success(Capabilities(backend="ray", enforced=enforced, notes=(note,)))
        wanted = " or ".join(self._candidates())
        reason = f"no live node of the cluster advertises {wanted}"
        return Failure(BackendUnavailable(backend="ray", reason=reason))

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        """What would be asked of the cluster (pure: the cluster is not asked)."""
        names = self._candidates()
        chosen = " or ".join(names) + ("" if len(names) == 1 else " (the first enforced)")
        wanted = sorted(asked(names[0], policy).items())
        sections = (
            ("cluster", self.connection.settings.address or "(the connection of this process)"),
            ("node backend", chosen),
            ("resources", "\n".join(f"{key} = {value:g}" for key, value in wanted)),
            ("argv", " ".join(request.argv)),
        )
        return Success(LaunchPlan(backend=self.name, sections=sections))

    def _refused(self, request: RunRequest, policy: Policy, workspace: str) -> ConfigInvalid | None:
        if isinstance(request.stdin, Terminal):
            return ConfigInvalid(problem=terminal_refused("ray"), field="stdin")
        outside = [p for p in policy.filesystem.writable if not _inside(p, workspace)]
        if outside:
            problem = (
                f"the ray backend carries back the workspace only: {', '.join(outside)} would "
                "be written on the node (make it part of the workspace, or run locally)"
            )
            return ConfigInvalid(problem=problem, field="filesystem.writable")
        if policy.network.allow_unix_sockets:
            problem = "the ray backend cannot hand a host's unix socket to a command on a node"
            return ConfigInvalid(problem=problem, field="network.allow_unix_sockets")
        return None

    def prepare(self, request: RunRequest, policy: Policy) -> Result[Prepared, SandboxError]:
        """What a run or a session checks before anything is sent (see the module's
        docstring, steps 1 and 2), and what it must keep out of the caller's workspace."""
        checked = validate_network(policy.network)
        if isinstance(checked, Failure):
            return Failure(checked.failure())
        found = check_workspace(request)
        if isinstance(found, Failure):
            return Failure(found.failure())
        workspace = found.unwrap()
        if (refusal := self._refused(request, policy, workspace)) is not None:
            return Failure(refusal)
        # In this thread: Ray sets its signal handlers only from the main thread.
        joined = self.connection.connect()
        if isinstance(joined, Failure):
            return Failure(joined.failure())
        placed = self._placement(policy)
        if isinstance(placed, Failure):
            return Failure(placed.failure())
        guarded, _, _ = with_git_indirections(policy, workspace, facts=self.git)
        fs = guarded.filesystem
        protected = tuple(p for p in fs.protected if not p.startswith(("/", "..")))
        protected += _relative_inside(fs.deny_write, workspace)
        return Success(
            Prepared(
                workspace=workspace,
                variant=placed.unwrap().variant,
                resources=placed.unwrap().resources,
                guarded=guarded,
                protected=protected,
                leave_out=_relative_inside(fs.deny_read, workspace),
                cap=self.connection.settings.max_transfer or DEFAULT_MAX_TRANSFER,
            )
        )

    async def open_session(
        self, workspace: str, policy: Policy, settings: SessionSettings
    ) -> Result[BackendSession, SandboxError]:
        """A session on one node: see `session.RaySession`."""
        from mechasandbox.backends.cluster.session import open_ray_session

        prepared = self.prepare(RunRequest(argv=("true",), workspace=workspace), policy)
        if isinstance(prepared, Failure):
            return Failure(prepared.failure())
        return await open_ray_session(self, prepared.unwrap(), policy, settings)

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        ready = self.prepare(request, policy)
        if isinstance(ready, Failure):
            return Failure(ready.failure())
        prepared = ready.unwrap()
        workspace, cap, protected = prepared.workspace, prepared.cap, prepared.protected
        settings = self.connection.settings
        stdin = await anyio.to_thread.run_sync(
            read_input, request.stdin, cap, policy.limits.timeout_s
        )
        if isinstance(stdin, Failure):
            return Failure(stdin.failure())
        started = run_started()
        packed = await anyio.to_thread.run_sync(pack, prepared)
        if isinstance(packed, Failure):
            return Failure(packed.failure())
        archive, left_out = packed.unwrap()
        node_run = NodeRun(
            argv=tuple(request.argv),
            stdin=stdin.unwrap(),
            policy=policy,
            variant=prepared.variant,
            image=self.image,
            workspace=archive,
            caller_workspace=workspace,
            max_transfer=cap,
        )
        retries = settings.retries or 0
        options: dict[str, Any] = {
            "resources": prepared.resources,
            "num_cpus": 1,
            "max_retries": retries,
            "retry_exceptions": False,
            "scheduling_strategy": self.strategy(),
        }
        task = self.connection.task()
        submitted = Submission(
            launch=lambda: task.options(**options).remote(node_run),
            stop=_cancel_task,
            backend=split_variant(node_run.variant)[0],
            timeout_s=policy.limits.timeout_s,
            grace_s=settings.grace,
            sink=request.on_output,
        )
        stopping = (
            contextlib.nullcontext()
            if self.interruption is None
            else self.interruption.calling(submitted.interrupt)
        )
        try:
            with stopping:
                # A limiter of its own: the default one (40 threads) would cap a fleet's
                # runs under way, which wait on their nodes rather than work here.
                ended = await anyio.to_thread.run_sync(
                    submitted.wait, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
                )
        except anyio.get_cancelled_exc_class():
            submitted.cancel()
            raise
        if isinstance(ended, Failure):
            return ended
        finished = ended.unwrap()
        applied = await anyio.to_thread.run_sync(
            write_back, finished.changes, finished.refused, workspace, protected, cap
        )
        result = applied.map(
            lambda warnings: marked(finished, (*finished.warnings, *left_out, *warnings))
        )
        outcome: Result[RunResult, SandboxError] = result.bind(as_result)
        return disarm_after(outcome, workspace, prepared.guarded, started, self.git)

    def strategy(self) -> Any:
        if self.pinned_to is None:
            return "SPREAD"
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=self.pinned_to, soft=self.preferred)


def read_input(
    stdin: bytes | StreamedInput | Terminal | None, cap: int, timeout_s: float | None
) -> Result[bytes | None, SandboxError]:
    """The command's input as bytes: a stream is read to its end before the run is sent
    (a node cannot read the caller's descriptor), within the cap and the run's timeout."""
    if not isinstance(stdin, StreamedInput):
        return Success(stdin if isinstance(stdin, bytes) else None)
    import select

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    chunks: list[bytes] = []
    size = 0
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([stdin.fd], [], [], wait)
        if not ready:
            empty = RunResult(backend="ray", exit_code=None, signal=None)
            return Failure(Timeout(timeout_s=timeout_s or 0.0, partial=empty))
        chunk = os.read(stdin.fd, 1 << 16)
        if not chunk:
            return Success(b"".join(chunks))
        size += len(chunk)
        if size > cap:
            problem = f"the ray backend sends the input whole: more than {cap} bytes"
            return Failure(ConfigInvalid(problem=problem, field="stdin"))
        chunks.append(chunk)


def marked(finished: NodeFinished, warnings: tuple[str, ...]) -> NodeFinished:
    outcome = finished.outcome
    shown = outcome if isinstance(outcome, RunResult) else partial_result(outcome)
    if shown is None:
        return finished
    marked = attrs.evolve(shown, node=finished.node_id, warnings=(*shown.warnings, *warnings))
    if isinstance(outcome, RunResult):
        return attrs.evolve(finished, outcome=marked)
    stopped: Any = outcome  # one of the errors that carry a partial result
    return attrs.evolve(finished, outcome=attrs.evolve(stopped, partial=marked))


def as_result(finished: NodeFinished) -> Result[RunResult, SandboxError]:
    if isinstance(finished.outcome, RunResult):
        return Success(finished.outcome)
    return Failure(finished.outcome)


def pack(prepared: Prepared) -> Result[tuple[bytes, tuple[str, ...]], SandboxError]:
    """The workspace's archive to send, and the warnings of what was left out."""
    packed = transfer.pack_workspace(prepared.workspace, prepared.cap, prepared.leave_out)
    if isinstance(packed, Failure):
        reason = f"the workspace cannot be sent: {packed.failure().reason}"
        return Failure(BackendFailed(backend="ray", reason=reason))
    return Success(packed.unwrap())


def write_back(
    changes: transfer.Changes | None,
    refused: str | None,
    workspace: str,
    protected: tuple[str, ...],
    cap: int,
) -> Result[tuple[str, ...], SandboxError]:
    """A node's changes in the caller's workspace; a refusal (`refused`: the node could not
    pack them) is a failure (they did not all arrive), with the reason."""
    if changes is None:
        if refused is None:  # refused before it ran: nothing changed
            return Success(())
        reason = f"the run's workspace changes were not carried back: {refused}"
        return Failure(BackendFailed(backend="ray", reason=reason))
    removed = transfer.remove(workspace, changes.removed, protected)
    written = removed.bind(
        lambda kept: transfer.extract(changes.archive, workspace, cap, protected).map(
            lambda more: (*changes.warnings, *kept, *more)
        )
    )
    if isinstance(written, Failure):
        reason = f"the run's workspace changes were refused: {written.failure().reason}"
        return Failure(BackendFailed(backend="ray", reason=reason))
    return Success(written.unwrap())


def _cancel_task(generator: Any) -> None:
    import ray

    ray.cancel(generator, force=True)
