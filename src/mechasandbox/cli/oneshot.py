"""The CLI's loop-free path: the application's own backend, run without an event loop.

A CLI call runs one command and exits, so what a long-lived host pays once would be much
of its time: anyio's event loop, the allowlist proxy. When the chosen backend only waits
on its runner (`catalog.LOOPLESS`: none, process, bubblewrap, landlock, and not in
allowlist mode, whose proxy needs the loop), the CLI gives the application a
`BlockingHelperRunner` (the runner is an injected piece like any other) and runs the
backend with `complete`. Anything else runs as a library user's code would.

`auto` resolves here only to what `choose` would pick: the first backend of `AUTO_ORDER`
that is available and enforces the whole policy, when that is one of the loop-free ones
(bubblewrap and landlock come first on Linux). Otherwise `auto` chooses per run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dependency_injector import providers
from returns.result import Success

from mechasandbox.backends.catalog import AUTO, AUTO_ORDER, LOOPLESS
from mechasandbox.domain.policy import NetworkMode

if TYPE_CHECKING:
    from mechasandbox.backends.base import Backend
    from mechasandbox.containers import Application
    from mechasandbox.runner.client import SpawnHelperClient
    from mechasandbox.runner.interruption import Interruption


def _first_loopless(app: Application, name: str) -> Backend | None:
    policy = app.services.policy()
    if name != AUTO:
        return app.backends.named(name) if name in LOOPLESS else None
    for candidate in AUTO_ORDER:
        if candidate not in LOOPLESS:
            return None  # one that needs the loop may be the choice: `auto` chooses
        backend = app.backends.named(candidate)
        probed = backend.probe()
        if isinstance(probed, Success) and not probed.unwrap().missing(policy):
            return backend
    return None


def go_loopless(
    app: Application,
    helper: SpawnHelperClient | None,
    *,
    runs: bool,
    interruption: Interruption | None = None,
) -> bool:
    """Set `app` up for the loop-free path when its configuration allows it: its runner is
    then a blocking one and its selected backend the one `auto` would pick. False: `app`
    is left as it was. `runs`: the command will run (not only be planned); `interruption`:
    the runner's (see `runner.interruption`)."""
    from mechasandbox.runner.blocking import BlockingHelperRunner

    if runs and app.services.policy().network.mode is NetworkMode.ALLOWLIST:
        return False
    runner = BlockingHelperRunner(helper, prestart=False, interruption=interruption)
    app.core.runner.override(providers.Object(runner))
    backend = _first_loopless(app, app.config.backend())
    if backend is None:
        # Forget the backends built with the blocking runner (none of them holds anything);
        # the state they were handed, and the start's sweep, stay for the ones built next.
        app.core.runner.reset_override()
        app.backends.deps.reset()
        for built in app.backends.named.providers.values():
            if isinstance(built, providers.Resource):
                built.shutdown()
        return False
    app.backends.selected.override(providers.Object(backend))
    return True
