"""The `process` backend: rlimits, umask, session, timeout, whole-tree teardown. No isolation.

It confines neither the filesystem nor the network, and host processes stay visible; its
capabilities say so, so a strict policy refuses it and best-effort lists each gap.
"""

from __future__ import annotations

import functools

import attrs
from returns.result import Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan
from mechasandbox.backends.capability_table import RLIMITS, RUNNER, CapabilityTable
from mechasandbox.backends.resources import default_cgroups, resource_support, run_rlimits
from mechasandbox.backends.template import (
    Job,
    Launch,
    SpawningBackend,
    command_sections,
    direct_spec,
    limit_sections,
)
from mechasandbox.domain.capabilities import Capabilities, Protection
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import Policy
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.runner.protocol import ProcessRunner

_NO_ISOLATION = (
    RUNNER
    | RLIMITS
    | CapabilityTable(
        gaps={
            Protection.FILESYSTEM_READ: "no filesystem isolation: the command reads what you can",
            Protection.FILESYSTEM_WRITE: "no filesystem isolation: the command writes where "
            "you can",
            Protection.PROTECTED_PATHS: "no filesystem isolation",
            Protection.NETWORK_NONE: "no network isolation",
            Protection.NETWORK_ALLOWLIST: "no network isolation",
            Protection.NAMED_UNIX_SOCKETS: "every host unix socket is reachable",
            Protection.PID_ISOLATION: "host processes can be signalled and traced",
            Protection.HOST_PROCESSES_HIDDEN: "host processes are visible",
        }
    )
)
_SUBREAPER = CapabilityTable(
    enforced={Protection.TREE_TEARDOWN: "spawn helper is child subreaper; kills the whole tree"}
)
_GROUP_ONLY = CapabilityTable(
    gaps={Protection.TREE_TEARDOWN: "process group only: a setsid'd child can escape"}
)


@functools.lru_cache(maxsize=8)
def _capabilities(linux: bool, cgroups: CgroupManager | str, uid: int) -> Capabilities:
    """Computed once per host (every run probes)."""
    teardown = _SUBREAPER if linux else _GROUP_ONLY
    memory = "RLIMIT_AS (address space; best-effort on macOS)"
    resources = resource_support(cgroups, uid, memory_rlimit=memory)
    return (_NO_ISOLATION | teardown | resources).capabilities("process")


@attrs.frozen(kw_only=True)
class ProcessBackend(SpawningBackend[None, None]):
    runner: ProcessRunner
    cgroups: CgroupManager | str = attrs.field(factory=default_cgroups)
    host: HostContext = attrs.field(factory=HostContext.current)

    @property
    def name(self) -> str:
        return "process"

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        linux = self.host.platform.startswith("linux")
        return Success(_capabilities(linux, self.cgroups, self.host.uid))

    def compile(self, job: Job, setting: None) -> Result[Launch[None], SandboxError]:
        rlimits = run_rlimits(job.policy.limits, self.cgroups)
        return direct_spec(job, rlimits=rlimits).map(
            lambda spec: Launch(spec=spec, compiled=None, cgroups=self.cgroups)
        )

    def plan_setting(self, policy: Policy) -> None:
        return None

    def describe(self, job: Job, launch: Launch[None], setting: None) -> LaunchPlan:
        return LaunchPlan(
            backend=self.name,
            sections=command_sections(launch.spec) + limit_sections(launch.spec, launch.cgroups),
        )
