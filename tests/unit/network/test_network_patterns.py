"""Pattern parsing and the allow/deny decision, including look-alike names."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Success

from mechasandbox.network.patterns import (
    Allowlist,
    HostPattern,
    compile_allowlist,
    parse_pattern,
    parse_target,
)


def allowlist(allow: tuple[str, ...], deny: tuple[str, ...] = ()) -> Allowlist:
    return compile_allowlist(allow, deny).unwrap()


def pattern(text: str) -> HostPattern:
    return parse_pattern(text).unwrap()


@pytest.mark.parametrize(
    ("text", "name", "wildcard", "port"),
    [
        ("example.com", "example.com", False, None),
        ("Example.COM.", "example.com", False, None),
        ("example.com:443", "example.com", False, 443),
        ("*.example.com", "example.com", True, None),
        ("*.Example.com.:8443", "example.com", True, 8443),
        ("xn--bcher-kva.de", "xn--bcher-kva.de", False, None),
        ("localhost", "localhost", False, None),
        ("_service.example.com", "_service.example.com", False, None),
    ],
)
def test_name_patterns_parse(text: str, name: str, wildcard: bool, port: int | None) -> None:
    parsed = pattern(text)
    assert (parsed.name, parsed.wildcard, parsed.port, parsed.address) == (
        name,
        wildcard,
        port,
        None,
    )
    assert parsed.source == text.strip()


@pytest.mark.parametrize(
    ("text", "address", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("10.1.2.3", "10.1.2.3", None),
        ("[::1]:8080", "::1", 8080),
        ("[0:0::1]", "::1", None),
    ],
)
def test_ip_patterns_parse(text: str, address: str, port: int | None) -> None:
    parsed = pattern(text)
    assert parsed.address == ipaddress.ip_address(address)
    assert parsed.port == port
    assert parsed.name is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty pattern"),
        ("*", "only allowed as the whole first label"),
        ("*.com", "single label 'com'"),
        ("*.co.uk", "public suffix"),
        ("*.github.io", "public suffix"),
        ("foo.*.example.com", "only allowed as the whole first label"),
        ("*example.com", "only allowed as the whole first label"),
        ("*.127.0.0.1", "wildcards do not apply to IP addresses"),
        ("bücher.de", "punycode"),
        ("127.1", "numeric address"),
        ("0x7f000001", "numeric address"),
        ("2130706433", "numeric address"),
        ("::1", "in brackets"),
        ("[::1", "missing ']'"),
        ("[::1]x", "unexpected text"),
        ("[example.com]:80", "only IPv6 addresses go in brackets"),
        ("[fe80::1%eth0]", "zone identifiers"),
        ("example.com:0", "out of range"),
        ("example.com:65536", "out of range"),
        ("example.com:http", "not a number"),
        ("exa mple.com", "not a valid host name"),
        ("-bad.example.com", "not a valid host name"),
        ("a..b", "not a valid host name"),
        ("a" * 64 + ".com", "not a valid host name"),
    ],
)
def test_bad_patterns_are_rejected_with_a_reason(text: str, expected: str) -> None:
    result = parse_pattern(text, source="--allow-domain")
    assert isinstance(result, Failure)
    error = result.failure()
    assert expected in error.message
    assert error.message.startswith("--allow-domain: pattern ")


def test_non_ascii_rejection_suggests_punycode() -> None:
    result = parse_pattern("bücher.de")
    assert isinstance(result, Failure)
    assert "xn--bcher-kva.de" in result.failure().message


def test_compile_reports_which_list_failed() -> None:
    result = compile_allowlist(("example.com",), ("*",))
    assert isinstance(result, Failure)
    assert result.failure().source == "--deny-domain"
    assert isinstance(compile_allowlist(("example.com",), ("evil.com",)), Success)


def test_wildcard_does_not_cover_the_apex() -> None:
    rules = allowlist(("*.example.com",))
    assert rules.decide("api.example.com", 443).allowed
    assert rules.decide("a.b.example.com", 443).allowed
    assert not rules.decide("example.com", 443).allowed


@pytest.mark.parametrize(
    "host",
    [
        "evil-example.com",
        "example.com.evil.net",
        "notexample.com",
        "example.co",
        "example.com.",  # apex, trailing dot
        "xexample.com",
    ],
)
def test_look_alikes_never_match(host: str) -> None:
    rules = allowlist(("*.example.com",))
    assert not rules.decide(host, 443).allowed


def test_exact_name_with_case_and_trailing_dot() -> None:
    rules = allowlist(("example.com",))
    assert rules.decide("EXAMPLE.com.", 80).allowed
    assert not rules.decide("www.example.com", 80).allowed


def test_port_restriction() -> None:
    rules = allowlist(("example.com:443",))
    assert rules.decide("example.com", 443).allowed
    decision = rules.decide("example.com", 80)
    assert not decision.allowed
    assert decision.reason == "not in the allowlist"


def test_deny_wins_over_allow() -> None:
    rules = allowlist(("*.corp.test",), ("secret.corp.test",))
    assert rules.decide("wiki.corp.test", 443).allowed
    decision = rules.decide("secret.corp.test", 443)
    assert not decision.allowed
    assert "denied by pattern 'secret.corp.test'" in decision.reason


def test_ip_literals_need_an_ip_pattern() -> None:
    rules = allowlist(("example.com", "127.0.0.1:8080", "[::1]:9090"))
    assert rules.decide("127.0.0.1", 8080).allowed
    assert not rules.decide("127.0.0.1", 8081).allowed
    assert rules.decide("[::1]", 9090).allowed
    assert rules.decide("0:0::1", 9090).allowed
    assert rules.decide("::ffff:127.0.0.1", 8080).allowed
    refused = rules.decide("93.184.216.34", 443)
    assert not refused.allowed
    assert "IP literals are refused" in refused.reason


def test_numeric_names_are_not_treated_as_names() -> None:
    rules = allowlist(("example.com",))
    for host in ("127.1", "0x7f.1", "2130706433", "0177.0.0.1"):
        decision = rules.decide(host, 80)
        assert not decision.allowed
        assert "numeric" in decision.reason


def test_parse_target() -> None:
    target = parse_target("Example.com:443").unwrap()
    assert (target.name, target.port, str(target)) == ("example.com", 443, "example.com:443")
    v6 = parse_target("[::1]:8080").unwrap()
    assert str(v6) == "[::1]:8080"
    assert parse_target("example.com", default_port=80).unwrap().port == 80
    assert isinstance(parse_target("example.com"), Failure)


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20).filter(
    lambda s: not s.startswith("-") and not s.endswith("-") and not s.isdigit()
)


@given(prefix=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20))
def test_prefix_glued_to_the_domain_never_matches(prefix: str) -> None:
    rules = allowlist(("*.example.com", "example.com"))
    assert not rules.decide(prefix + "example.com", 443).allowed


@given(suffix=st.lists(_label, min_size=1, max_size=3))
def test_domain_used_as_a_prefix_never_matches(suffix: list[str]) -> None:
    rules = allowlist(("*.example.com", "example.com"))
    host = "example.com." + ".".join(suffix)
    assert not rules.decide(host, 443).allowed


@given(sub=st.lists(_label, min_size=1, max_size=3), upper=st.booleans(), dot=st.booleans())
def test_every_subdomain_matches_the_wildcard(sub: list[str], upper: bool, dot: bool) -> None:
    rules = allowlist(("*.example.com",))
    host = ".".join(sub) + ".example.com" + ("." if dot else "")
    assert rules.decide(host.upper() if upper else host, 443).allowed
    assert not allowlist(("example.com",)).decide(host, 443).allowed


_CONFUSABLES = {"i": "\u0456", "o": "\u043e", "e": "\u0435", "a": "\u0430", "c": "\u0441"}


@given(data=st.data())
def test_homographs_never_match(data: st.DataObject) -> None:
    name = "github.com"
    positions = [i for i, ch in enumerate(name) if ch in _CONFUSABLES]
    index = data.draw(st.sampled_from(positions))
    host = name[:index] + _CONFUSABLES[name[index]] + name[index + 1 :]
    decision = allowlist(("github.com", "*.github.com")).decide(host, 443)
    assert not decision.allowed
    assert "not ASCII" in decision.reason
