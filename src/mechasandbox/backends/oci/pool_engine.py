"""What a warm pool asks the engine about its containers: on the API socket where there is
one (see `engine_api`: 0.3 ms for a state, where a CLI process costs 11 ms and an `exec
true` 50-60 ms), else through the CLI."""

from __future__ import annotations

import threading

import anyio
from returns.result import Failure, Success

from mechasandbox.backends.oci.cli import EngineCli, gone
from mechasandbox.backends.oci.engine import OciBackend
from mechasandbox.backends.oci.engine_api import EngineApi


class PoolEngine:
    """The engine calls of one pool (see the module)."""

    def __init__(self, backend: OciBackend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._api: EngineApi | None = None
        self._located = False

    def cli(self) -> EngineCli:
        return self.backend._cli(self.backend._engine().unwrap()[2])

    def use_api(self, api: EngineApi | None) -> None:
        """Call the engine through `api` (None: the CLI only) instead of the socket
        `locate` finds (for tests that make the engine refuse)."""
        with self._lock:
            self._api, self._located = api, True

    async def api(self) -> EngineApi | None:
        """The engine's API socket, where there is one: found once."""
        if not self._located:
            cli = self.cli()
            found = await self.backend.state.apis.get(cli, podman=self.backend.kind == "podman")
            with self._lock:
                if not self._located:
                    self._api, self._located = found, True
        return self._api

    async def remove(self, name: str) -> bool:
        """`rm --force` (shielded): whether the engine has the container no more."""
        removed = False
        with anyio.CancelScope(shield=True):
            api = await self.api()
            removed = api is not None and await api.remove(name)
            if not removed:
                removed = gone(await self.cli().run(*self.backend._remove_args(name)))
        return removed

    async def running(self, name: str) -> bool:
        """The container's keeper runs: its state on the socket; through the CLI, by
        `exec true` (which also shows the engine can start a command in it)."""
        api = await self.api()
        if api is not None:
            state = await api.state(name)
            return isinstance(state, dict) and state.get("Running") is True
        cli = self.cli()
        checked = await self.backend.runner.run(cli.spec(("exec", name, "true"), timeout_s=20.0))
        return isinstance(checked, Success) and checked.unwrap().exit_code == 0

    async def pid(self, name: str) -> int | None:
        """The keeper's pid on this host, as the engine sees it."""
        api = await self.api()
        if api is not None:
            state = await api.state(name)
            pid = state.get("Pid") if isinstance(state, dict) else None
            return pid if isinstance(pid, int) and pid > 0 else None
        inspected = await self.cli().run("inspect", "--format", "{{.State.Pid}}", name)
        if isinstance(inspected, Failure) or inspected.unwrap().exit_code != 0:
            return None
        text = inspected.unwrap().stdout.decode().strip()
        return int(text) if text.isdigit() and int(text) > 0 else None

    async def oom_killed(self, name: str) -> bool:
        """The engine's OOMKilled flag (set when the keeper died too)."""
        api = await self.api()
        state = await (api.state(name) if api is not None else self.cli().state(name))
        return isinstance(state, dict) and bool(state.get("OOMKilled"))
