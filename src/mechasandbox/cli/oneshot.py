"""The CLI's one-shot path: one backend, built directly, run without an event loop.

A CLI call runs one command and exits, so what a long-lived host pays once would be most
of its time: importing dependency-injector (which imports asyncio), anyio's event loop,
the allowlist proxy. When the backend only waits on its runner (`registry.LOOPLESS`: none,
process, bubblewrap, landlock, and not in allowlist mode, whose proxy needs the loop), the
CLI builds it with the same factories the containers use (`backends.factories`) and a
`BlockingHelperRunner`, and runs it with `complete`. Anything else goes through
`Application` as a library user's code would.

`auto` resolves here only to what `choose` would pick: the first backend of `AUTO_ORDER`
that is available and enforces the whole policy, when that is one of the loopless ones
(bubblewrap and landlock come first on Linux). Otherwise the containers choose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from returns.result import Success

from mechasandbox.backends import factories
from mechasandbox.backends.names import AUTO_ORDER, LOOPLESS
from mechasandbox.domain.policy import NetworkMode, Policy

if TYPE_CHECKING:
    from mechasandbox.backends.base import Backend, HostContext
    from mechasandbox.backends.probe_cache import ProbeCache
    from mechasandbox.runner.protocol import ProcessRunner


def _build(
    name: str, runner: ProcessRunner, host: HostContext, probe_cache: ProbeCache | None
) -> Backend:
    if name == "bubblewrap":
        return factories.bubblewrap(runner, host, probe_cache=probe_cache)
    if name == "landlock":
        return factories.landlock(runner, host)
    if name == "process":
        return factories.process(runner, host)
    return factories.none(runner, host)


def loopless_backend(
    name: str,
    policy: Policy,
    *,
    runner: ProcessRunner,
    host: HostContext,
    probe_cache: ProbeCache | None = None,
    runs: bool = True,
) -> Backend | None:
    """The backend `name` built for the one-shot path, or None when this call needs the
    containers (and an event loop). `runs`: the command will run (not only be planned)."""
    if runs and policy.network.mode is NetworkMode.ALLOWLIST:
        return None
    if name != "auto":
        return _build(name, runner, host, probe_cache) if name in LOOPLESS else None
    for candidate in AUTO_ORDER:
        if candidate not in LOOPLESS:
            return None  # one that needs the loop may be the choice: the containers choose
        backend = _build(candidate, runner, host, probe_cache)
        probed = backend.probe()
        if isinstance(probed, Success) and not probed.unwrap().missing(policy):
            return backend
    return None
