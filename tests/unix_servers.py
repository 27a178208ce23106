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


@attrs.frozen
class HostDatagramSockets:
    """A path and an abstract datagram socket on the host (journald's, systemd's notify
    socket and /dev/log are of this kind): `received` tells which got a datagram."""

    path: Path
    abstract: str
    sockets: tuple[socket.socket, ...]

    def received(self) -> list[str]:
        names = (f"path {self.path}", f"abstract @{self.abstract}")
        found = []
        for name, receiver in zip(names, self.sockets, strict=True):
            try:
                receiver.recv(64)
            except BlockingIOError:
                continue
            found.append(name)
        return found


@contextlib.contextmanager
def host_datagram_sockets(directory: Path) -> Iterator[HostDatagramSockets]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "notify.sock"
    name = f"mechasandbox-test-{uuid.uuid4().hex}"
    with contextlib.ExitStack() as stack:
        receivers = []
        for address in (str(path), "\0" + name):
            receiver = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            receiver.bind(address)
            receiver.setblocking(False)
            receivers.append(receiver)
        path.chmod(0o777)
        yield HostDatagramSockets(path=path, abstract=name, sockets=tuple(receivers))


def datagram_pair_script(sockets: HostDatagramSockets) -> str:
    """A shell command that sends to both through a datagram socketpair (sendto with an
    address, and connect), the way around a refused socket(AF_UNIX)."""
    targets = (repr(str(sockets.path)), repr("\0" + sockets.abstract))
    code = (
        "import socket\n"
        "try:\n"
        "    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "except OSError as error:\n"
        "    raise SystemExit(f'no datagram pair: {error}')\n"
        f"for target in ({', '.join(targets)}):\n"
        "    sends = (lambda: a.sendto(b'x', target), lambda: (a.connect(target), a.send(b'x')))\n"
        "    for send in sends:\n"
        "        try:\n"
        "            send()\n"
        "            print('sent', repr(target))\n"
        "        except OSError as error:\n"
        "            print('refused', repr(target), error)\n"
    )
    return f"/usr/bin/python3 -c {_quote(code)}"
