"""Allow/deny host patterns and the decision they make for one target (pure).

Grammar of a pattern (`--allow-domain` / `--deny-domain`)::

    example.com          exactly this name, any port
    example.com:443      exactly this name, port 443 only
    *.example.com        any name strictly *under* example.com (not example.com itself)
    127.0.0.1:8080       this IPv4 literal (port optional)
    [::1]:8080           this IPv6 literal, always in brackets (port optional)

Why the apex is excluded from `*.example.com`: a wildcard is a statement about
subdomains, and keeping the apex separate means a policy never grants more than it
reads as. List `example.com` as well when both are wanted.

Names are compared in their ASCII (on-the-wire) form: lower-cased, one trailing dot
removed. Non-ASCII names are rejected with their punycode spelling suggested, so a
homograph (`github.com` spelt with a Cyrillic `i`) can never be confused with the ASCII name;
`xn--` labels are plain ASCII and match literally. Wildcards match on whole labels only,
so `*.example.com` never matches `evil-example.com` or `example.com.evil.net`.

Names that a C resolver would read as numbers (`127.1`, `0x7f000001`, `2130706433`) are
rejected as names, because `getaddrinfo` would turn them into IP addresses and slip past
the IP-literal rules.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import ConfigInvalid

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_NAME = 253

# Multi-label public suffixes, plus hosting suffixes where anyone can publish under a
# subdomain: a wildcard over any of these lets a command reach hosts an attacker owns.
# Not the full Public Suffix List (no bundled data), only common cases.
PUBLIC_SUFFIXES: frozenset[str] = frozenset(
    {
        "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "net.uk", "ltd.uk", "plc.uk",
        "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp",
        "com.au", "net.au", "org.au", "edu.au", "gov.au", "co.nz", "org.nz", "net.nz",
        "com.br", "net.br", "org.br", "com.cn", "net.cn", "org.cn", "gov.cn",
        "co.in", "net.in", "org.in", "co.kr", "or.kr", "com.mx", "com.tr", "com.tw",
        "com.hk", "com.sg", "co.za", "co.il", "com.ar", "com.ua", "co.id", "com.my",
        "com.ph", "com.vn", "com.pl", "com.es", "co.th", "com.eg", "com.sa", "com.pk",
        "github.io", "gitlab.io", "herokuapp.com", "appspot.com", "vercel.app",
        "netlify.app", "pages.dev", "workers.dev", "r2.dev", "web.app", "firebaseapp.com",
        "azurewebsites.net", "cloudfront.net", "amazonaws.com", "s3.amazonaws.com",
        "blogspot.com", "ngrok.io", "ngrok-free.app", "trycloudflare.com", "fly.dev",
        "onrender.com", "glitch.me", "repl.co",
    }
)  # fmt: skip


@attrs.frozen(kw_only=True)
class Target:
    """Where a request wants to go: exactly one of `name` (normalised) or `address`."""

    name: str | None = None
    address: IPAddress | None = None
    port: int

    @property
    def host(self) -> str:
        """The host as it appears in an authority (`[v6]` in brackets)."""
        if self.address is None:
            return self.name or ""
        if self.address.version == 6:
            return f"[{self.address}]"
        return str(self.address)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.frozen(kw_only=True)
class HostPattern:
    """One parsed pattern. `name` is the exact name, or the suffix under a wildcard."""

    source: str
    name: str | None = None
    wildcard: bool = False
    address: IPAddress | None = None
    port: int | None = None

    def matches(self, target: Target) -> bool:
        if self.port is not None and self.port != target.port:
            return False
        if self.address is not None:
            return target.address is not None and _same_address(self.address, target.address)
        if target.name is None or self.name is None:
            return False
        if self.wildcard:
            return target.name.endswith("." + self.name)
        return target.name == self.name


@attrs.frozen(kw_only=True)
class Decision:
    allowed: bool
    reason: str


@attrs.frozen(kw_only=True)
class Allowlist:
    """Compiled allow and deny patterns; deny always wins."""

    allow: tuple[HostPattern, ...] = ()
    deny: tuple[HostPattern, ...] = ()

    def decide(self, host: str, port: int) -> Decision:
        """Decide for a raw host string (name, IPv4, or IPv6 with or without brackets)."""
        parsed = parse_host(host)
        if isinstance(parsed, str):
            return Decision(allowed=False, reason=parsed)
        name, address = parsed
        return self.decide_target(Target(name=name, address=address, port=port))

    def decide_target(self, target: Target) -> Decision:
        for pattern in self.deny:
            if pattern.matches(target):
                return Decision(allowed=False, reason=f"denied by pattern {pattern.source!r}")
        for pattern in self.allow:
            if pattern.matches(target):
                return Decision(allowed=True, reason=f"allowed by pattern {pattern.source!r}")
        if target.address is not None:
            return Decision(
                allowed=False,
                reason="IP literals are refused unless listed as IP:port in the allowlist",
            )
        return Decision(allowed=False, reason="not in the allowlist")

    def lists_address(self, address: IPAddress, port: int) -> bool:
        """True when this exact IP literal is allowed (and not denied) for `port`."""
        return self.decide_target(Target(address=address, port=port)).allowed


def _same_address(a: IPAddress, b: IPAddress) -> bool:
    return _unmapped(a) == _unmapped(b)


def _unmapped(address: IPAddress) -> IPAddress:
    """`::ffff:127.0.0.1` is 127.0.0.1 on the wire; compare and check it as such."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _punycode_hint(text: str) -> str:
    try:
        ascii_form = text.encode("idna").decode("ascii")
    except UnicodeError:
        return ""
    return f" (its punycode form is {ascii_form!r})"


def normalise_name(text: str) -> Result[str, str]:
    """Lower-case, drop one trailing dot, and validate a DNS name in ASCII form."""
    if not text.isascii():
        return Failure(
            f"{text!r} is not ASCII: write internationalised names in punycode "
            f"(xn--...){_punycode_hint(text)}"
        )
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return Failure("empty host name")
    if len(name) > _MAX_NAME:
        return Failure(f"host name longer than {_MAX_NAME} characters")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            return Failure(f"{text!r} is not a valid host name (bad label {label!r})")
    if labels[-1].isdigit() or _inet_aton_accepts(name):
        return Failure(
            f"{text!r} looks like a numeric address but is not a canonical IP literal "
            "(write IPv4 as a.b.c.d and IPv6 in brackets)"
        )
    return Success(name)


def _inet_aton_accepts(name: str) -> bool:
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True


def parse_host(text: str) -> tuple[str | None, IPAddress | None] | str:
    """(name, None) or (None, address), or a reason string when the host is invalid."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" in bare:
        return _parse_ipv6(bare, text)
    if bare != text:
        return f"{text!r}: only IPv6 addresses go in brackets"
    try:
        return None, ipaddress.IPv4Address(text)
    except ValueError:
        pass
    name = normalise_name(text)
    if isinstance(name, Failure):
        return str(name.failure())
    return name.unwrap(), None


def _parse_ipv6(bare: str, text: str) -> tuple[str | None, IPAddress | None] | str:
    if "%" in bare:
        return f"{text!r}: IPv6 zone identifiers are not supported"
    try:
        return None, ipaddress.IPv6Address(bare)
    except ValueError:
        return f"{text!r} is not a valid IPv6 address"


def split_authority(text: str) -> Result[tuple[str, int | None], str]:
    """Split `host`, `host:port`, `[v6]` or `[v6]:port`; the host keeps its brackets."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return Failure(f"{text!r}: missing ']' after an IPv6 address")
        host, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            return Failure(f"{text!r}: unexpected text after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        return Failure(f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:8080")
    else:
        host, colon, after = text.partition(":")
        port_text = after if colon else None
    if port_text is None:
        return Success((host, None))
    port = parse_port(port_text)
    if isinstance(port, str):
        return Failure(f"{text!r}: {port}")
    return Success((host, port))


def parse_port(text: str) -> int | str:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return f"port {text!r} is not a number"
    port = int(text)
    if not 1 <= port <= 65535:
        return f"port {port} is out of range 1-65535"
    return port


def parse_target(text: str, *, default_port: int | None = None) -> Result[Target, str]:
    """Parse a request authority (`host:port`) into a `Target`; the port may default."""
    return split_authority(text).bind(
        lambda parts: _target_from_parts(text, parts, default_port=default_port)
    )


def _target_from_parts(
    text: str, parts: tuple[str, int | None], *, default_port: int | None
) -> Result[Target, str]:
    host_text, port = parts
    if port is None:
        if default_port is None:
            return Failure(f"{text!r}: a port is required")
        port = default_port
    host = parse_host(host_text)
    if isinstance(host, str):
        return Failure(host)
    name, address = host
    return Success(Target(name=name, address=address, port=port))


def _too_wide(suffix: str) -> str | None:
    if "." not in suffix:
        return f"a wildcard over the single label {suffix!r} covers a whole top-level domain"
    if suffix in PUBLIC_SUFFIXES:
        return f"{suffix!r} is a public suffix: anyone can register or publish a name under it"
    return None


def parse_pattern(
    text: str, *, source: str = "--allow-domain"
) -> Result[HostPattern, ConfigInvalid]:
    """Parse one allow/deny pattern; the failure names the pattern and what is wrong."""
    stripped = text.strip()
    parsed = (
        split_authority(stripped).bind(_pattern_from_parts)
        if stripped
        else Failure("empty pattern")
    )
    return parsed.map(lambda pattern: attrs.evolve(pattern, source=stripped)).alt(
        lambda problem: ConfigInvalid(problem=f"pattern {text!r}: {problem}", source=source)
    )


def _pattern_from_parts(parts: tuple[str, int | None]) -> Result[HostPattern, str]:
    host_text, port = parts
    wildcard = host_text.startswith("*.")
    if wildcard:
        host_text = host_text[2:]
    if "*" in host_text:
        return Failure(
            "'*' is only allowed as the whole first label ('*.example.com'); "
            "a bare '*' would allow everything: use --network full for that"
        )
    host = parse_host(host_text)
    if isinstance(host, str):
        return Failure(host)
    name, address = host
    if address is not None:
        if wildcard:
            return Failure("wildcards do not apply to IP addresses")
        return Success(HostPattern(source="", address=address, port=port))
    assert name is not None
    if wildcard and (problem := _too_wide(name)):
        return Failure(f"too wide: {problem}; name the domain you need, e.g. '*.example.{name}'")
    return Success(HostPattern(source="", name=name, wildcard=wildcard, port=port))


def parse_patterns(
    texts: Iterable[str], *, source: str = "--allow-domain"
) -> Result[tuple[HostPattern, ...], ConfigInvalid]:
    """All patterns, or the first one that fails to parse."""
    parsed: list[HostPattern] = []
    for text in texts:
        result = parse_pattern(text, source=source)
        if isinstance(result, Failure):
            return Failure(result.failure())
        parsed.append(result.unwrap())
    return Success(tuple(parsed))


def compile_allowlist(
    allow: Iterable[str], deny: Iterable[str]
) -> Result[Allowlist, ConfigInvalid]:
    """Compile the policy's `allow` and `deny` strings (as in `NetworkPolicy`)."""
    return parse_patterns(allow, source="--allow-domain").bind(
        lambda allowed: parse_patterns(deny, source="--deny-domain").map(
            lambda denied: Allowlist(allow=allowed, deny=denied)
        )
    )
