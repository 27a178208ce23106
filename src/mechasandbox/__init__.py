"""mechasandbox: run commands written by AI coding agents under an OS-level sandbox.

The public API is imported lazily (PEP 562) so that `python -m mechasandbox` and the spawn
helper start fast; type checkers see the real imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
        Limits,
        MemoryLimit,
        NetworkMode,
        NetworkPolicy,
        Policy,
        PolicyUnsupported,
        ProcessLimit,
        Protection,
        RunRequest,
        RunResult,
        SandboxError,
        SpawnFailed,
        Timeout,
        Usage,
        Violation,
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
    "Limits",
    "MemoryLimit",
    "NetworkMode",
    "NetworkPolicy",
    "Policy",
    "PolicyChanges",
    "PolicyUnsupported",
    "ProcessLimit",
    "Protection",
    "RunRequest",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "SpawnFailed",
    "Timeout",
    "Usage",
    "Violation",
]
_DOMAIN = [name for name in __all__ if name not in _LOCATIONS]
_LOCATIONS.update(dict.fromkeys(_DOMAIN, "mechasandbox.domain"))
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        return getattr(importlib.import_module(_LOCATIONS[name]), name)
    raise AttributeError(f"module 'mechasandbox' has no attribute {name!r}")
