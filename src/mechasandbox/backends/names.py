"""Backend names and the auto-selection order: plain data, for the parser and the registry."""

from __future__ import annotations

BACKEND_NAMES = (
    "auto",
    "none",
    "process",
    "landlock",
    "bubblewrap",
    "docker",
    "podman",
    "seatbelt",
    "apple-container",
)

# Strongest first; `none` never appears. On macOS this is Apple Container (when its
# service runs and an image is configured), then Seatbelt, then the container engines.
AUTO_ORDER = (
    "bubblewrap",
    "landlock",
    "apple-container",
    "seatbelt",
    "docker",
    "podman",
    "process",
)

# Backends whose `run` waits on nothing but its runner, unless the network mode is allowlist
# (the proxy serves from an event loop): with a blocking runner they need no event loop
# (see `runner.blocking`), which is how the CLI runs them.
LOOPLESS = frozenset({"none", "process", "bubblewrap", "landlock"})
