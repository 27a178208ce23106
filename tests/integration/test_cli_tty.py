"""`mechasandbox run --tty` and `mechasandbox shell` driven from a real pseudo-terminal, as a
user's terminal drives them: the command sees a terminal (a new pty of the run's own, the
controlling terminal of its session), the window size follows the caller's, what is typed
reaches it, TIOCSTI inside never reaches the caller's terminal, and the caller's terminal
mode is put back however the run ends."""

from __future__ import annotations

import fcntl
import os
import pathlib
import pty
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Sequence

import pytest

from mechasandbox.backends.base import Backend
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")

SRC = str(pathlib.Path(__file__).resolve().parents[2] / "src")
OPTIONS = {
    "bubblewrap": ("--backend", "bubblewrap"),
    "landlock": ("--backend", "landlock", "--host-processes", "visible"),
    "process": ("--backend", "process", "--best-effort"),
}
SIZE = (33, 111)
CLI = f"{shlex.quote(sys.executable)} -m mechasandbox"
# An interpreter every sandbox sees (the test's own may live in a hidden virtualenv).
PYTHON = "/usr/bin/python3"
PROMPT = b"# " if os.geteuid() == 0 else b"$ "  # sh -i's own


@pytest.fixture(params=sorted(OPTIONS))
def backend(request: pytest.FixtureRequest, runner: HelperProcessRunner) -> str:
    """The options that choose a backend available here (each in turn), as shell words."""
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
    from mechasandbox.backends.linux.landlock import LandlockBackend
    from mechasandbox.backends.process import ProcessBackend

    name: str = request.param
    makers: dict[str, Callable[[], Backend]] = {
        "bubblewrap": lambda: BubblewrapBackend(runner=runner),
        "landlock": lambda: LandlockBackend(runner=runner),
        "process": lambda: ProcessBackend(runner=runner),
    }
    require_available(makers[name]())
    return " ".join(OPTIONS[name])


Step = tuple[bytes, Callable[[int, bytes], None]]


def on_terminal(
    script: str, workspace: pathlib.Path, steps: Sequence[Step] = (), timeout_s: float = 40.0
) -> tuple[bytes, int]:
    """`sh -c script` on a new pty of `SIZE` (its controlling terminal, as a user's shell
    has); each step's action is called with the pty's master and the output so far once
    the output holds its marker. The output and the exit status."""
    try:
        pid, master = pty.fork()
    except OSError as error:  # devpts mounted with ptmxmode=000: only root gets a pty
        pytest.skip(f"no pseudo-terminal for this user here: {error}")
    if pid == 0:  # pragma: no cover - the child
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", *SIZE, 0, 0))
            os.chdir(workspace)
            env = {**os.environ, "PYTHONPATH": SRC, "SHELL": "/bin/sh"}
            os.execve("/bin/sh", ["sh", "-c", script], env)
        finally:
            os._exit(127)
    output = b""
    pending = list(steps)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if pending and pending[0][0] in output:
                pending.pop(0)[1](master, output)
                continue
            readable, _, _ = select.select([master], [], [], 0.2)
            if not readable:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the session ended
                break
            if not data:
                break
            output += data
    finally:
        os.close(master)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert not pending, f"never saw {pending[0][0]!r} in {output!r}"
    return output, os.waitstatus_to_exitcode(status)


def typed(text: bytes) -> Callable[[int, bytes], None]:
    def type_it(master: int, _output: bytes) -> None:
        time.sleep(0.3)  # the shell inside is at its prompt, its terminal set up
        os.write(master, text)

    return type_it


def test_the_command_has_a_terminal(backend: str, tmp_path: pathlib.Path) -> None:
    inside = "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-terminals; stty size"
    output, status = on_terminal(
        f"{CLI} run {backend} --tty -- sh -c {shlex.quote(inside)}", tmp_path
    )
    assert status == 0, output
    assert b"not a tty" not in output
    assert b"/dev/pts/" in output
    assert b"all-terminals" in output
    assert f"{SIZE[0]} {SIZE[1]}".encode() in output


def test_it_is_the_controlling_terminal_of_the_session(
    backend: str, tmp_path: pathlib.Path
) -> None:
    """Job control needs it: the session's terminal is the run's pty (`ps`'s TTY column,
    read from /proc/self/stat: tty_nr, nonzero only with a controlling terminal)."""
    inside = "read -r _ _ _ _ _ _ tty_nr _ < /proc/self/stat; echo tty_nr=$tty_nr"
    output, status = on_terminal(
        f"{CLI} run {backend} --tty -- sh -c {shlex.quote(inside)}", tmp_path
    )
    assert status == 0, output
    assert b"tty_nr=" in output
    assert b"tty_nr=0\r" not in output


def test_the_window_size_follows_the_callers(backend: str, tmp_path: pathlib.Path) -> None:
    inside = "stty size; echo resize-now; sleep 3; stty size"

    def resize(master: int, _output: bytes) -> None:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 123, 0, 0))

    output, status = on_terminal(
        f"{CLI} run {backend} --tty -- sh -c {shlex.quote(inside)}",
        tmp_path,
        [(b"resize-now\r\n", resize)],
    )
    assert status == 0, output
    assert f"{SIZE[0]} {SIZE[1]}".encode() in output
    assert b"40 123" in output


def test_shell_takes_what_is_typed_and_exits_with_its_status(
    backend: str, tmp_path: pathlib.Path
) -> None:
    output, status = on_terminal(
        f"{CLI} shell {backend}", tmp_path, [(PROMPT, typed(b"echo h''i; exit 3\r"))]
    )
    assert status == 3, output
    assert b"\r\nhi\r\n" in output


@pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"no {PYTHON}")
def test_tiocsti_inside_never_reaches_the_callers_terminal(
    backend: str, tmp_path: pathlib.Path
) -> None:
    """The command pushes a line into its terminal's input; the caller's terminal input
    stays empty (the caller's shell reads nothing from it afterwards)."""
    push = (
        "import fcntl, termios\n"
        "for c in b'echo INJECTED\\n':\n"
        "    try:\n"
        "        fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))\n"
        "    except OSError as error:\n"
        "        print('refused', error.errno)\n"
        "        break\n"
    )
    pending = (
        "import fcntl, struct, termios\n"
        "n = struct.unpack('i', fcntl.ioctl(0, termios.FIONREAD, b'\\0' * 4))[0]\n"
        "print('caller-input-pending=%d' % n)\n"
    )
    script = (
        f"{CLI} run {backend} --tty -- {PYTHON} -c {shlex.quote(push)}; "
        f"{PYTHON} -c {shlex.quote(pending)}; "
        "if read -t 1 line; then echo caller-read=$line; else echo caller-read-nothing; fi"
    )
    output, _ = on_terminal(script, tmp_path)
    assert b"caller-input-pending=0" in output
    assert b"caller-read-nothing" in output
    assert b"caller-read=" not in output


def _restored(script: str, tmp_path: pathlib.Path, steps: Sequence[Step] = ()) -> bytes:
    """`script` between two `stty -g` of the caller's terminal: the mode after is the mode
    before."""
    output, _ = on_terminal(
        f"echo before=$(stty -g); {script}; echo status=$?; echo after=$(stty -g)",
        tmp_path,
        steps,
    )
    lines = output.replace(b"\r", b"").split(b"\n")
    before = next(line for line in lines if line.startswith(b"before="))
    after = next(line for line in lines if line.startswith(b"after="))
    assert before.removeprefix(b"before=") == after.removeprefix(b"after="), output
    return output


def test_the_callers_terminal_mode_is_restored(backend: str, tmp_path: pathlib.Path) -> None:
    output = _restored(f"{CLI} run {backend} --tty -- true", tmp_path)
    assert b"status=0" in output


def test_restored_after_a_timeout(backend: str, tmp_path: pathlib.Path) -> None:
    output = _restored(f"{CLI} run {backend} --tty --timeout 1 -- sleep 20", tmp_path)
    assert b"status=124" in output


def test_restored_after_sigint_to_the_cli(backend: str, tmp_path: pathlib.Path) -> None:
    def interrupt(_master: int, output: bytes) -> None:
        pid = int(output.split(b"cli-pid=")[1].split(b"\r")[0])
        time.sleep(1.0)
        os.kill(pid, signal.SIGINT)

    script = f"sh -c 'echo cli-pid=$$; exec {CLI} run {backend} --tty -- sleep 20'"
    output = _restored(script, tmp_path, [(b"cli-pid=", interrupt)])
    assert b"status=130" in output


def test_ctrl_c_typed_goes_to_the_command(backend: str, tmp_path: pathlib.Path) -> None:
    """Raw mode: Ctrl-C is a key for the pty inside, whose line discipline interrupts the
    command; the CLI then reports the command's end as any other."""
    inside = "echo ready; sleep 20"
    output = _restored(
        f"{CLI} run {backend} --tty -- sh -c {shlex.quote(inside)}",
        tmp_path,
        [(b"ready\r\n", typed(b"\x03"))],
    )
    assert b"status=130" in output


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (("run", "--backend", "docker", "--image", "x", "--tty", "--", "true"), b"--tty"),
        (("run", "--tty", "--json", "--", "true"), b"--json"),
        (("shell", "--stdin", "none"), b"--stdin"),
    ],
)
def test_refused_where_it_cannot_work(
    argv: tuple[str, ...], named: bytes, tmp_path: pathlib.Path
) -> None:
    if "docker" in argv and shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    refused = subprocess.run(
        [sys.executable, "-m", "mechasandbox", *argv],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
        check=False,
    )
    said = refused.stdout + refused.stderr  # --json answers on stdout
    assert refused.returncode == 125, said
    assert b"config_invalid" in said
    assert named in said
