"""Reusable test support: the backend contract suite and fakes for testing callers."""

from mechasandbox.testing.contract import BackendContract
from mechasandbox.testing.fakes import FakeRunner, ScriptedBackend

__all__ = ["BackendContract", "FakeRunner", "ScriptedBackend"]
