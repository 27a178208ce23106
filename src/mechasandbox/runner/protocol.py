"""What every process runner is: the protocol backends are written against. No event loop
and no spawning here (see `runner`, `blocking`, `submission`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from returns.result import Result

from mechasandbox.domain.errors import SpawnFailed
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec


class ProcessRunner(Protocol):
    """Spawns one process per call and reports how it ended. Injected into every backend."""

    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]: ...

    def close(self) -> None: ...


@runtime_checkable
class PreparesCgroups(Protocol):
    """A runner that can start the child of a later run ahead of time, already inside the
    cgroup it will use (joining one can take a kernel grace period, 5-15 ms on cgroup v1).
    Each group: the cgroup.procs files of one run's cgroup (one per v1 hierarchy). `like`:
    the run the next ones will resemble (same policy), so that the child can apply ahead
    what depends on the policy alone (see `ChildHook.ahead`). A hint: a runner may ignore
    it. A runner of this kind also honours `SpawnSpec.prepare_after` (the same hint, carried
    by the run itself: `execute_spec` uses that)."""

    def prepare_cgroups(
        self, groups: Sequence[tuple[str, ...]], like: SpawnSpec | None = None
    ) -> None: ...
