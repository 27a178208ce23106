"""Name resolution for the proxy: injected, so tests never touch real DNS."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Protocol

from mechasandbox.network.patterns import IPAddress


class Resolver(Protocol):
    """Turns a host name into addresses. Injected so tests never touch real DNS."""

    async def resolve(self, host: str) -> Sequence[IPAddress]: ...


class SystemResolver:
    """The host's resolver (`getaddrinfo` in a worker thread)."""

    async def resolve(self, host: str) -> Sequence[IPAddress]:
        import anyio  # here: this class is built with every backend, used by few runs

        infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        found: dict[IPAddress, None] = {}
        for info in infos:
            text = str(info[4][0]).split("%", 1)[0]
            found[ipaddress.ip_address(text)] = None
        return tuple(found)
