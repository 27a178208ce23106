"""The pure rlimit applier: `Limits` -> the `setrlimit` calls the child makes before exec.

The spawn helper's child applies them (`runner.child`): it calls `resource.setrlimit` for
each setting between fork and exec.
"""

from __future__ import annotations

import math

from mechasandbox.domain.limits import Limits
from mechasandbox.runner.spec import RlimitSetting

# CPU: the soft limit delivers SIGXCPU (reported as cpu_limit); the hard limit one second
# later is SIGKILL for a command that ignores SIGXCPU.
_CPU_GRACE_S = 1


def rlimits_for(
    limits: Limits,
    *,
    memory_by_rlimit: bool = True,
    processes_by_rlimit: bool = True,
) -> tuple[RlimitSetting, ...]:
    """Settings for `limits`. Memory and process count can be left to a cgroup instead:
    RLIMIT_AS also counts reserved-but-unused address space, and RLIMIT_NPROC counts every
    process of the user, not just the run's, so a cgroup is the better tool where there is
    one."""
    settings = [RlimitSetting(resource="RLIMIT_CORE", soft=0, hard=0)]
    if limits.cpu_time_s is not None:
        seconds = max(1, math.ceil(limits.cpu_time_s))
        settings.append(
            RlimitSetting(resource="RLIMIT_CPU", soft=seconds, hard=seconds + _CPU_GRACE_S)
        )
    if limits.memory_bytes is not None and memory_by_rlimit:
        settings.append(
            RlimitSetting(resource="RLIMIT_AS", soft=limits.memory_bytes, hard=limits.memory_bytes)
        )
    if limits.max_processes is not None and processes_by_rlimit:
        settings.append(
            RlimitSetting(
                resource="RLIMIT_NPROC", soft=limits.max_processes, hard=limits.max_processes
            )
        )
    if limits.max_open_files is not None:
        settings.append(
            RlimitSetting(
                resource="RLIMIT_NOFILE", soft=limits.max_open_files, hard=limits.max_open_files
            )
        )
    if limits.max_file_size_bytes is not None:
        size = limits.max_file_size_bytes
        settings.append(RlimitSetting(resource="RLIMIT_FSIZE", soft=size, hard=size))
    return tuple(settings)


def describe(settings: tuple[RlimitSetting, ...]) -> str:
    """One line per setting, for `mechasandbox policy`."""
    return "\n".join(f"{s.resource} soft={s.soft} hard={s.hard}" for s in settings)
