"""The proxy's bounds: a plain value, light to import (every backend that may serve a
proxy keeps one from the start; the proxy itself is imported when a run serves one)."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class ProxySettings:
    """Bounds on what one run's proxy will do; the defaults suit package installs."""

    max_connections: int = 128
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    handshake_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    max_violations: int = 1000
    relay_chunk_bytes: int = 256 * 1024
    # A tunnel is relayed by the event loop until it has carried this many bytes (both
    # directions together), then spliced in the kernel by a worker thread (Linux).
    splice_after_bytes: int = 256 * 1024
    listen_tcp: bool = False
    socket_mode: int = 0o600
