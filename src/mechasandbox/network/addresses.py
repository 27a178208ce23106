"""Checks on the addresses an allowed name resolved to.

An allowed name is not enough: whoever controls its DNS can point it at the host's own
services (loopback, the host's interface addresses), at the link-local network or at a
cloud metadata service that hands out credentials. So after resolving, every address is
checked here, and the proxy connects only to an address that passed.

Refused: unspecified (0.0.0.0/8, ::), loopback, link-local, multicast, broadcast and
reserved ranges, known cloud metadata endpoints, the host's own interface addresses and
any configured denied networks. Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7)
are allowed by default because internal package mirrors commonly live there; set
`deny_private` or list them in `denied_networks` to refuse them.

One override: an IP literal the allowlist names explicitly as `IP[:port]` (and no deny
pattern matches) is allowed even when it falls in a refused range; that is how a user
reaches a local service on purpose (`--allow-domain 127.0.0.1:8080`).
"""

from __future__ import annotations

import array
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.network.patterns import Allowlist, Decision, IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata and platform endpoints that hand out credentials or instance data.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.169.253",  # AWS DNS resolver
        "169.254.169.123",  # AWS time sync
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.170.23",  # AWS EKS pod identity
        "168.63.129.16",  # Azure wire server (a public address)
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    )
)

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_SHARED_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")

# An injected provider of the host's own addresses (tests pass a fake).
InterfaceAddresses = Callable[[], Iterable[IPAddress]]


@attrs.frozen(kw_only=True)
class AddressRules:
    """What, beyond the built-in ranges, resolved addresses may not be."""

    denied_networks: tuple[IPNetwork, ...] = ()
    local_addresses: frozenset[IPAddress] = frozenset()
    deny_private: bool = False


def parse_networks(texts: Iterable[str]) -> Result[tuple[IPNetwork, ...], ConfigInvalid]:
    """Parse CIDRs such as `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128)."""
    networks: list[IPNetwork] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as error:
            return Failure(ConfigInvalid(problem=f"network {text!r}: {error}", source="network"))
    return Success(tuple(networks))


def _candidates(address: IPAddress) -> tuple[IPAddress, ...]:
    """The addresses to check: a mapped `::ffff:a.b.c.d` is exactly a.b.c.d on the wire,
    and a 6to4 `2002:a.b.c.d::` reaches a.b.c.d through a relay, so check both."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return (address.ipv4_mapped,)
        if address.sixtofour is not None:
            return (address, address.sixtofour)
    return (address,)


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

# Built-in refusals, checked in order; the first that applies names the problem.
_BUILT_IN: tuple[tuple[Callable[[IPAddress], bool], str], ...] = (
    (lambda a: a in METADATA_ADDRESSES, "a cloud metadata address"),
    (lambda a: a.is_unspecified or a in _THIS_NETWORK, "an unspecified address"),
    (lambda a: a.is_loopback, "a loopback address"),
    (lambda a: a.is_link_local, "a link-local address"),
    (lambda a: a.is_multicast, "a multicast address"),
    (lambda a: a == _BROADCAST, "the broadcast address"),
    (lambda a: a.is_reserved, "a reserved address"),
)


def _category(address: IPAddress, rules: AddressRules) -> str | None:
    """Why this address is refused, or None when it is fine."""
    problems = [label for applies, label in _BUILT_IN if applies(address)]
    if address in rules.local_addresses:
        problems.append("one of this host's own addresses")
    problems.extend(
        f"in the denied network {network}"
        for network in rules.denied_networks
        if address.version == network.version and address in network
    )
    if rules.deny_private and (address.is_private or address in _SHARED_CGNAT):
        problems.append("a private address")
    return problems[0] if problems else None


def check_address(
    address: IPAddress, port: int, *, allowlist: Allowlist, rules: AddressRules
) -> Decision:
    """May the proxy connect to `address:port`? Reason written for the agent to read."""
    shown = f"[{address}]" if address.version == 6 else str(address)
    if allowlist.lists_address(address, port):
        return Decision(allowed=True, reason=f"{shown}:{port} is listed explicitly")
    for candidate in _candidates(address):
        if problem := _category(candidate, rules):
            return Decision(
                allowed=False,
                reason=f"it resolves to {shown}, {problem} (list {shown}:{port} to allow it)",
            )
    return Decision(allowed=True, reason=f"{shown} is a public address")


_SIOCGIFADDR = 0x8915


def host_interface_addresses() -> tuple[IPAddress, ...]:
    """This host's interface addresses, best effort and Linux only (empty elsewhere).

    Read once when a proxy starts. IPv4 comes from SIOCGIFADDR per interface, IPv6 from
    /proc/net/if_inet6; neither performs a DNS lookup.
    """
    found: list[IPAddress] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for name in names:
            request = array.array("B", struct.pack("256s", name.encode()[:15]))
            try:
                fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue
            found.append(ipaddress.IPv4Address(bytes(request[20:24])))
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as table:
            for line in table:
                hex_address = line.split()[0]
                found.append(ipaddress.IPv6Address(bytes.fromhex(hex_address)))
    except (OSError, ValueError, IndexError):
        pass
    return tuple(dict.fromkeys(found))
