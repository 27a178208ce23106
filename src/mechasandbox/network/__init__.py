"""Network allowlisting: pattern parsing, resolved-address checks and the egress proxy.

Sandboxed commands get no direct network access in `allowlist` mode; their only way out
is the proxy in `proxy/`, which decides each connection from the target host alone
(`patterns.py`) and then checks every address the name resolved to (`addresses.py`).
"""
