"""The containers of this process, and their removal.

Containers are run with a name and without `--rm`, so that after one ends we can ask the
engine whether it was OOM-killed or never started, and then remove it ourselves. Those of
runs still going are known (`LiveContainers`), and removed when they are closed or the
process exits. Every container carries the run's and the owner's labels (`LABEL_RUN`,
`LABEL_OWNER`): what a process that died left behind is found by them and removed by the
next one (`reap`).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any

import anyio
from returns.result import Failure, Result, Success

from mechasandbox.backends.oci.cli import EngineCli, owner_gone, tail
from mechasandbox.backends.oci.compiler import LABEL_RUN
from mechasandbox.backends.oci.portal import Portal
from mechasandbox.domain.errors import BackendFailed, SandboxError

_REMOVE_ATTEMPTS = 4


class LiveContainers:
    """The containers of this process's runs still going (by name, with the CLI that
    removes each): `close` removes them, as the interpreter's exit does at the latest."""

    def __init__(self, portal: Portal) -> None:
        self._portal = portal
        self._lock = threading.Lock()
        self._live: dict[str, EngineCli] = {}
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def add(self, name: str, cli: EngineCli) -> None:
        with self._lock:
            self._live[name] = cli
            if self._finalizer is None or not self._finalizer.alive:
                self._finalizer = weakref.finalize(
                    self, _remove_all, self._live, self._lock, self._portal
                )

    def discard(self, name: str) -> None:
        with self._lock:
            self._live.pop(name, None)
            if not self._live and self._finalizer is not None:
                self._finalizer.detach()  # nothing left to remove
                self._finalizer = None

    def close(self) -> None:
        with self._lock:
            finalizer = self._finalizer
        if finalizer is not None:
            finalizer()


def _remove_all(live: dict[str, EngineCli], lock: threading.Lock, portal: Portal) -> None:
    with lock:
        doomed = list(live.items())
        live.clear()
    for name, cli in doomed:
        with contextlib.suppress(Exception):
            cli.run_blocking(portal, cli.spec(("rm", "--force", name), timeout_s=30.0))


async def remove(cli: EngineCli, name: str, run_id: str, *, thorough: bool) -> None:
    """Force-remove the container (kills what still runs in it).

    `thorough` is for a run we interrupted: the CLI may have died while the engine was
    still creating the container, so look again until no container carries the label.
    """
    for attempt in range(_REMOVE_ATTEMPTS if thorough else 1):
        await cli.run("rm", "--force", name)
        if not thorough:
            return
        listed = await cli.run("ps", "--all", "--quiet", "--filter", f"label={LABEL_RUN}={run_id}")
        if (
            isinstance(listed, Success)
            and listed.unwrap().exit_code == 0
            and not listed.unwrap().stdout.strip()
        ):
            return
        await anyio.sleep(0.25 * (attempt + 1))


async def reap(
    cli: EngineCli, *, backend: str, owner_template: str, include_live: bool
) -> Result[tuple[str, ...], SandboxError]:
    """Remove labelled containers whose owner process is gone (after a host crash).

    Containers of another live process on this host are kept unless `include_live`;
    those of another host (a shared remote engine) are kept unless `include_live`.
    `owner_template`: a `ps --format` template printing the owner label.
    """
    listed = await cli.run(
        "ps", "--all", "--filter", f"label={LABEL_RUN}", "--format", "{{.Names}}\t" + owner_template
    )
    if isinstance(listed, Failure):
        return Failure(BackendFailed(backend=backend, reason=listed.failure().message))
    if listed.unwrap().exit_code != 0:
        return Failure(BackendFailed(backend=backend, reason=tail(listed.unwrap().stderr)))
    doomed: list[str] = []
    for line in listed.unwrap().stdout.decode().splitlines():
        name, _, owner = line.partition("\t")
        if name and (include_live or owner_gone(owner.strip())):
            doomed.append(name.strip())
    for name in doomed:
        await cli.run("rm", "--force", name)
    return Success(tuple(doomed))
