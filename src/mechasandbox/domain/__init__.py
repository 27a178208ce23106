"""Pure values: requests, policies, limits, capabilities, results and errors."""

from mechasandbox.domain.capabilities import Capabilities, Protection, required_protections
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    ConfigInvalid,
    CpuLimit,
    EngineLost,
    FileSizeLimit,
    LimitExceeded,
    MemoryLimit,
    PolicyUnsupported,
    ProcessLimit,
    SandboxError,
    SpawnFailed,
    Timeout,
    partial_result,
)
from mechasandbox.domain.limits import GIB, KIB, MIB, Limits
from mechasandbox.domain.policy import (
    Enforcement,
    EnvironmentPolicy,
    FilesystemPolicy,
    HostProcesses,
    NetworkMode,
    NetworkPolicy,
    Policy,
)
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult, Usage, Violation

__all__ = [
    "GIB",
    "KIB",
    "MIB",
    "BackendFailed",
    "BackendUnavailable",
    "Capabilities",
    "ConfigInvalid",
    "CpuLimit",
    "Enforcement",
    "EngineLost",
    "EnvironmentPolicy",
    "FileSizeLimit",
    "FilesystemPolicy",
    "HostProcesses",
    "LimitExceeded",
    "Limits",
    "MemoryLimit",
    "NetworkMode",
    "NetworkPolicy",
    "Policy",
    "PolicyUnsupported",
    "ProcessLimit",
    "Protection",
    "RunRequest",
    "RunResult",
    "SandboxError",
    "SpawnFailed",
    "Timeout",
    "Usage",
    "Violation",
    "partial_result",
    "required_protections",
]
