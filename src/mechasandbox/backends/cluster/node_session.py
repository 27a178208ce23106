"""The node's side of a session: a Ray actor that lives on one node for the session's life.

`SessionActor` (an async actor: its methods run one event loop, the session's) unpacks the
workspace once into a fresh directory of its node (the same reader and cap as a one-shot
run), opens a local session there through the node's own composition root and facade
(`Application`, `Sandbox.session`: the node's backend's `open_session`, the same code a
local session uses), runs each command in it, yielding its output in batches as it comes
(as `node.serve` does), and packs what changed since the last export when asked (the same
`transfer.pack_changes` as a one-shot run's end). Fail closed as `node.serve`: an actor
placed without the resources of its variant refuses, and the node's backend refuses a
policy it cannot enforce.

`close` ends the local session and removes the directory. An actor killed without it (its
node or its caller gone) leaves the directory to the node's next sweep (`leftovers`: it is
named after this process) and its sandbox to the spawn helper, which kills its runs when
this process's end closes its control socket.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Literal

from returns.result import Failure, Success

from mechasandbox.backends.cluster import transfer
from mechasandbox.backends.cluster.node import BATCH_S, NODE, node_policy
from mechasandbox.backends.cluster.resources import variant_resource
from mechasandbox.backends.cluster.wire import (
    NodeFinished,
    NodeOutput,
    NodeStarted,
    SessionExport,
    SessionOpen,
    SessionOpened,
)
from mechasandbox.domain.errors import BackendFailed, BackendUnavailable, SandboxError
from mechasandbox.domain.events import OutputEvent
from mechasandbox.domain.limits import Limits
from mechasandbox.leftovers import temp_prefix

if TYPE_CHECKING:
    from mechasandbox.sandbox_session import Session


class SessionActor:
    """See the module's docstring. One session per actor."""

    def __init__(self) -> None:
        import ray

        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        self.address = ray.util.get_node_ip_address()
        self.directory: str | None = None
        self.session: Session | None = None
        self.max_transfer = 0
        self.exported: transfer.Snapshot = {}
        self.lock = asyncio.Lock()

    async def open(self, opening: SessionOpen) -> SessionOpened | SandboxError:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources()
        if variant_resource(opening.variant) not in assigned:
            reason = f"this node ({self.address}) does not advertise {opening.variant!r}"
            return BackendUnavailable(backend=opening.variant, reason=reason)
        self.directory = tempfile.mkdtemp(prefix=temp_prefix("ray"))
        opened = await self._opened(opening, self.directory)
        if not isinstance(opened, SessionOpened):
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        return opened

    async def _opened(self, opening: SessionOpen, directory: str) -> SessionOpened | SandboxError:
        self.max_transfer = opening.max_transfer
        unpacked = transfer.extract(opening.workspace, directory, opening.max_transfer)
        if not isinstance(unpacked, Success):
            reason = f"the workspace was refused on the node: {unpacked.failure().reason}"
            return BackendFailed(backend="ray", reason=reason)
        app = NODE.application(opening.variant, opening.image)
        policy = node_policy(opening.policy, opening.caller_workspace, directory, NODE.addresses)
        session = app.services.sandbox().session(
            workspace=directory, policy=policy, settings=opening.settings
        )
        opened = await session.open()
        if isinstance(opened, Failure):
            refused: SandboxError = opened.failure()
            return refused
        self.session = session
        # After the session opened: the covers of protected paths it placed in the copy
        # (there for the session's life) are not changes of its commands.
        self.exported = transfer.snapshot(directory)
        return SessionOpened(
            node_id=self.node_id,
            address=self.address,
            directory=directory,
            warnings=(*unpacked.unwrap(), *session.warnings),
        )

    async def run(
        self, argv: tuple[str, ...], stdin: bytes | None, limits: Limits | None
    ) -> AsyncIterator[NodeStarted | NodeOutput | NodeFinished]:
        """One command in the session (a Ray generator, as `node.serve`)."""
        yield NodeStarted(node_id=self.node_id, address=self.address)
        async with self.lock:
            if self.session is None:
                outcome: object = BackendFailed(backend="ray", reason="the session is not open")
            else:
                async for message in self._streamed(self.session, argv, stdin, limits):
                    if isinstance(message, NodeOutput):
                        yield message
                    else:
                        outcome = message
        yield NodeFinished(node_id=self.node_id, address=self.address, outcome=outcome)  # type: ignore[arg-type]

    async def _streamed(
        self, session: Session, argv: tuple[str, ...], stdin: bytes | None, limits: Limits | None
    ) -> AsyncIterator[object]:
        """The command's output in batches of at most `BATCH_S`, then its outcome."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[OutputEvent | None] = asyncio.Queue()

        def put(stream: Literal["stdout", "stderr"]) -> Callable[[bytes], None]:
            def chunk(data: bytes) -> None:
                loop.call_soon_threadsafe(chunks.put_nowait, OutputEvent(stream, data))

            return chunk

        task = asyncio.ensure_future(
            session.run_async(
                list(argv),
                stdin=stdin,
                limits=limits,
                on_stdout=put("stdout"),
                on_stderr=put("stderr"),
            )
        )
        task.add_done_callback(lambda _: loop.call_soon_threadsafe(chunks.put_nowait, None))
        try:
            ended = False
            while not ended:
                batch: list[OutputEvent] = []
                item = await chunks.get()
                deadline = loop.time() + BATCH_S
                while item is not None:
                    batch.append(item)
                    try:
                        item = await asyncio.wait_for(
                            chunks.get(), max(0.0, deadline - loop.time())
                        )
                    except TimeoutError:
                        break
                ended = item is None
                if batch:
                    yield NodeOutput(events=tuple(batch))
        finally:
            if not task.done():  # the caller cancelled: the local session kills the command
                task.cancel()
                await asyncio.wait({task})
        ran = task.result()
        yield ran.unwrap() if isinstance(ran, Success) else ran.failure()

    async def export(self) -> SessionExport:
        """What changed in the node's copy since the last export (or the session's start),
        between commands."""
        async with self.lock:
            if self.directory is None:
                return SessionExport(refused="the session is not open")
            directory, cap = self.directory, self.max_transfer
            # Taken before packing: a change made while packing is sent again next time.
            now = await asyncio.to_thread(transfer.snapshot, directory)
            packed = await asyncio.to_thread(transfer.pack_changes, directory, self.exported, cap)
            if isinstance(packed, Failure):
                return SessionExport(refused=packed.failure().reason)
            self.exported = now
            return SessionExport(changes=packed.unwrap())

    async def close(self) -> None:
        """End the local session (its sandbox killed and waited for), remove the directory."""
        session, self.session = self.session, None
        if session is not None:
            await session.aclose()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
