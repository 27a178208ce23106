"""Resource limits of one run: a pure value, validated at construction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Upper bounds that reject absurd values early (a typo such as `--memory 5t` must not
# silently mean "unlimited"). Each is generous for a coding agent's command.
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_MEMORY_BYTES = 1024 * GIB
MAX_PROCESSES = 1_000_000
MAX_OPEN_FILES = 1_048_576
MAX_OUTPUT_BYTES = 1 * GIB
# Fewer open files than any backend needs to start a command at all. Measured on Linux for
# `true`: the process backend starts with 4, landlock with 5, bubblewrap with 8 (13 with
# the allowlist proxy's descriptors), docker and podman (runc, crun) with 12 to 13: the
# limit applies to the launcher as much as to the command. Below it a run can only fail,
# as `spawn_failed` or `backend_failed` from deep inside, so the configuration refuses it
# up front (`config.validation`, for files, options and `Sandbox`). `Limits` itself takes
# any positive count, so that a backend's own set-up can be tested at its edge.
MIN_OPEN_FILES = 16


def _positive_or_none(limit: float) -> Callable[[object, Any, Any], None]:
    def check(_instance: object, attribute: Any, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{attribute.name} must be a number, got {value!r}")
        if not value > 0:
            raise ValueError(f"{attribute.name} must be positive, got {value!r}")
        if value > limit:
            raise ValueError(f"{attribute.name} = {value!r} exceeds the maximum {limit!r}")

    return check


@attrs.frozen(kw_only=True)
class Limits:
    """What one run may consume. `None` means "no limit of this kind"."""

    timeout_s: float | None = attrs.field(default=120.0, validator=_positive_or_none(MAX_TIMEOUT_S))
    cpu_time_s: float | None = attrs.field(default=None, validator=_positive_or_none(MAX_TIMEOUT_S))
    memory_bytes: int | None = attrs.field(
        default=4 * GIB, validator=_positive_or_none(MAX_MEMORY_BYTES)
    )
    max_processes: int | None = attrs.field(default=512, validator=_positive_or_none(MAX_PROCESSES))
    max_open_files: int | None = attrs.field(
        default=1024, validator=_positive_or_none(MAX_OPEN_FILES)
    )
    max_file_size_bytes: int | None = attrs.field(
        default=1 * GIB, validator=_positive_or_none(MAX_MEMORY_BYTES)
    )
    max_output_bytes: int = attrs.field(
        default=4 * MIB, validator=_positive_or_none(MAX_OUTPUT_BYTES)
    )
