"""Per-run state shared by every connection: settings, policy, counters and violations."""

from __future__ import annotations

import hmac
import threading

import anyio
import attrs

from mechasandbox.domain.policy import NetworkPolicy
from mechasandbox.domain.result import Violation
from mechasandbox.network.addresses import AddressRules
from mechasandbox.network.patterns import Allowlist
from mechasandbox.network.proxy.resolver import Resolver
from mechasandbox.network.proxy.settings import ProxySettings


@attrs.define
class Counters:
    accepted: int = 0
    active: int = 0
    over_limit: int = 0
    refused: int = 0
    tunnels: int = 0
    spliced: int = 0
    upstream_failures: int = 0
    idle_closed: int = 0
    internal_errors: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    violations_dropped: int = 0


class ProxyCore:
    """Per-run state shared by every connection: policy, counters and violations."""

    def __init__(
        self,
        *,
        policy: NetworkPolicy,
        allowlist: Allowlist,
        rules: AddressRules,
        resolver: Resolver,
        settings: ProxySettings,
        token: str,
    ) -> None:
        self.mode = policy.mode
        self.allowlist = allowlist
        self.rules = rules
        self.resolver = resolver
        self.settings = settings
        self.token = token.encode()
        self.counters = Counters()
        self.counters_lock = threading.Lock()
        # One splice thread per tunnel at most; anyio's default limiter (40) would make
        # tunnels wait for each other.
        self.relay_threads = anyio.CapacityLimiter(settings.max_connections)
        self.violations: list[Violation] = []

    def refuse(self, detail: str) -> None:
        self.counters.refused += 1
        if len(self.violations) >= self.settings.max_violations:
            self.counters.violations_dropped += 1
            return
        self.violations.append(Violation(kind="network", detail=detail))

    def token_matches(self, password: bytes | None) -> bool:
        return password is not None and hmac.compare_digest(password, self.token)

    def limit_refusal(self) -> str:
        return (
            f"too many open proxy connections (limit {self.settings.max_connections}); "
            "retry when some have finished"
        )

    def add_bytes(self, size: int, up: bool) -> None:
        """Count relayed bytes; splice threads count too, hence the lock."""
        with self.counters_lock:
            if up:
                self.counters.bytes_up += size
            else:
                self.counters.bytes_down += size

    def count_idle_close(self) -> None:
        with self.counters_lock:
            self.counters.idle_closed += 1
