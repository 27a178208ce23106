"""The backend contract suite: behaviour every backend must show, run against a real one.

Subclass it in a pytest module and provide the `backend` fixture; `sandbox_runner` is the
session's process runner from the pytest plugin this package ships (the `testing` extra)::

    from mechasandbox.testing import BackendContract

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend(self, sandbox_runner):
            return MyBackend(runner=sandbox_runner)

Each test runs real commands in the real sandbox; a backend that cannot run here should
skip in its fixture (or fail, where the environment requires it).
"""

from __future__ import annotations

import os
import pathlib
import secrets
import sys
import threading
import time

import anyio
import attrs
from returns.result import Failure, Result, Success

try:
    import pytest
except ImportError as missing:  # the fakes of mechasandbox.testing work without it
    raise ImportError(
        "mechasandbox.testing.BackendContract is a pytest suite and needs pytest: "
        "install the `testing` extra (pip install 'mechasandbox[testing]')",
        name=missing.name,
    ) from missing

from mechasandbox.backends.base import Backend
from mechasandbox.domain.capabilities import Protection
from mechasandbox.domain.errors import (
    ConfigInvalid,
    CpuLimit,
    SandboxError,
    SpawnFailed,
    Timeout,
)
from mechasandbox.domain.events import OutputEvent, OutputSink
from mechasandbox.domain.limits import MIB, Limits
from mechasandbox.domain.policy import Enforcement, EnvironmentPolicy, Policy
from mechasandbox.domain.request import RunRequest, StreamedInput
from mechasandbox.domain.result import RunResult
from mechasandbox.runner.escapers import ESCAPERS, PeakCounter, escaper_script
from mechasandbox.runner.proctable import alive_with_marker


class BackendContract:
    """Functional behaviour, limits, timeouts and teardown, bad input."""

    def policy(self) -> Policy:
        """The policy the suite runs under; best-effort so weak backends can run it too."""
        return Policy(enforcement=Enforcement.BEST_EFFORT)

    def run(
        self,
        backend: Backend,
        argv: list[str],
        workspace: pathlib.Path,
        *,
        policy: Policy | None = None,
        stdin: bytes | StreamedInput | None = None,
        on_output: OutputSink | None = None,
    ) -> Result[RunResult, SandboxError]:
        request = RunRequest(
            argv=tuple(argv), workspace=str(workspace), stdin=stdin, on_output=on_output
        )
        return anyio.run(backend.run, request, policy or self.policy())

    def test_echo_and_exit_code(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        result = self.run(backend, ["sh", "-c", "echo out; echo err >&2; exit 7"], tmp_path)
        finished = result.unwrap()
        assert finished.stdout == b"out\n"
        assert finished.stderr == b"err\n"
        assert finished.exit_code == 7
        assert finished.signal is None
        assert finished.backend == backend.name

    def test_signal_is_decoded(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        finished = self.run(backend, ["sh", "-c", "kill -TERM $$"], tmp_path).unwrap()
        assert finished.exit_code is None
        assert finished.signal == 15

    def test_stdin_reaches_the_command(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        data = b"line\n" * 50_000
        finished = self.run(backend, ["wc", "-c"], tmp_path, stdin=data).unwrap()
        assert finished.stdout.strip() == str(len(data)).encode()

    def test_streamed_stdin_reaches_the_command(
        self, backend: Backend, tmp_path: pathlib.Path
    ) -> None:
        """Input streamed from a caller's pipe (`StreamedInput`), bigger than any pipe."""
        data = secrets.token_bytes(2 * MIB)
        read_end, write_end = os.pipe()
        writer = _write_and_close(write_end, data)
        try:
            finished = self.run(backend, ["cat"], tmp_path, stdin=StreamedInput(read_end))
        finally:
            writer.join(30)
            os.close(read_end)
        assert finished.unwrap().stdout == data

    def test_stdin_that_never_ends_does_not_hold_the_run(
        self, backend: Backend, tmp_path: pathlib.Path
    ) -> None:
        """`sleep 100 | mechasandbox run -- true`: the run ends with its command (the pipe is
        closed after a minute at the latest, lest a failure hang the suite)."""
        read_end, write_end = os.pipe()
        gave_up = threading.Event()

        def give_up() -> None:
            gave_up.set()
            os.close(write_end)

        safety = threading.Timer(60.0, give_up)
        safety.start()
        try:
            started = time.monotonic()
            finished = self.run(backend, ["true"], tmp_path, stdin=StreamedInput(read_end))
            elapsed = time.monotonic() - started
        finally:
            safety.cancel()
            safety.join()
            if not gave_up.is_set():
                os.close(write_end)
            os.close(read_end)
        assert finished.unwrap().exit_code == 0
        assert elapsed < 20.0

    def test_a_terminal_never_becomes_the_commands_stdin(
        self, backend: Backend, tmp_path: pathlib.Path
    ) -> None:
        """What a terminal gives goes through a pipe: the command cannot reach the terminal
        itself (TIOCSTI would type into the caller's shell)."""
        import pty

        try:
            controller, terminal = pty.openpty()
        except OSError as error:  # devpts mounted with ptmxmode=000: only root gets a pty
            pytest.skip(f"no pseudo-terminal for this user here: {error}")
        try:
            os.write(controller, b"typed\n\x04")  # a line, then end-of-file
            script = "if [ -t 0 ]; then echo terminal; else echo pipe; fi; cat"
            finished = self.run(
                backend, ["sh", "-c", script], tmp_path, stdin=StreamedInput(terminal)
            )
        finally:
            os.close(controller)
            os.close(terminal)
        assert finished.unwrap().stdout == b"pipe\ntyped\n"

    def test_output_arrives_as_it_comes(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        """A line written before a sleep reaches `on_output` before the command ends."""
        seen: list[tuple[float, OutputEvent]] = []
        script = "echo first; sleep 2; echo second"
        finished = self.run(
            backend,
            ["sh", "-c", script],
            tmp_path,
            on_output=lambda event: seen.append((time.monotonic(), event)),
        ).unwrap()
        ended = time.monotonic()
        assert seen, "no output reached on_output"
        assert seen[0][1] == OutputEvent("stdout", b"first\n")
        assert ended - seen[0][0] > 1.5
        assert b"".join(event.data for _, event in seen) == finished.stdout == b"first\nsecond\n"

    def test_live_output_is_capped(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        seen: list[bytes] = []
        policy = attrs.evolve(self.policy(), limits=Limits(max_output_bytes=1 * MIB))
        finished = self.run(
            backend,
            ["sh", "-c", "yes | head -c 5000000"],
            tmp_path,
            policy=policy,
            on_output=lambda event: seen.append(event.data),
        ).unwrap()
        assert b"".join(seen) == finished.stdout
        assert len(finished.stdout) == 1 * MIB
        assert finished.stdout_truncated

    def test_workspace_writes_reach_the_host(
        self, backend: Backend, tmp_path: pathlib.Path
    ) -> None:
        self.run(backend, ["sh", "-c", "echo hello > made.txt"], tmp_path).unwrap()
        made = tmp_path / "made.txt"
        assert made.read_text() == "hello\n"
        assert made.stat().st_uid == os.getuid()

    def test_environment_is_scrubbed(
        self, backend: Backend, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CONTRACT_API_KEY", "sk-secret-value")
        policy = attrs.evolve(
            self.policy(),
            environment=EnvironmentPolicy(set=(("GIVEN", "yes"),)),
        )
        out = self.run(backend, ["env"], tmp_path, policy=policy).unwrap().stdout
        assert b"sk-secret-value" not in out
        assert b"GIVEN=yes" in out

    def test_timeout_kills_the_whole_tree(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        marker = f"contract-{secrets.token_hex(4)}"
        script = escaper_script(marker)
        policy = attrs.evolve(self.policy(), limits=Limits(timeout_s=1.5))
        with PeakCounter(marker) as seen:
            started = time.monotonic()
            result = self.run(backend, ["sh", "-c", script], tmp_path, policy=policy)
            elapsed = time.monotonic() - started
        assert elapsed < 3.5
        assert isinstance(result, Failure)
        error = result.failure()
        assert isinstance(error, Timeout)
        assert error.partial.stdout == b"started\n"
        assert seen.peak >= ESCAPERS, "the escapers must have been running (else: vacuous)"
        time.sleep(0.2)
        assert alive_with_marker(marker) == []

    def test_output_is_capped(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        policy = attrs.evolve(self.policy(), limits=Limits(max_output_bytes=1 * MIB))
        finished = self.run(
            backend, ["sh", "-c", "yes | head -c 50000000"], tmp_path, policy=policy
        ).unwrap()
        assert len(finished.stdout) == 1 * MIB
        assert finished.stdout_truncated
        assert finished.exit_code == 0

    def test_cpu_limit(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        policy = attrs.evolve(self.policy(), limits=Limits(cpu_time_s=1, timeout_s=20))
        result = self.run(backend, ["sh", "-c", "while :; do :; done"], tmp_path, policy=policy)
        assert isinstance(result, Failure)
        assert isinstance(result.failure(), CpuLimit)

    def test_command_not_found(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        result = self.run(backend, ["no-such-command-xyz"], tmp_path)
        error = result.failure() if isinstance(result, Failure) else None
        assert isinstance(error, SpawnFailed)
        assert error.exit_status == 127

    def test_missing_workspace(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        result = self.run(backend, ["true"], tmp_path / "absent")
        assert isinstance(result, Failure)
        assert isinstance(result.failure(), ConfigInvalid)
        assert "absent" in result.failure().message

    @pytest.mark.parametrize("where", ["/", "~", "/etc", "/usr"])
    def test_system_directories_and_the_home_are_no_workspace(
        self, backend: Backend, where: str
    ) -> None:
        """The command may write all of its workspace: `/`, the home directory and the system
        trees are refused before anything runs (`true`, so that a failure writes nothing)."""
        result = self.run(backend, ["true"], pathlib.Path(os.path.expanduser(where)))
        assert isinstance(result, Failure), result
        assert isinstance(result.failure(), ConfigInvalid)
        assert "refused" in result.failure().message

    def test_no_inherited_descriptors(self, backend: Backend, tmp_path: pathlib.Path) -> None:
        leaked = os.open(sys.executable, os.O_RDONLY)
        os.set_inheritable(leaked, True)
        try:
            # /proc on Linux (and in Linux containers), /dev/fd on macOS
            listing = "ls /proc/self/fd 2>/dev/null || ls /dev/fd"
            out = self.run(backend, ["sh", "-c", listing], tmp_path).unwrap().stdout
        finally:
            os.close(leaked)
        # 0-2, plus the one `ls` opens to list the directory.
        assert sorted(int(fd) for fd in out.split()) in ([0, 1, 2], [0, 1, 2, 3])

    def test_strict_refuses_what_it_cannot_enforce(
        self, backend: Backend, tmp_path: pathlib.Path
    ) -> None:
        capabilities = backend.probe().unwrap()
        strict = attrs.evolve(self.policy(), enforcement=Enforcement.STRICT)
        missing = capabilities.missing(strict)
        result = self.run(backend, ["true"], tmp_path, policy=strict)
        if missing:
            assert isinstance(result, Failure)
            assert result.failure().kind == "policy_unsupported"
        else:
            assert isinstance(result, Success)
        best = self.run(
            backend,
            ["true"],
            tmp_path,
            policy=attrs.evolve(strict, enforcement=Enforcement.BEST_EFFORT),
        ).unwrap()
        for protection in missing:
            assert any(protection.value in warning for warning in best.warnings)
        assert Protection.ENVIRONMENT in capabilities.enforced


def _write_and_close(fd: int, data: bytes) -> threading.Thread:
    """A thread that writes `data` to `fd`, then closes it."""

    def write() -> None:
        with os.fdopen(fd, "wb") as writer:
            writer.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread
