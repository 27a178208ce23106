"""Reusable test support: fakes for testing callers, and the backend contract suite.

The fakes need nothing beyond the library; `BackendContract` is a pytest suite and needs
pytest, which the `testing` extra installs (`pip install 'mechasandbox[testing]'`, which
also brings the pytest plugin of `mechasandbox.testing.plugin`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mechasandbox.testing.fakes import FakeRunner, ScriptedBackend

if TYPE_CHECKING:
    from mechasandbox.testing.contract import BackendContract

__all__ = ["BackendContract", "FakeRunner", "ScriptedBackend"]


def __getattr__(name: str) -> Any:
    # Imported on use, so that the fakes work where pytest is not installed.
    if name == "BackendContract":
        from mechasandbox.testing.contract import BackendContract

        return BackendContract
    raise AttributeError(f"module 'mechasandbox.testing' has no attribute {name!r}")
