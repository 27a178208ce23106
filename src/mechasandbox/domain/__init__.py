"""Pure values: requests, policies, limits, capabilities, results and errors."""

from mechasandbox.domain.capabilities import Capabilities, Protection, required_protections
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    ConfigInvalid,
    CpuLimit,
    FileSizeLimit,
    Interrupted,
    LimitExceeded,
    MemoryLimit,
    PolicyUnsupported,
    ProcessLimit,
    SandboxError,
    SpawnFailed,
    Timeout,
    partial_result,
)
from mechasandbox.domain.events import (
    OutputEvent,
    ResultEvent,
    RunEvent,
    ViolationEvent,
    WarningEvent,
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
from mechasandbox.domain.request import RunRequest, StreamedInput
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
    "EnvironmentPolicy",
    "FileSizeLimit",
    "FilesystemPolicy",
    "HostProcesses",
    "Interrupted",
    "LimitExceeded",
    "Limits",
    "MemoryLimit",
    "NetworkMode",
    "NetworkPolicy",
    "OutputEvent",
    "Policy",
    "PolicyUnsupported",
    "ProcessLimit",
    "Protection",
    "ResultEvent",
    "RunEvent",
    "RunRequest",
    "RunResult",
    "SandboxError",
    "SpawnFailed",
    "StreamedInput",
    "Timeout",
    "Usage",
    "Violation",
    "ViolationEvent",
    "WarningEvent",
    "partial_result",
    "required_protections",
]
