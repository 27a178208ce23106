"""Pure parsing of proxy request heads: strict, because the proxy trusts nothing it reads.

Only what a forward proxy needs is parsed: the request line, header fields, the target
of a CONNECT (authority form) or of a forwarded request (absolute `http://` form), and
Proxy-Authorization. Anything ambiguous (bare CR or LF, folded headers, user info in
the URL, a space in a header name) is refused rather than guessed at, so the host the
proxy decides on is always the host it connects to.
"""

from __future__ import annotations

import base64
import binascii
import re

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.network.patterns import Target, parse_target

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSIONS = frozenset({"HTTP/1.0", "HTTP/1.1"})

# Hop-by-hop fields (RFC 9110 7.6.1) plus the proxy's own credentials: never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "host",
    }
)


@attrs.frozen(kw_only=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        """The first value of a header field (names compare case-insensitively)."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@attrs.frozen(kw_only=True)
class ForwardTarget:
    """An absolute-form request: where to connect and what path to ask for."""

    target: Target
    path: str
    authority: str


def parse_request_head(head: bytes) -> Result[RequestHead, str]:
    """Parse a request head (without the final blank line)."""
    lines = head.split(b"\r\n")
    while lines and not lines[0]:
        lines.pop(0)  # RFC 9112 2.2: a server may ignore empty lines before the request
    if not lines:
        return Failure("empty request")
    if any(b"\r" in line or b"\n" in line for line in lines):
        return Failure("bare CR or LF in the request head")
    return _parse_request_line(lines[0]).bind(
        lambda request: _parse_headers(lines[1:]).map(
            lambda headers: attrs.evolve(request, headers=headers)
        )
    )


def _parse_request_line(line: bytes) -> Result[RequestHead, str]:
    parts = line.decode("ascii").split(" ") if line.isascii() else []
    if len(parts) != 3:
        return Failure(f"malformed request line {line[:200]!r}")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        return Failure(f"invalid method {method[:50]!r}")
    if version not in _VERSIONS:
        return Failure(f"unsupported HTTP version {version[:50]!r}")
    if not target or not target.isprintable():
        return Failure("invalid request target")
    return Success(RequestHead(method=method, target=target, version=version))


def _parse_headers(lines: list[bytes]) -> Result[tuple[tuple[str, str], ...], str]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            return Failure("folded header lines are not accepted")
        name, colon, value = line.partition(b":")
        text_name = name.decode("latin-1")
        if not colon or not _TOKEN.fullmatch(text_name):
            return Failure(f"malformed header line {line[:100]!r}")
        headers.append((text_name, value.decode("latin-1").strip(" \t")))
    return Success(tuple(headers))


def parse_absolute_url(url: str) -> Result[ForwardTarget, str]:
    """Split `http://host[:port]/path?query` into where to connect and the origin form."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return Failure(
            f"{url[:200]!r} is not an absolute http:// URL "
            "(this is a proxy: send absolute-form requests or CONNECT)"
        )
    if scheme.lower() != "http":
        return Failure(f"scheme {scheme[:20]!r} is not supported here (use CONNECT for https)")
    end = len(rest)
    for delimiter in "/?#":
        index = rest.find(delimiter)
        if index >= 0:
            end = min(end, index)
    authority, path = rest[:end], rest[end:]
    if "@" in authority:
        return Failure("user information in the URL is not accepted")
    path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    return parse_target(authority, default_port=80).map(
        lambda target: ForwardTarget(target=target, path=path, authority=authority.lower())
    )


def forward_head(request: RequestHead, forward: ForwardTarget) -> bytes:
    """The head sent upstream: origin-form target, Host set from the URL, one request.

    Host is rewritten from the URL (RFC 9112 3.2.2), so a client cannot name one host to
    the proxy and another to a virtual-hosting upstream. `Connection: close` keeps the
    exchange to one request; the rest of the stream is relayed as bytes to the same host.
    """
    listed: set[str] = set()
    for key, value in request.headers:
        if key.lower() in ("connection", "proxy-connection"):
            listed.update(token.strip().lower() for token in value.split(","))
    lines = [f"{request.method} {forward.path} {request.version}", f"Host: {forward.authority}"]
    lines.extend(
        f"{key}: {value}"
        for key, value in request.headers
        if key.lower() not in _HOP_BY_HOP and key.lower() not in listed
    )
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def basic_password(header: str | None) -> bytes | None:
    """The password from `Basic base64(user:password)`, or None when absent or malformed."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _, colon, password = decoded.partition(b":")
    return password if colon else None
