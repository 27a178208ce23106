"""Environment variables that point common tools at the proxy (pure).

Tools disagree on what they read: curl honours only lower-case `http_proxy` (upper-case
`HTTP_PROXY` is ignored for CGI safety) but both cases of the others; Python (pip,
requests, urllib) reads either case; npm reads its own `npm_config_*`; git reads
`http.proxy` from its configuration, which `GIT_CONFIG_COUNT/KEY/VALUE` inject without a
file. So every spelling is set.

`NO_PROXY` is set empty on purpose: an inherited `NO_PROXY=localhost,...` would send
loopback traffic around the proxy. Inside a sandbox there is nothing to reach around it;
the proxy itself refuses loopback unless the user listed an `IP:port`.
"""

from __future__ import annotations


def proxy_environment(url: str, *, socks_url: str | None = None) -> dict[str, str]:
    """Variables for a command whose proxy is `url` (e.g. `http://127.0.0.1:3128`).

    `socks_url` (e.g. `socks5h://127.0.0.1:3128`) is used for `ALL_PROXY` when given; the
    proxy speaks HTTP and SOCKS5 on the same port, but not every tool reading ALL_PROXY
    understands SOCKS, so the HTTP URL is the default.
    """
    every = socks_url or url
    env: dict[str, str] = {}
    for name, value in (
        ("http_proxy", url),
        ("https_proxy", url),
        ("all_proxy", every),
        ("no_proxy", ""),
    ):
        env[name] = value
        env[name.upper()] = value
    env.update(
        {
            "PIP_PROXY": url,
            "npm_config_proxy": url,
            "npm_config_https_proxy": url,
            "npm_config_noproxy": "",
            "YARN_HTTP_PROXY": url,
            "YARN_HTTPS_PROXY": url,
            "NODE_USE_ENV_PROXY": "1",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.proxy",
            "GIT_CONFIG_VALUE_0": url,
        }
    )
    return env
