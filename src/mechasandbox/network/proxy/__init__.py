"""The egress proxy: HTTP (absolute-form and CONNECT) and SOCKS5 on one listener.

Sandboxes in `allowlist` mode have no route out; they reach this proxy through a unix
socket bind-mounted into the sandbox (and, optionally, a loopback TCP port guarded by a
per-run token). For every connection the proxy

1. decides from the requested target alone (`Allowlist`), never from anything the
   upstream says later, so an allowed host that is itself a proxy cannot steer *this*
   proxy elsewhere; bytes inside a tunnel are only bytes to that one upstream;
2. resolves an allowed name once through the injected `Resolver`, checks every address
   (`check_address`), and connects to an address that passed; there is no second
   lookup for a rebinding attacker to answer differently;
3. records each refusal as a `Violation(kind="network")` worded for the agent.

The protocol is chosen by the first byte: 0x05 is SOCKS5, anything else is HTTP.

Modules: `serving` (listeners, accept loop, `serve_proxy`, `RunningProxy`), `http` and
`socks` (the two handshakes), `upstream` (decide, resolve, check, connect), `relay`
(tunnels on the event loop) and `splice` (tunnels in a splice thread), `streams` (the
proxy's non-blocking sockets), `core` (per-run settings, counters and violations),
`resolver` (the injected name resolution), `settings` (the bounds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechasandbox.lazy import lazy_attributes

if TYPE_CHECKING:
    from mechasandbox.network.proxy.resolver import Resolver, SystemResolver
    from mechasandbox.network.proxy.serving import (
        InvalidProxyPolicyError,
        ProxyStats,
        RunningProxy,
        serve_proxy,
    )
    from mechasandbox.network.proxy.settings import ProxySettings

# Imported when first used (PEP 562): the settings and the resolver are built with every
# backend that may serve a proxy, the proxy itself only when a run serves one.
_LOCATIONS = {
    "InvalidProxyPolicyError": "serving",
    "ProxySettings": "settings",
    "ProxyStats": "serving",
    "Resolver": "resolver",
    "RunningProxy": "serving",
    "SystemResolver": "resolver",
    "serve_proxy": "serving",
}

__all__ = [
    "InvalidProxyPolicyError",
    "ProxySettings",
    "ProxyStats",
    "Resolver",
    "RunningProxy",
    "SystemResolver",
    "serve_proxy",
]


__getattr__ = lazy_attributes(__name__, _LOCATIONS)
