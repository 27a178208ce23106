"""How a host-process backend limits memory and process count: the run's cgroup where one
can be made, else rlimits. One place, so process, bubblewrap and landlock say (and do) the
same thing."""

from __future__ import annotations

import sys

from mechasandbox.backends.capability_table import CapabilityTable
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.limits import Limits
from mechasandbox.limits.cgroup import CgroupManager
from mechasandbox.limits.rlimits import rlimits_for
from mechasandbox.runner.spec import RlimitSetting


def default_cgroups() -> CgroupManager | str:
    """This host's cgroup manager (its own pool of cgroups), or why there is none. A
    composition root makes one and shares it between its backends (`Core.cgroups`); a
    backend built directly makes its own."""
    if not sys.platform.startswith("linux"):
        return "cgroups exist only on Linux"
    return CgroupManager.probe()


def resource_support(
    cgroups: CgroupManager | str, uid: int, *, memory_rlimit: str = "RLIMIT_AS (address space)"
) -> CapabilityTable:
    """MEMORY and PROCESSES: by the cgroup, or by rlimits (RLIMIT_NPROC does not bind root
    and counts every process of the user, so it is reported for what it is)."""
    if isinstance(cgroups, CgroupManager):
        how = cgroups.describe()
        return CapabilityTable(enforced={Protection.MEMORY: how, Protection.PROCESSES: how})
    memory = CapabilityTable(
        enforced={Protection.MEMORY: memory_rlimit}, warnings=(f"no cgroup: {cgroups}",)
    )
    if uid == 0:
        why = "RLIMIT_NPROC does not apply to root and no cgroup"
        return memory | CapabilityTable(gaps={Protection.PROCESSES: why})
    how = "RLIMIT_NPROC (counts all of the user's processes)"
    return memory | CapabilityTable(enforced={Protection.PROCESSES: how})


def run_rlimits(limits: Limits, cgroups: CgroupManager | str) -> tuple[RlimitSetting, ...]:
    """The rlimits of a run; memory and process count are left to the cgroup when there is one."""
    by_cgroup = isinstance(cgroups, CgroupManager)
    return rlimits_for(limits, memory_by_rlimit=not by_cgroup, processes_by_rlimit=not by_cgroup)


def describe_cgroups(cgroups: CgroupManager | str) -> str:
    """For `mechasandbox policy`."""
    return cgroups.describe() if isinstance(cgroups, CgroupManager) else f"none ({cgroups})"
