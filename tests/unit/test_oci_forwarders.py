"""The bridge's own failures read from how a bridged command ended (`forwarders`): a
one-shot run's CLI outcome and a session command's result alike, typed only when the
bridge script said so itself."""

from __future__ import annotations

from mechasandbox.backends.oci.forwarders import bridge_failure
from mechasandbox.domain.errors import BackendFailed, SpawnFailed
from mechasandbox.domain.result import RunResult


def ended(exit_code: int, stderr: bytes) -> RunResult:
    return RunResult(backend="docker", exit_code=exit_code, signal=None, stderr=stderr)


def failure(exit_code: int, stderr: bytes) -> object:
    return bridge_failure(ended(exit_code, stderr), "wget", backend="docker", image="img:1")


def test_the_forwarder_that_did_not_start_is_the_backends_failure() -> None:
    said = b"mechasandbox-bridge: the proxy forwarder did not start\n"
    found = failure(125, said)
    assert isinstance(found, BackendFailed)
    assert "the proxy forwarder did not start" in found.reason


def test_a_command_the_bridges_shell_cannot_exec_is_spawn_failed() -> None:
    found = failure(127, b"mechasandbox-bridge: line 11: exec: wget: not found\n")
    assert isinstance(found, SpawnFailed)
    assert (found.command, found.exit_status) == ("wget", 127)
    assert found.reason.startswith("command not found in image 'img:1'")
    denied = failure(126, b"mechasandbox-bridge: line 11: exec: ./x: Permission denied\n")
    assert isinstance(denied, SpawnFailed) and denied.reason.startswith("not executable")


def test_the_commands_own_status_and_words_are_its_result() -> None:
    assert failure(125, b"") is None
    assert failure(127, b"sh: wget: not found\n") is None
    assert failure(1, b"mechasandbox-bridge: the proxy forwarder did not start\n") is None
