"""Checks on resolved addresses."""

from __future__ import annotations

import ipaddress

import pytest
from returns.result import Failure

from mechasandbox.network.addresses import (
    AddressRules,
    check_address,
    host_interface_addresses,
    parse_networks,
)
from mechasandbox.network.patterns import Allowlist, compile_allowlist

NOTHING_LISTED = Allowlist()


def check(
    text: str,
    port: int = 443,
    *,
    allowlist: Allowlist = NOTHING_LISTED,
    rules: AddressRules | None = None,
) -> tuple[bool, str]:
    decision = check_address(
        ipaddress.ip_address(text), port, allowlist=allowlist, rules=rules or AddressRules()
    )
    return decision.allowed, decision.reason


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
    ],
)
def test_refused_addresses(address: str, problem: str) -> None:
    allowed, reason = check(address)
    assert not allowed
    assert problem in reason
    assert reason.startswith("it resolves to ")


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "2606:2800:220:1::1", "10.0.0.5", "192.168.1.10", "fd12::1", "100.64.0.1"],
)
def test_public_and_private_addresses_pass_by_default(address: str) -> None:
    assert check(address)[0]


def test_private_ranges_can_be_refused() -> None:
    rules = AddressRules(deny_private=True)
    for address in ("10.0.0.5", "192.168.1.10", "172.16.0.1", "fd12::1", "100.64.0.1"):
        allowed, reason = check(address, rules=rules)
        assert not allowed
        assert "private" in reason
    assert check("93.184.216.34", rules=rules)[0]


def test_denied_networks_and_own_addresses() -> None:
    networks = parse_networks(["203.0.113.0/24", "2001:db8::/32"]).unwrap()
    rules = AddressRules(
        denied_networks=networks,
        local_addresses=frozenset({ipaddress.ip_address("198.51.100.7")}),
    )
    assert "denied network 203.0.113.0/24" in check("203.0.113.9", rules=rules)[1]
    assert not check("2001:db8::5", rules=rules)[0]
    assert "this host's own addresses" in check("198.51.100.7", rules=rules)[1]
    assert check("198.51.100.8", rules=rules)[0]


def test_parse_networks_failure() -> None:
    result = parse_networks(["10.0.0.1/8"])
    assert isinstance(result, Failure)
    assert "10.0.0.1/8" in result.failure().message


def test_listed_literal_overrides() -> None:
    listed = compile_allowlist(("127.0.0.1:8080", "[::1]"), ()).unwrap()
    assert check("127.0.0.1", 8080, allowlist=listed)[0]
    allowed, reason = check("127.0.0.1", 8081, allowlist=listed)
    assert not allowed
    assert "list 127.0.0.1:8081 to allow it" in reason
    assert check("::1", 1234, allowlist=listed)[0]


def test_deny_beats_a_listed_literal() -> None:
    rules = compile_allowlist(("127.0.0.1:8080",), ("127.0.0.1",)).unwrap()
    assert not check("127.0.0.1", 8080, allowlist=rules)[0]


def test_ipv6_is_never_inside_an_ipv4_range() -> None:
    networks = parse_networks(["0.0.0.0/1"]).unwrap()
    assert check("2606:2800:220:1::1", rules=AddressRules(denied_networks=networks))[0]


def test_host_interface_addresses_is_a_tuple_of_addresses() -> None:
    found = host_interface_addresses()
    assert isinstance(found, tuple)
    assert all(isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address) for a in found)
