"""Waiting for the warm children the spawn helper offers to a client, for tests that drive
the offer/claim protocol by hand (see `runner.client`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from mechasandbox.runner.client import SpawnHelperClient, _Offer


def offers(
    client: SpawnHelperClient, wanted: Callable[[_Offer], bool] = lambda _: True, *, take: bool
) -> list[_Offer]:
    """The offers the client holds that are `wanted`, once there is one (waited for, up to
    10 s); `take`: the first of them is taken out of the client's hands (so that no run of
    its own gets it) and returned alone."""
    deadline = time.monotonic() + 10
    while True:
        with client._lock:
            assert client._control is not None
            client._collect_offers(client._control)
            for group in client._offers.values():
                found = [offer for offer in group if wanted(offer)]
                if found and take:
                    group.remove(found[0])
                    return found[:1]
            held = [o for group in client._offers.values() for o in group if wanted(o)]
        if held:
            return held
        assert time.monotonic() < deadline, "no such warm child was offered"
        time.sleep(0.005)
