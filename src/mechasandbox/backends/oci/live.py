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

from mechasandbox.backends.oci.cli import (
    Deadline,
    EngineCli,
    gone,
    owner_gone,
    tail,
    unreachable,
)
from mechasandbox.backends.oci.compiler import LABEL_RUN
from mechasandbox.backends.oci.portal import Portal
from mechasandbox.domain.errors import BackendFailed, SandboxError, SpawnFailed
from mechasandbox.runner.spec import ProcessOutcome

_REMOVE_ATTEMPTS = 4


class LiveContainers:
    """The containers of this process's runs still going (by name, with the CLI that
    removes each): `close` removes them, as the interpreter's exit does at the latest."""

    def __init__(self, portal: Portal) -> None:
        self._portal = portal
        self._lock = threading.Lock()
        self._live: dict[str, EngineCli] = {}
        self._stale: set[str] = set()  # runs over, their containers not removed
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
            self._stale.discard(name)
            if not self._live and self._finalizer is not None:
                self._finalizer.detach()  # nothing left to remove
                self._finalizer = None

    def left_behind(self, name: str) -> None:
        """The run of `name` is over, but its container could not be removed (the engine
        was lost or did not answer): it stays registered, and the next run removes it
        (`remove_left_behind`), or `close`, or the interpreter's exit."""
        with self._lock:
            if name in self._live:
                self._stale.add(name)

    def any_left_behind(self) -> bool:
        with self._lock:
            return bool(self._stale)

    async def remove_left_behind(self, deadline: Deadline) -> None:
        """Try again to remove the containers runs left behind; forget those now gone."""
        with self._lock:
            doomed = [(name, self._live[name]) for name in self._stale if name in self._live]
        for name, cli in doomed:
            removed = await cli.run("rm", "--force", name, timeout_s=deadline.call_timeout())
            if unreachable(removed) is not None:
                return  # the engine is still away: the next run tries again
            if gone(removed):
                with self._lock:
                    self._stale.discard(name)
                self.discard(name)

    def close(self) -> None:
        with self._lock:
            finalizer = self._finalizer
            self._stale.clear()
        if finalizer is not None:
            finalizer()


def _remove_all(live: dict[str, EngineCli], lock: threading.Lock, portal: Portal) -> None:
    with lock:
        doomed = list(live.items())
        live.clear()
    for name, cli in doomed:
        with contextlib.suppress(Exception):
            cli.run_blocking(portal, cli.spec(("rm", "--force", name), timeout_s=30.0))


async def remove(
    cli: EngineCli,
    name: str,
    run_id: str,
    *,
    thorough: bool,
    deadline: Deadline | None = None,
    removal: tuple[str, ...] | None = None,
) -> str | None:
    """Force-remove the container (kills what still runs in it). None once the engine no
    longer has it; else why it may still have it (the engine's answer, or its silence).

    `thorough` is for a run we interrupted: the CLI may have died while the engine was
    still creating the container, so look again until no container carries the label.
    Every call is given what is left of `deadline`; a call the engine does not answer ends
    the attempts (a hung engine would not answer the next one either).
    `removal`: the `rm` arguments (default `rm --force NAME`).
    """
    deadline = deadline or Deadline()
    left: str | None = "not tried"
    for attempt in range(_REMOVE_ATTEMPTS if thorough else 1):
        removed = await cli.run(
            *(removal or ("rm", "--force", name)), timeout_s=deadline.call_timeout()
        )
        lost = unreachable(removed)
        if lost is not None:
            return lost.reason
        left = None if gone(removed) else _said(removed)
        if not thorough:
            return left
        listed = await cli.run(
            "ps", "--all", "--quiet", "--filter", f"label={LABEL_RUN}={run_id}",
            timeout_s=deadline.call_timeout(),
        )  # fmt: skip
        lost = unreachable(listed)
        if lost is not None:
            return lost.reason
        if (
            isinstance(listed, Success)
            and listed.unwrap().exit_code == 0
            and not listed.unwrap().stdout.strip()
        ):
            return None
        if deadline.passed():
            break
        await anyio.sleep(0.25 * (attempt + 1))
    return left or "the engine still lists it"


def _said(answer: Result[ProcessOutcome, SpawnFailed]) -> str:
    if isinstance(answer, Failure):
        return str(answer.failure().message)
    return tail(answer.unwrap().stderr, 300)


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
