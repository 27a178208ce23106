"""The engine's HTTP API on its local unix socket, for the calls a CLI process costs too much for.

A `docker inspect` costs 11 ms (a Go process started, configured, connected), the same
question on the socket 0.3 ms; `rm --force` 52 against 39 ms (figures and the choice of
client: docs/backends-containers.md, "The engine client"). Container creation stays with
the CLI (one compiler of the security options, the lifeline held by the spawn helper).

`locate` asks the CLI once where its engine listens (`docker context inspect`: the
endpoint `DOCKER_HOST` or the current context names; `podman info`: the service socket,
which `podman system service` serves) and uses it only if it is a unix socket that answers
`/_ping`: a remote engine (tcp, ssh) stays with the CLI, which resolves its TLS and
credentials. Requests are HTTP/1.1, one connection each (`Connection: close`), on anyio.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from typing import Any
from urllib.parse import quote

import anyio
import attrs
from returns.result import Failure

from mechasandbox.backends.oci.cli import EngineCli, Unreachable

API_TIMEOUT_S = 10.0
_MAX_ANSWER_BYTES = 4 * 1024 * 1024
_UNIX = "unix://"


@attrs.frozen
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def _parse(raw: bytes) -> Answer | None:
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        return None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _dechunk(body)
    return Answer(status=int(parts[1]), body=body)


@attrs.frozen
class EngineApi:
    """One engine's API socket (see the module)."""

    socket_path: str

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float = API_TIMEOUT_S,
    ) -> Answer | Unreachable:
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        raw = bytearray()
        with anyio.move_on_after(timeout_s) as scope:
            try:
                async with await anyio.connect_unix(self.socket_path) as stream:
                    await stream.send(head + payload)
                    while len(raw) < _MAX_ANSWER_BYTES:
                        try:
                            raw += await stream.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            break
            except OSError as error:
                return Unreachable(f"cannot connect to {self.socket_path}: {error}")
        if scope.cancelled_caught:
            return Unreachable(f"no answer from {self.socket_path} within {timeout_s:.1f}s")
        answer = _parse(bytes(raw))
        if answer is None:
            return Unreachable(f"an answer {self.socket_path} cut short or unreadable")
        return answer

    async def state(self, name: str) -> dict[str, Any] | Unreachable | None:
        """The container's `.State` (as `inspect` prints it); None if there is none."""
        answer = await self.request("GET", f"/containers/{quote(name)}/json")
        if isinstance(answer, Unreachable):
            return answer
        document = answer.json() if answer.status == 200 else None
        found = document.get("State") if isinstance(document, dict) else None
        return found if isinstance(found, dict) else None

    async def image(self, name: str) -> dict[str, Any] | None:
        """The image's `inspect` document (its `Config`: `Env`, `Cmd`...); None if none."""
        answer = await self.request("GET", f"/images/{quote(name, safe='')}/json")
        if isinstance(answer, Unreachable) or answer.status != 200:
            return None
        document = answer.json()
        return document if isinstance(document, dict) else None

    async def remove(self, name: str) -> bool:
        """`rm --force` (kill, then remove at once): whether the engine has it no more."""
        answer = await self.request("DELETE", f"/containers/{quote(name)}?force=1")
        return not isinstance(answer, Unreachable) and answer.status in (204, 404)


def _unix_path(endpoint: str) -> str | None:
    if not endpoint.startswith(_UNIX):
        return None
    path = endpoint[len(_UNIX) :]
    try:
        return path if stat.S_ISSOCK(os.stat(path).st_mode) else None
    except OSError:
        return None


async def locate(cli: EngineCli, *, podman: bool) -> EngineApi | None:
    """The API of the engine `cli` talks to, if it is a local unix socket that answers."""
    args = (
        ("info", "--format", "{{.Host.RemoteSocket.Path}}")
        if podman
        else ("context", "inspect", "--format", "{{.Endpoints.docker.Host}}")
    )
    found = await cli.run(*args, timeout_s=20.0)
    if isinstance(found, Failure) or found.unwrap().exit_code != 0:
        return None
    endpoint = found.unwrap().stdout.decode("utf-8", "replace").strip()
    path = _unix_path(endpoint if not podman or endpoint.startswith(_UNIX) else _UNIX + endpoint)
    if path is None:
        return None
    api = EngineApi(path)
    ping = await api.request("GET", "/_ping", timeout_s=5.0)
    return api if isinstance(ping, Answer) and ping.status == 200 else None


class EngineApis:
    """The API socket of each engine CLI this process calls (`locate`d once per CLI)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[str, EngineApi | None] = {}

    async def get(self, cli: EngineCli, *, podman: bool) -> EngineApi | None:
        with self._lock:
            if cli.executable in self._found:
                return self._found[cli.executable]
        found = await locate(cli, podman=podman)
        with self._lock:
            return self._found.setdefault(cli.executable, found)
