"""The containers of this process, and their removal.

Containers are run with a name and without `--rm`, so that after one ends we can ask the
engine whether it was OOM-killed or never started, and then remove it ourselves. Those of
runs still going are known here, and removed when the process exits. Every container
carries the run's and the owner's labels (`LABEL_RUN`, `LABEL_OWNER`): what a process that
died left behind is found by them and removed by the next one (`reap`).
"""

from __future__ import annotations

import contextlib
import threading

import anyio
from returns.result import Failure, Result, Success

from mechasandbox.backends.oci.cli import EngineCli, owner_gone, run_blocking, tail
from mechasandbox.backends.oci.compiler import LABEL_RUN
from mechasandbox.domain.errors import BackendFailed, SandboxError

_REMOVE_ATTEMPTS = 4

# Containers of runs still going in this process: removed at interpreter exit.
_LIVE: dict[str, EngineCli] = {}
_LIVE_LOCK = threading.Lock()


def add(name: str, cli: EngineCli) -> None:
    with _LIVE_LOCK:
        _LIVE[name] = cli


def discard(name: str) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(name, None)


def remove_live_at_exit() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE.items())
        _LIVE.clear()
    for name, cli in live:
        with contextlib.suppress(Exception):
            run_blocking(cli.runner, cli.spec(("rm", "--force", name), timeout_s=30.0))


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
