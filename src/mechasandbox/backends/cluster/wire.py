"""What travels between the caller and the node running a command (pickled by Ray)."""

from __future__ import annotations

import attrs

from mechasandbox.backends.cluster.transfer import Changes
from mechasandbox.backends.session_base import SessionSettings
from mechasandbox.domain.errors import SandboxError
from mechasandbox.domain.events import OutputEvent
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.result import RunResult


@attrs.frozen(kw_only=True)
class NodeRun:
    """One run for a node: the command, its input, the policy resolved by the caller, the
    variant of backend to run it under (`resources.variant`), and the workspace."""

    argv: tuple[str, ...]
    stdin: bytes | None
    policy: Policy
    variant: str
    image: str | None
    workspace: bytes  # a tar archive (`transfer.pack_workspace`)
    # The caller's real workspace path: policy paths inside it are the node's copy there.
    caller_workspace: str
    max_transfer: int


@attrs.frozen(kw_only=True)
class NodeStarted:
    """The first message: the node that took the run (its timeout runs from now)."""

    node_id: str
    address: str


@attrs.frozen(kw_only=True)
class NodeOutput:
    """Output as it came, in the order it came (one message per batch)."""

    events: tuple[OutputEvent, ...]


@attrs.frozen(kw_only=True)
class NodeFinished:
    """The last message: the node's result (or error) unchanged, and what the run changed
    in the workspace (None when it could not be carried: `refused` says why)."""

    node_id: str
    address: str
    outcome: RunResult | SandboxError
    changes: Changes | None = None
    refused: str | None = None
    warnings: tuple[str, ...] = ()  # what of the workspace the node did not write


@attrs.frozen(kw_only=True)
class SessionOpen:
    """A session for a node's actor (`node_session.SessionActor`): as `NodeRun` without a
    command, and how long the session may live."""

    policy: Policy
    variant: str
    image: str | None
    workspace: bytes  # a tar archive (`transfer.pack_workspace`)
    caller_workspace: str
    max_transfer: int
    settings: SessionSettings


@attrs.frozen(kw_only=True)
class SessionOpened:
    """The actor's session is open on `node_id`, in `directory` (the node's copy of the
    workspace); `warnings`: what of the workspace the node did not write, and the policy's
    gaps on the node's backend (repeated on every result)."""

    node_id: str
    address: str
    directory: str
    warnings: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class SessionExport:
    """What changed in the node's copy since the last export (None when it could not be
    carried: `refused` says why)."""

    changes: Changes | None = None
    refused: str | None = None
