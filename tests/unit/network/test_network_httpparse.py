"""Request-head parsing, forwarding rewrite and the proxy environment."""

from __future__ import annotations

import base64

import pytest
from returns.result import Failure

from mechasandbox.network.environment import proxy_environment
from mechasandbox.network.httpparse import (
    basic_password,
    forward_head,
    parse_absolute_url,
    parse_request_head,
)


def test_parse_request_head() -> None:
    head = parse_request_head(
        b"\r\nGET http://a.test/x HTTP/1.1\r\nHost: a.test\r\nX-Y:  z \r\n"[:-2]
    ).unwrap()
    assert (head.method, head.target, head.version) == ("GET", "http://a.test/x", "HTTP/1.1")
    assert head.header("x-y") == "z"
    assert head.header("missing") is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "empty request"),
        (b"GET / HTTP/1.1\nHost: x", "bare CR or LF"),
        (b"GET /  HTTP/1.1", "malformed request line"),
        (b"G@T / HTTP/1.1", "invalid method"),
        (b"GET / HTTP/2", "unsupported HTTP version"),
        (b"GET / HTTP/1.1\r\n folded", "folded header"),
        (b"GET / HTTP/1.1\r\nBad Name: x", "malformed header line"),
        (b"GET / HTTP/1.1\r\nNoColon", "malformed header line"),
        (b"\x16\x03\x01\x02\x00 garbage", "malformed request line"),
    ],
)
def test_bad_heads(raw: bytes, problem: str) -> None:
    result = parse_request_head(raw)
    assert isinstance(result, Failure)
    assert problem in result.failure()


def test_absolute_url() -> None:
    forward = parse_absolute_url("http://API.test:8080/a/b?c=d#frag").unwrap()
    assert str(forward.target) == "api.test:8080"
    assert forward.path == "/a/b?c=d"
    assert forward.authority == "api.test:8080"
    assert parse_absolute_url("http://a.test?q").unwrap().path == "/?q"
    assert parse_absolute_url("http://[::1]:81/").unwrap().target.port == 81


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("/relative", "not an absolute http:// URL"),
        ("https://a.test/", "use CONNECT"),
        ("http://allowed.test@evil.test/", "user information"),
        ("http://evil.test:99999/", "out of range"),
    ],
)
def test_bad_absolute_urls(url: str, problem: str) -> None:
    result = parse_absolute_url(url)
    assert isinstance(result, Failure)
    assert problem in result.failure()


def test_forward_head_rewrites_host_and_drops_hop_by_hop() -> None:
    request = parse_request_head(
        b"POST http://a.test/p HTTP/1.1\r\nHost: evil.test\r\nProxy-Authorization: Basic x\r\n"
        b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nContent-Length: 2"
    ).unwrap()
    out = forward_head(request, parse_absolute_url(request.target).unwrap())
    assert out == (
        b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    )


def test_basic_password() -> None:
    encoded = base64.b64encode(b"user:s3cret:x").decode()
    assert basic_password(f"Basic {encoded}") == b"s3cret:x"
    assert basic_password(None) is None
    assert basic_password("Bearer abc") is None
    assert basic_password("Basic !!!") is None
    assert basic_password("Basic " + base64.b64encode(b"nocolon").decode()) is None


def test_proxy_environment() -> None:
    env = proxy_environment("http://127.0.0.1:3128")
    for name in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "PIP_PROXY",
        "npm_config_proxy",
        "npm_config_https_proxy",
    ):
        assert env[name] == "http://127.0.0.1:3128", name
    assert env["NO_PROXY"] == env["no_proxy"] == ""
    assert env["GIT_CONFIG_COUNT"] == "1"
    assert env["GIT_CONFIG_KEY_0"] == "http.proxy"
    assert env["GIT_CONFIG_VALUE_0"] == "http://127.0.0.1:3128"
    socks = proxy_environment("http://127.0.0.1:3128", socks_url="socks5h://127.0.0.1:3128")
    assert socks["ALL_PROXY"] == "socks5h://127.0.0.1:3128"
    assert socks["HTTPS_PROXY"] == "http://127.0.0.1:3128"
