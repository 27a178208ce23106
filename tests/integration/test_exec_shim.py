"""The exec shim (`runner/shim/exec_shim.c`, see `runner.native`): warm children that are not
Python processes. What the runner tests check on both ways (test_runner, test_warm_children,
the security suites) is not repeated here: this is what only the shim does, driven through
the real helper, plus the Python way for runs the shim cannot take."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from mechasandbox.backends.linux import landlock_rules
from mechasandbox.backends.linux.bwrap_hooks import seccomp_hook, seccomp_program
from mechasandbox.runner import fd_data, framing, native
from mechasandbox.runner.client import SpawnHelperClient
from mechasandbox.runner.runner import HelperProcessRunner
from mechasandbox.runner.spec import ChildHook, RlimitSetting, SpawnSpec
from tests.conftest import require_exec_shim
from tests.host_actions import marking_library
from tests.integration.offering import offers

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="the exec shim is Linux only"
)

ENV = (("PATH", "/usr/bin:/bin"),)


@pytest.fixture
def shim_runner() -> Iterator[HelperProcessRunner]:
    require_exec_shim()
    runner = HelperProcessRunner(SpawnHelperClient(exec_shim=True))
    yield runner
    runner.close()


def _spec(*argv: str, **changes: Any) -> SpawnSpec:
    fields: dict[str, Any] = {"env": ENV, "cwd": "/tmp", "timeout_s": 10} | changes
    return SpawnSpec(argv=argv, **fields)


def _native_offer(client: SpawnHelperClient) -> tuple[int, socket.socket]:
    """The shim child the helper offered after the last run (pid, the socket to hand it a
    run), taken out of the client's hands."""
    (offer,) = offers(client, lambda o: o.native, take=True)
    return offer.pid, offer.runs


def _offered_pids(client: SpawnHelperClient) -> set[int]:
    return {offer.pid for offer in offers(client, lambda o: o.native, take=False)}


def test_a_run_is_handed_to_a_waiting_shim_child(shim_runner: HelperProcessRunner) -> None:
    """After a run, the child waiting for the next one is the shim (its executable), and the
    next run is that very process, exec'd in place (so it is the helper's child, joined to
    what the shim joined, like a forked one)."""
    anyio.run(shim_runner.run, _spec("true")).unwrap()
    (waiting,) = _offered_pids(shim_runner._helper)
    assert os.readlink(f"/proc/{waiting}/exe") == native.shim_path()
    shown = anyio.run(shim_runner.run, _spec("sh", "-c", "echo $$")).unwrap()
    assert int(shown.stdout) == waiting


def test_the_command_gets_exactly_its_argv_env_cwd_umask_and_stdio(
    shim_runner: HelperProcessRunner, tmp_path: Path
) -> None:
    anyio.run(shim_runner.run, _spec("true")).unwrap()
    _offered_pids(shim_runner._helper)
    env = (("PATH", "/usr/bin:/bin"), ("ONLY", "this"), ("SPACED", "a b=c"))
    # The environment sh was exec'd with (its own `env` would add PWD and the like).
    script = 'cat; printf "%s|" "$@"; echo; pwd; umask; tr "\\0" "\\n" </proc/$$/environ'
    script += " | sort; ls /proc/self/fd"
    finished = anyio.run(
        shim_runner.run,
        SpawnSpec(
            argv=("sh", "-c", script, "sh", "one", "two words", ""),
            env=env,
            cwd=str(tmp_path),
            umask=0o027,
            stdin=b"input\n",
        ),
    ).unwrap()
    lines = finished.stdout.decode().splitlines()
    assert lines[0] == "input"
    assert lines[1] == "one|two words||"
    assert lines[2] == str(tmp_path)
    assert lines[3] == "0027"
    assert lines[4:7] == ["ONLY=this", "PATH=/usr/bin:/bin", "SPACED=a b=c"]
    # Only stdin, stdout, stderr and the descriptor `ls` opens on /proc/self/fd itself: the
    # run's socket and the report pipe do not leak into the command.
    assert lines[7:] == ["0", "1", "2", "3"]


def test_rlimits_and_a_program_on_a_descriptor_are_applied(
    shim_runner: HelperProcessRunner,
) -> None:
    anyio.run(shim_runner.run, _spec("true")).unwrap()
    _offered_pids(shim_runner._helper)
    finished = anyio.run(
        shim_runner.run,
        _spec(
            "sh",
            "-c",
            "ulimit -n; ulimit -c; wc -c <&3",
            rlimits=(
                RlimitSetting(resource="RLIMIT_NOFILE", soft=40, hard=50),
                RlimitSetting(resource="RLIMIT_CORE", soft=0, hard=0),
            ),
            hooks=(seccomp_hook(),),
        ),
    ).unwrap()
    assert finished.stdout.decode().split() == ["40", "0", str(len(seccomp_program()))]


@pytest.mark.parametrize("exec_shim", [True, False], ids=["shim", "forked"])
def test_data_on_descriptors_arrives_whole_either_way(exec_shim: bool) -> None:
    """What bwrap reads from descriptors (its seccomp program, the command's environment as
    `--args`): each arrives whole, beyond a pipe buffer's 64 KiB, NUL bytes included, at
    the start of its descriptor; and nothing else is open."""
    if exec_shim:
        require_exec_shim()
    first = bytes(range(256)) * 600  # 150 KiB
    second = b"--setenv\0NAME\0a value\0"
    hooks = tuple(
        ChildHook(target=fd_data.TARGET, argument=fd_data.argument(fd, data))
        for fd, data in ((3, first), (4, second))
    )
    runner = HelperProcessRunner(SpawnHelperClient(exec_shim=exec_shim))
    try:
        script = "sha256sum <&3; sha256sum <&4; ls /proc/self/fd"
        for _ in range(2):  # the second run is the one a warm (shim) child takes
            finished = anyio.run(runner.run, _spec("sh", "-c", script, hooks=hooks)).unwrap()
    finally:
        runner.close()
    lines = finished.stdout.decode().split("\n")
    assert lines[0].split()[0] == hashlib.sha256(first).hexdigest()
    assert lines[1].split()[0] == hashlib.sha256(second).hexdigest()
    assert lines[2:] == ["0", "1", "2", "3", "4", "5", ""]  # and ls's own /proc/self/fd


@pytest.mark.parametrize("exec_shim", [True, False], ids=["shim", "forked"])
def test_the_commands_environment_applies_to_the_command_alone(
    exec_shim: bool, tmp_path: Path
) -> None:
    """A run's environment is the exec's, never the helper's nor the shim's: with
    LD_PRELOAD in it, only the command loads the library (for landlock the command is
    the exec target itself, for bubblewrap and seatbelt the launcher is)."""
    if exec_shim:
        require_exec_shim()
    marker = tmp_path / "loaded-by"
    library = marking_library(tmp_path, marker)
    env = (*ENV, ("LD_PRELOAD", str(library)))
    runner = HelperProcessRunner(SpawnHelperClient(exec_shim=exec_shim))
    try:
        for _ in range(2):  # the second run is the one a warm (shim) child takes
            anyio.run(runner.run, _spec("true", env=env)).unwrap()
            anyio.run(runner.run, _spec("true")).unwrap()  # and a run without it after
    finally:
        runner.close()
    true = os.path.realpath("/usr/bin/true")
    assert marker.read_text().splitlines() == [true, true]


@pytest.mark.parametrize(
    ("changes", "stage", "code"),
    [
        ({"cwd": "/nonexistent-dir"}, "chdir", errno.ENOENT),
        (
            {"rlimits": (RlimitSetting(resource="RLIMIT_NOFILE", soft=64, hard=32),)},
            "rlimit",
            errno.EINVAL,
        ),
    ],
)
def test_a_failed_step_is_a_spawn_failure_naming_it(
    shim_runner: HelperProcessRunner, changes: dict[str, Any], stage: str, code: int
) -> None:
    anyio.run(shim_runner.run, _spec("true")).unwrap()
    _offered_pids(shim_runner._helper)
    failed = anyio.run(shim_runner.run, _spec("sh", "-c", "echo ran", **changes)).failure()
    assert failed.exit_status == 126
    assert f"while setting up: {stage}" in failed.reason
    assert os.strerror(code) in failed.reason


def test_a_name_is_searched_on_the_commands_path(
    shim_runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """As os.execvpe: on the PATH of the command's environment, skipping entries where it
    is not; not found anywhere is "command not found"; found but not executable, 126."""
    anyio.run(shim_runner.run, _spec("true")).unwrap()
    _offered_pids(shim_runner._helper)
    env = (("PATH", f"/nonexistent:{tmp_path}:/usr/bin:/bin"),)
    found = anyio.run(shim_runner.run, SpawnSpec(argv=("true",), env=env, cwd="/")).unwrap()
    assert found.exit_code == 0
    _offered_pids(shim_runner._helper)
    missing = anyio.run(
        shim_runner.run, SpawnSpec(argv=("true",), env=(("PATH", str(tmp_path)),), cwd="/")
    ).failure()
    assert missing.exit_status == 127
    (tmp_path / "plain").write_text("echo hi\n")
    _offered_pids(shim_runner._helper)
    denied = anyio.run(
        shim_runner.run, SpawnSpec(argv=("plain",), env=(("PATH", str(tmp_path)),), cwd="/")
    ).failure()
    assert denied.exit_status == 126


def test_a_run_with_a_hook_that_has_no_native_form_goes_the_python_way(
    shim_runner: HelperProcessRunner,
) -> None:
    """`os:umask` as a hook has no encoder: the helper forks the run, and the hook runs
    (after the spec's umask, as hooks do)."""
    anyio.run(shim_runner.run, _spec("true")).unwrap()
    (waiting,) = _offered_pids(shim_runner._helper)
    hooked = _spec("sh", "-c", "umask; echo $$", hooks=(ChildHook(target="os:umask", argument=18),))
    assert native.encode(_request(hooked)) is None
    finished = anyio.run(shim_runner.run, hooked).unwrap()
    umask, pid = finished.stdout.decode().split()
    assert umask == "0022"
    assert int(pid) != waiting  # forked by the helper; the shim child still waits
    assert waiting in _offered_pids(shim_runner._helper)


def _request(spec: SpawnSpec) -> dict[str, Any]:
    from mechasandbox.runner.submission import spawn_request

    return spawn_request(spec)


def _claim_answer(client: SpawnHelperClient, pid: int) -> dict[str, Any]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with client._lock:
        assert client._control is not None
        framing.send(client._control, {"op": "claim", "pid": pid}, [theirs.fileno()])
    theirs.close()
    with ours:
        ours.settimeout(10)
        while True:
            message, _ = framing.receive(ours)
            if message.get("event") in ("exited", "failed"):
                return message


def _hand_by_hand(client: SpawnHelperClient, frame: bytes) -> dict[str, Any]:
    pid, runs = _native_offer(client)
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        framing.send_frame(runs, frame, [devnull, devnull, devnull])
    finally:
        runs.close()
        os.close(devnull)
    return _claim_answer(client, pid)


def _touching(marker: Path, *before: tuple[bytes, bytes]) -> bytes:
    records = native.Records()
    records.chdir("/")
    for op, payload in before:
        records.add(op, payload)
    for argument in ("sh", "-c", f"touch {marker}"):
        records.add(b"a", argument.encode())
    records.add(b"e", b"PATH=/usr/bin:/bin")
    records.add(b"x", b"/bin/sh")
    return records.frame()


@pytest.mark.parametrize(
    "records",
    [
        pytest.param(((b"?", b""),), id="an unknown record"),
        pytest.param(((b"u", b"\x01"),), id="a record shorter than its fields"),
        pytest.param(((b"c", b"/tmp\x00/etc"),), id="a string with a NUL"),
        # A Landlock ruleset built and never enforced: the command must not run without it.
        pytest.param(((b"L", struct.pack("<QQQI", 1, 0, 0, 8)),), id="a ruleset never enforced"),
    ],
)
def test_a_frame_the_shim_cannot_carry_out_never_runs_the_command(
    shim_runner: HelperProcessRunner, tmp_path: Path, records: tuple[tuple[bytes, bytes], ...]
) -> None:
    anyio.run(shim_runner.run, _spec("true")).unwrap()
    marker = tmp_path / "ran"
    answer = _hand_by_hand(shim_runner._helper, _touching(marker, *records))
    assert answer["event"] == "failed", answer
    assert answer["stage"] == "setup", answer
    assert not marker.exists()
    # and the same frame without the bad record runs: the test can tell the two apart
    anyio.run(shim_runner.run, _spec("true")).unwrap()
    answer = _hand_by_hand(shim_runner._helper, _touching(marker))
    assert answer["event"] == "exited", answer
    assert marker.exists()


def test_the_native_form_follows_the_python_childs_order() -> None:
    """cwd, umask, ahead hooks, rlimits, other hooks, then what to exec: the order of
    `helper._child`, so that a run is confined the same on both ways."""
    hooks = (
        ChildHook(target=fd_data.TARGET, argument=fd_data.argument(3, bytes(8))),
        ChildHook(
            target=landlock_rules.ISOLATE_TARGET,
            argument={"drop_capabilities": True, "seccomp": ""},
            ahead=True,
        ),
    )
    spec = _spec(
        "true", rlimits=(RlimitSetting(resource="RLIMIT_CORE", soft=0, hard=0),), hooks=hooks
    )
    frame = native.encode(_request(spec))
    assert frame is not None
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    ops = []
    at = 4
    while at < len(frame):
        ops.append(chr(frame[at]))
        at += 5 + int.from_bytes(frame[at + 1 : at + 5], "little")
    assert ops == ["c", "u", "k", "n", "r", "f", "a", "e", "x"]


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(_spec("sh", "-c", "echo \0"), id="a NUL in an argument"),
        pytest.param(SpawnSpec(argv=("true",), env=(("A=B", "c"),), cwd="/"), id="= in a name"),
        pytest.param(
            _spec("true", rlimits=(RlimitSetting(resource="NOT_A_LIMIT", soft=0, hard=0),)),
            id="an unknown rlimit",
        ),
    ],
)
def test_what_records_cannot_carry_goes_the_python_way(spec: SpawnSpec) -> None:
    assert native.encode(_request(spec)) is None


def test_a_shim_of_another_build_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A binary that does not speak this version's records (left from an older build) is
    not started: the helper forks its warm children, and runs work as before."""
    assert native.speaks_protocol(require_exec_shim())
    stale = tmp_path / "mechasandbox-exec"
    stale.write_text("#!/bin/sh\necho 0\n")
    stale.chmod(0o755)
    assert not native.speaks_protocol(str(stale))
    monkeypatch.setenv(native.SHIM_ENV, str(stale))
    runner = HelperProcessRunner(SpawnHelperClient(exec_shim=True))
    try:
        for _ in range(2):  # the second is handed to the warm child the first left
            finished = anyio.run(runner.run, _spec("sh", "-c", "echo ran")).unwrap()
            assert finished.stdout == b"ran\n"
        held = offers(runner._helper, take=False)
        assert held and not any(offer.native for offer in held)
    finally:
        runner.close()


def test_a_long_argv_reaches_the_command_whole(shim_runner: HelperProcessRunner) -> None:
    """As many arguments as exec takes (here 100 000, beyond any fixed table)."""
    anyio.run(shim_runner.run, _spec("true")).unwrap()
    _offered_pids(shim_runner._helper)
    arguments = [str(i % 10) for i in range(100_000)]
    finished = anyio.run(shim_runner.run, _spec("sh", "-c", 'echo "$#"', "sh", *arguments))
    assert finished.unwrap().stdout == b"100000\n"


def test_a_shim_that_does_not_answer_is_not_used_and_does_not_hang(tmp_path: Path) -> None:
    silent = tmp_path / "mechasandbox-exec"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    started = time.monotonic()
    assert not native.speaks_protocol(str(silent), timeout_s=0.5)
    assert time.monotonic() - started < 10
