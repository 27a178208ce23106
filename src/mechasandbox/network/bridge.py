"""The allowlist bridge inside a sandbox with no network but loopback (pure).

The run's proxy listens on a unix socket on the host (see `session`). The sandbox gets
that socket at `PROXY_SOCKET` and a forwarder (socat) listening on its own loopback
(`PROXY_URL`), started by `bridge_script` before the command; the command's proxy
variables point at the forwarder. Used by bubblewrap (socket bound in, its own network
namespace) and docker/podman (socket mounted into a `--network none` container).
"""

from __future__ import annotations

import shlex

import attrs

# Where the run's proxy socket appears inside the sandbox, and the forwarder's port on the
# sandbox's own loopback (its network namespace has nothing else).
PROXY_SOCKET = "/run/mechasandbox/proxy.sock"
PROXY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
# What a plan shows for the run's proxy socket on the host (known only once a run starts).
PROXY_SOCKET_PLACEHOLDER = "<per-run proxy socket>"
# The bridge's own failure (the forwarder did not start): this status and stderr prefix.
BRIDGE_FAILED = 125
BRIDGE_PREFIX = b"mechasandbox-bridge: "
# `$0` of the bridge script, so that its shell's own messages (`exec: X: not found`) carry
# the same prefix.
BRIDGE_NAME = BRIDGE_PREFIX.decode().removesuffix(": ")


@attrs.frozen(kw_only=True)
class ProxyBridge:
    """Where the run's proxy socket is on the host, and the forwarder (socat) to run."""

    socket: str
    socat: str
    port: int = PROXY_PORT


def bridge_script(bridge: ProxyBridge) -> str:
    """`sh -c` text: start socat detached (reparented to the sandbox's init, so it is never
    the command's child), wait until it listens (read from the sandbox's own
    /proc/net/tcp), then exec the command with the script's arguments."""
    listening = f"0100007F:{bridge.port:04X} 00000000:0000 0A"
    return (
        f"({shlex.quote(bridge.socat)} TCP-LISTEN:{bridge.port},bind=127.0.0.1,reuseaddr,fork "
        f"UNIX-CONNECT:{PROXY_SOCKET} </dev/null >/dev/null 2>&1 &)\n"
        "i=0\n"
        f"until PATH=/usr/bin:/bin grep -q '{listening}' /proc/net/tcp; do\n"
        "  i=$((i+1))\n"
        "  if [ $i -gt 2000 ]; then\n"
        f"    echo '{BRIDGE_PREFIX.decode()}the proxy forwarder did not start' >&2\n"
        f"    exit {BRIDGE_FAILED}\n"
        "  fi\n"
        "  PATH=/usr/bin:/bin sleep 0.005\n"
        "done\n"
        'exec "$@"\n'
    )


def bridge_argv(bridge: ProxyBridge, argv: tuple[str, ...] | list[str]) -> list[str]:
    """`/bin/sh -c SCRIPT mechasandbox-bridge ARGV...`: the command behind the bridge."""
    return ["/bin/sh", "-c", bridge_script(bridge), BRIDGE_NAME, *argv]
