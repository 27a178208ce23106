"""Unix socket servers on the host, standing in for docker.sock, the ssh agent and the
session bus, and the command a sandbox runs to try to reach them."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs


@attrs.frozen
class HostUnixServers:
    """A path socket and an abstract one, listening on the host (never accepting by
    themselves: `reached` tells whether anything connected)."""

    path: Path
    abstract: str  # the name, without the leading NUL
    servers: tuple[socket.socket, ...]

    def reached(self) -> list[str]:
        """Which of the two got a connection (each is asked once)."""
        names = (f"path {self.path}", f"abstract @{self.abstract}")
        found = []
        for name, server in zip(names, self.servers, strict=True):
            try:
                connection, _ = server.accept()
            except BlockingIOError:
                continue
            connection.close()
            found.append(name)
        return found


@contextlib.contextmanager
def host_unix_servers(directory: Path) -> Iterator[HostUnixServers]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "agent.sock"
    name = f"mechasandbox-test-{uuid.uuid4().hex}"
    with contextlib.ExitStack() as stack:
        servers = []
        for address in (str(path), "\0" + name):
            server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            server.bind(address)
            server.listen(4)
            server.setblocking(False)
            servers.append(server)
        path.chmod(0o777)  # any uid may connect: the sandbox may run as another one
        yield HostUnixServers(path=path, abstract=name, servers=tuple(servers))


def connect_script(address: str) -> str:
    """A python3 program that connects to `address` (a path, or `@name` for an abstract
    socket) and prints `connected <address>` or `refused <address>: <error>`."""
    target = repr("\0" + address[1:]) if address.startswith("@") else repr(address)
    return (
        "import socket\n"
        "try:\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        f"    s.connect({target})\n"
        f"    print('connected {address}')\n"
        "except OSError as error:\n"
        f"    print('refused {address}:', error)\n"
    )


def try_both(servers: HostUnixServers) -> str:
    """A shell command trying the path socket, then the abstract one."""
    return "; ".join(
        f"/usr/bin/python3 -c {_quote(connect_script(address))}"
        for address in (str(servers.path), "@" + servers.abstract)
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
