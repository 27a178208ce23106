"""The engine API client against a unix socket server that answers as dockerd does."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from mechasandbox.backends.oci.cli import Unreachable
from mechasandbox.backends.oci.engine_api import Answer, EngineApi

pytestmark = pytest.mark.anyio


def serve_once(path: Path, answer: bytes) -> list[bytes]:
    """Accept one connection, read its request, send `answer`, close; the requests seen."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    seen: list[bytes] = []

    def body() -> None:
        connection, _ = server.accept()
        with connection:
            seen.append(connection.recv(65536))
            if answer:
                connection.sendall(answer)
        server.close()

    threading.Thread(target=body, daemon=True).start()
    return seen


async def test_a_chunked_answer_is_put_together(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    body = b'{"State": {"Running": true, "Pid": 42}}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body[:10]), body[:10])
    chunked = chunked[: -len(b"0\r\n\r\n")] + b"%x\r\n%s\r\n0\r\n\r\n" % (
        len(body[10:]),
        body[10:],
    )
    seen = serve_once(path, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    state = await EngineApi(str(path)).state("mechasandbox-x")
    assert state == {"Running": True, "Pid": 42}
    assert seen[0].startswith(b"GET /containers/mechasandbox-x/json HTTP/1.1\r\n")


async def test_removal_of_a_missing_container_counts_as_gone(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    seen = serve_once(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
    assert await EngineApi(str(path)).remove("mechasandbox-x") is True
    assert seen[0].startswith(b"DELETE /containers/mechasandbox-x?force=1 HTTP/1.1\r\n")


async def test_a_refused_removal_is_not_gone(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    serve_once(path, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}")
    assert await EngineApi(str(path)).remove("mechasandbox-x") is False


async def test_no_engine_and_a_silent_engine_are_unreachable(tmp_path: Path) -> None:
    missing = await EngineApi(str(tmp_path / "none.sock")).request("GET", "/_ping")
    assert isinstance(missing, Unreachable)
    path = tmp_path / "engine.sock"
    serve_once(path, b"")  # closes without a word
    cut = await EngineApi(str(path)).request("GET", "/_ping")
    assert isinstance(cut, Unreachable)
    assert not isinstance(cut, Answer)
