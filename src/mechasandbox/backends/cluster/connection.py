"""The `ray` backend's state: its connection to the cluster and the cluster's view.

Ray has one connection per process (`ray.init`). When the caller is already connected
(an agent fleet or an RL stack that runs on Ray itself), that connection is used and left
open; otherwise the first probe or run opens one to `[ray] address` and `close()` (the
composition root's `shutdown_resources()`) closes it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.cluster.resources import NodeView
from mechasandbox.config.schema import RaySettings
from mechasandbox.domain.errors import BackendUnavailable

# How long the cluster's list of nodes is taken as known (one GCS call when older).
_NODES_TTL_S = 2.0
MISSING_EXTRA = "Ray is not installed here: pip install 'mechasandbox[ray]'"
NO_ADDRESS = (
    "no cluster to join: set [ray] address (the head's GCS, e.g. '10.0.0.1:6379'), or "
    "connect with ray.init() before building the application"
)


@attrs.define
class ClusterConnection:
    settings: RaySettings
    opened: bool = False
    _nodes: tuple[NodeView, ...] = ()
    _nodes_read: float = float("-inf")
    _task: Any = None
    _actor: Any = None
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def connect(self) -> Result[None, BackendUnavailable]:
        """Joined to the cluster (at once when already joined), or why not."""
        if not self.settings.address and "ray" not in sys.modules:
            # Nothing to join and no connection of this process: no need to import Ray
            # (half a second) to say so (`doctor` probes every backend).
            return Failure(BackendUnavailable(backend="ray", reason=NO_ADDRESS))
        try:
            import ray
        except ImportError:
            return Failure(BackendUnavailable(backend="ray", reason=MISSING_EXTRA))
        with self._lock:
            if ray.is_initialized():
                return Success(None)
            address = self.settings.address
            if not address:
                return Failure(BackendUnavailable(backend="ray", reason=NO_ADDRESS))
            import logging

            try:
                ray.init(
                    address=address,
                    namespace="mechasandbox",
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
            except Exception as error:  # Ray raises many kinds; each is "cannot join"
                reason = f"cannot join the Ray cluster at {address}: {error}"
                return Failure(BackendUnavailable(backend="ray", reason=reason))
            self.opened = True
            return Success(None)

    def nodes(self, *, fresh: bool = False) -> tuple[NodeView, ...]:
        """The live nodes (read again when older than a moment, or when `fresh`)."""
        import ray

        now = time.monotonic()
        if fresh or now - self._nodes_read > _NODES_TTL_S:
            self._nodes = tuple(
                NodeView(
                    node_id=str(node["NodeID"]),
                    address=str(node.get("NodeManagerAddress", "")),
                    resources=dict(node.get("Resources", {})),
                )
                for node in ray.nodes()
                if node.get("Alive")
            )
            self._nodes_read = now
        return self._nodes

    def task(self) -> Any:
        """The node's side as a Ray remote function (made once)."""
        if self._task is None:
            import ray

            from mechasandbox.backends.cluster.node import serve

            self._task = ray.remote(serve)
        return self._task

    def session_actor(self) -> Any:
        """The node's side of a session as a Ray actor class (made once)."""
        if self._actor is None:
            import ray

            from mechasandbox.backends.cluster.node_session import SessionActor

            self._actor = ray.remote(SessionActor)
        return self._actor

    def close(self) -> None:
        """Leave the cluster if this connection joined it (idempotent)."""
        with self._lock:
            if not self.opened:
                return
            self.opened = False
            import ray

            ray.shutdown()
