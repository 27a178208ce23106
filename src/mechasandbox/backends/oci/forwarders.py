"""What the image offers the allowlist bridge and the lifeline: socat and /bin/sh.

An allowlist run reaches the host's proxy through its unix socket, mounted read-only into
the container, and the image's socat forwarding 127.0.0.1:PROXY_PORT to it (see
`network.bridge`); the lifeline's watcher is a /bin/sh script (see `lifeline`). Whether the
image has them is found by running it once (`probe_args`), and is cached per engine CLI and
image id: starting a container to look is slow, and an image id never changes content.
"""

from __future__ import annotations

import threading
from typing import Protocol

from returns.result import Failure, Result

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.oci.cli import tail
from mechasandbox.backends.oci.compiler import (
    ContainerRun,
    EngineTraits,
    Runtime,
    compile_container_args,
)
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.errors import BackendFailed, SandboxError, SpawnFailed
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.network.bridge import (
    BRIDGE_FAILED,
    BRIDGE_PREFIX,
    PROXY_PORT,
    PROXY_SOCKET,
    ProxyBridge,
)
from mechasandbox.runner.spec import ProcessOutcome

_SHELL_MARK = "mechasandbox-sh"
_FORWARDER_PROBE = f"echo {_SHELL_MARK}; command -v socat"


class ForwarderCache:
    """What each image has: /bin/sh (the lifeline's watcher) and socat (its path, or None),
    per engine CLI and image id. (State rather than a `functools.cache`: filled by running
    containers, and it grows with the images used.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[tuple[str, str], tuple[bool, str | None]] = {}

    def get(self, key: tuple[str, str]) -> tuple[bool, str | None] | None:
        with self._lock:
            return self._found.get(key)

    def put(self, key: tuple[str, str], found: tuple[bool, str | None]) -> None:
        with self._lock:
            self._found[key] = found


def probe_args(
    host: HostContext, image: str, traits: EngineTraits, run: ContainerRun
) -> tuple[str, ...]:
    """`run --rm ... sh -c 'echo MARK; command -v socat'` in the image, as a run would be
    started (offline, --network none, read-only, no capabilities; `run` mounts an empty
    read-only directory as the "workspace")."""
    args = compile_container_args(
        RunRequest(argv=("/bin/sh", "-c", _FORWARDER_PROBE), workspace=run.workspace),
        Policy(),
        host,
        image,
        Runtime.DEFAULT,  # the image's content does not depend on the runtime
        traits,
        run=run,
    )
    return ("run", "--rm", *args[1:])


def read_probe(found: Result[ProcessOutcome, SpawnFailed]) -> tuple[bool, str | None]:
    """(has /bin/sh, socat's path) from what the probe printed."""
    if isinstance(found, Failure):
        return False, None
    lines = found.unwrap().stdout.decode(errors="replace").strip().split("\n")
    shell = lines[0] == _SHELL_MARK
    if found.unwrap().exit_code != 0 or len(lines) != 2 or not lines[1].startswith("/"):
        return shell, None
    return shell, lines[1]


def verdict(socat: str | None, *, runtime: Runtime, image: str) -> tuple[str | None, str]:
    """(the forwarder the bridge uses, or None; why there is no bridge, or "")."""
    if runtime is Runtime.RUNSC:
        return None, (
            "not bridged under gVisor: runsc does not let the container connect to "
            "a host unix socket (the proxy's)"
        )
    if socat is None:
        return None, (
            f"image {image!r} has no socat on its PATH: the bridge to the proxy "
            "needs it (`python -m mechasandbox.images`); best-effort runs have no network "
            "at all"
        )
    return socat, ""


def allowlist_detail(socat: str | None, no_bridge: str) -> tuple[Protection, str]:
    if socat is None:
        return (Protection.NETWORK_ALLOWLIST, no_bridge)
    return (
        Protection.NETWORK_ALLOWLIST,
        f"--network none; the run's proxy socket mounted read-only at {PROXY_SOCKET} and "
        f"the image's {socat} forwarding 127.0.0.1:{PROXY_PORT} to it; no route, "
        "no DNS inside",
    )


def bridge_for(socat: str | None, policy: Policy, socket: str) -> ProxyBridge | None:
    """The bridge an allowlist run gets (None: not an allowlist run, or no forwarder)."""
    if policy.network.mode is not NetworkMode.ALLOWLIST or socat is None:
        return None
    return ProxyBridge(socket=socket, socat=socat)


class Ended(Protocol):
    """How a bridged command ended: the engine CLI's outcome (a run), or a session
    command's result."""

    @property
    def exit_code(self) -> int | None: ...

    @property
    def stderr(self) -> bytes: ...


def bridge_failure(ended: Ended, command: str, *, backend: str, image: str) -> SandboxError | None:
    """The bridge script's own failures: the forwarder did not start (125), or its shell
    could not exec the command (`mechasandbox-bridge: ...: exec: X: not found`, 127/126).
    Both say so first on stderr, with the script's prefix."""
    if not ended.stderr.startswith(BRIDGE_PREFIX):
        return None
    message = tail(ended.stderr, 300)
    if ended.exit_code == BRIDGE_FAILED:
        return BackendFailed(backend=backend, reason=message)
    if ended.exit_code in (126, 127) and b": exec: " in ended.stderr.split(b"\n")[0]:
        reason = "command not found" if ended.exit_code == 127 else "not executable"
        return SpawnFailed(
            command=command,
            reason=f"{reason} in image {image!r}: {message}",
            exit_status=ended.exit_code,
        )
    return None
