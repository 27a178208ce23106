"""The `ray` backend: runs on the nodes of a Ray cluster (the extra `mechasandbox[ray]`).

`backend` (the caller's side), `node` (the node's side, a Ray task), `start` (a node that
advertises what it enforces), `resources` (those advertisements), `transfer` (the
workspace there and its changes back), `wire` (the messages), `connection` (the state).
See docs/ray.md.
"""
