"""How a warm pool behaves (`PoolSettings`), and why it refuses what it cannot do."""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs

from mechasandbox.domain.errors import BackendUnavailable

# Why pooled runs have no allowlist bridge: a keeper container outlives the runs, but each
# run's proxy is a fresh unix socket in its own private directory, and a bind mount cannot
# be added to a running container; the bridge's socat would also have to be started per exec
# and outlive none. Strict allowlist runs are refused; best-effort ones have no network.
POOLED_ALLOWLIST = (
    "not bridged in the warm pool: each run's proxy socket is new, and a running "
    "container cannot get a new mount; use the backend without a pool for allowlist runs "
    "(best-effort runs here have no network at all)"
)
# gVisor applies the container's seccomp profile to its first process and what descends from
# it: a command that comes in by `exec` runs without it (setuid files, io_uring, unshare all
# allowed again); and its /proc lets a command write a session agent's channel (see
# `session.GVISOR_NO_SESSIONS`): neither keepers nor ready sessions can serve it.
GVISOR_UNSUPPORTED = (
    "the warm pool cannot run under gVisor (runsc): a keeper's `exec` gets no seccomp "
    "filter there, and a ready session's command can write its agent's channel; run "
    "without pool_size"
)
# `podman run --detach` leaves conmon behind to keep the container; the process runner kills
# everything a run leaves behind (its helper is the subreaper), so the container stops.
PODMAN_UNSUPPORTED = (
    "the warm pool on podman serves runs on ready sessions only (the session agent built: "
    "`mechasandbox build-shim`): its keepers would need podman's conmon to outlive "
    "`podman run --detach`, and the process runner kills whatever a run leaves behind"
)
# A keeper runs each command by `exec`, which cannot kill what the command leaves running:
# reused, such a process could arm a repository of the workspace after the disarm that
# follows its run (the host's git would then run its command). On a ready session the agent
# kills the command's whole tree before the run returns.
REUSE_NEEDS_AGENT = (
    "after_use reuse needs the session agent (`mechasandbox build-shim`): a container reused "
    "without it keeps what a command left running, which could arm a repository of the "
    "workspace after the run's disarm"
)


class AfterUse(enum.Enum):
    """What happens to a container after a command ran in it."""

    DISCARD = "discard"  # removed; a fresh one is started in the background
    REUSE = "reuse"  # handed to the next command: its files carry over, not its processes


class WhenExhausted(enum.Enum):
    """What `run` does when every container of its key is busy and the pool is full."""

    WAIT = "wait"  # wait up to `wait_timeout_s` for one, then PoolExhausted
    FAIL = "fail"  # PoolExhausted at once


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen(kw_only=True)
class PoolSettings:
    """`size`: containers per key in use at once, at most; with `AfterUse.REUSE` also the
    key's containers in all (idle + busy + starting); with `AfterUse.DISCARD` (the default)
    a container taken for a run is replaced at once, so the key keeps `size` ready or
    starting besides those in use (2 x `size` at most); `max_keys`: keys kept
    at once (the least recently used key's idle containers go first); `idle_timeout_s`:
    an idle container is stopped after this long; `health_check_after_s`: a container
    idle for longer is checked (its state on the API socket, else `exec true`) before it is
    handed out; `max_age_s`: a container started longer ago than this is not handed out
    again (with `REUSE`, what commands left in its /tmp, which its memory limit counts, does
    not pile up for ever): it is removed and a fresh one started, never during a command."""

    size: int = attrs.field(default=2, validator=_positive)
    after_use: AfterUse = AfterUse.DISCARD
    when_exhausted: WhenExhausted = WhenExhausted.WAIT
    wait_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    idle_timeout_s: float = attrs.field(default=300.0, validator=_positive)
    health_check_after_s: float = 10.0
    max_keys: int = attrs.field(default=4, validator=_positive)
    max_age_s: float = attrs.field(default=3600.0, validator=_positive)


@attrs.frozen(kw_only=True)
class PoolExhausted(BackendUnavailable):
    """`size` containers of the key are in use, or none is ready (all starting), and the
    pool waited as long as its settings say."""

    kind: ClassVar[str] = "pool_exhausted"
    size: int = 0
    waited_s: float = 0.0
