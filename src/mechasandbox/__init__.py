"""mechasandbox: run commands written by AI coding agents under an OS-level sandbox.

The public API is imported lazily (PEP 562) so that `python -m mechasandbox` and the spawn
helper start fast; type checkers see the real imports.
"""

from __future__ import annotations

from mechasandbox.lazy import lazy_attributes

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing `typing` costs every start
if TYPE_CHECKING:
    from mechasandbox.config.changes import PolicyChanges
    from mechasandbox.containers import Application
    from mechasandbox.domain import (
        BackendFailed,
        BackendUnavailable,
        Capabilities,
        ConfigInvalid,
        CpuLimit,
        Enforcement,
        EngineLost,
        EnvironmentPolicy,
        FileSizeLimit,
        FilesystemPolicy,
        Interrupted,
        Limits,
        MemoryLimit,
        NetworkMode,
        NetworkPolicy,
        NodeLost,
        OutputEvent,
        Policy,
        PolicyUnsupported,
        ProcessLimit,
        Protection,
        ResultEvent,
        RunEvent,
        RunRequest,
        RunResult,
        SandboxError,
        SpawnFailed,
        StreamedInput,
        Terminal,
        Timeout,
        Usage,
        Violation,
        ViolationEvent,
        WarningEvent,
    )
    from mechasandbox.sandbox import Sandbox

_LOCATIONS = {
    "Application": "mechasandbox.containers",
    "PolicyChanges": "mechasandbox.config.changes",
    "Sandbox": "mechasandbox.sandbox",
}

__all__ = [
    "Application",
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
    "Interrupted",
    "Limits",
    "MemoryLimit",
    "NetworkMode",
    "NetworkPolicy",
    "NodeLost",
    "OutputEvent",
    "Policy",
    "PolicyChanges",
    "PolicyUnsupported",
    "ProcessLimit",
    "Protection",
    "ResultEvent",
    "RunEvent",
    "RunRequest",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "SpawnFailed",
    "StreamedInput",
    "Terminal",
    "Timeout",
    "Usage",
    "Violation",
    "ViolationEvent",
    "WarningEvent",
]
_DOMAIN = [name for name in __all__ if name not in _LOCATIONS]
_LOCATIONS.update(dict.fromkeys(_DOMAIN, "mechasandbox.domain"))
__version__ = "0.1.0"


__getattr__ = lazy_attributes(__name__, _LOCATIONS)
