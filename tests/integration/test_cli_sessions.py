"""`mechasandbox session start|run|stop|list` through the real CLI (docs/sessions.md): state
persists between `session run`s, which answer as `run` does; the supervisor's death leaves
no sandbox; another user cannot reach a session; a caller killed mid-command takes its
command with it."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from mechasandbox.runner.proctable import alive_with_marker
from tests.conftest import require_session_agent
from tests.integration.test_cli import JSON_KEYS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")
CLI = [sys.executable, "-m", "mechasandbox"]


@pytest.fixture
def runtime() -> Iterator[pathlib.Path]:
    """A private XDG_RUNTIME_DIR of the test's own (the sessions' directory goes below; a
    short path: a unix socket's is at most 104 bytes)."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="ms-rt-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def workspace(tmp_path: pathlib.Path) -> pathlib.Path:
    directory = tmp_path / "ws"
    (directory / "work").mkdir(parents=True)
    return directory


def mecha(
    runtime: pathlib.Path, *argv: str, cwd: pathlib.Path | None = None, **options: object
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*CLI, *argv], env=env, cwd=cwd, capture_output=True, timeout=60, check=False, **options
    )


@pytest.fixture(params=["bubblewrap", "landlock"])
def session(
    request: pytest.FixtureRequest, runtime: pathlib.Path, workspace: pathlib.Path
) -> Iterator[str]:
    require_session_agent()
    visible = ["--host-processes", "visible"] if request.param == "landlock" else []
    start = ["session", "start", "--backend", request.param, *visible]
    started = mecha(runtime, *start, cwd=workspace)
    if started.returncode != 0 and b"backend_unavailable" in started.stderr:
        pytest.skip(started.stderr.decode())
    assert started.returncode == 0, started.stderr
    session_id = started.stdout.decode().strip()
    yield session_id
    mecha(runtime, "session", "stop", session_id)


def _ends(pid: int, *, within_s: float) -> bool:
    """Whether `pid` exits within `within_s`. A supervisor is not the test's child: once it
    exits it waits, a zombie, for whatever reaps orphans here (which may be slow)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def supervisor_pid(runtime: pathlib.Path, session_id: str) -> int:
    listed = mecha(runtime, "session", "list", "--json")
    (info,) = [s for s in json.loads(listed.stdout) if s["session"] == session_id]
    return int(info["pid"])


def test_state_persists_and_each_run_answers_as_run_does(
    runtime: pathlib.Path, session: str
) -> None:
    made = mecha(
        runtime,
        "session",
        "run",
        session,
        "--",
        "sh",
        "-c",
        'echo kept > "${TMPDIR:-/tmp}/s"; echo made; exit 3',
    )
    assert (made.returncode, made.stdout) == (3, b"made\n")
    read = mecha(
        runtime, "session", "run", session, "--json", "--", "sh", "-c", 'cat "${TMPDIR:-/tmp}/s"'
    )
    answer = json.loads(read.stdout)
    assert read.returncode == 0 and set(answer) == JSON_KEYS and answer["stdout"] == "kept\n"
    slow = mecha(runtime, "session", "run", session, "--timeout", "0.3", "--", "sleep", "5")
    assert slow.returncode == 124 and b"timeout" in slow.stderr
    missing = mecha(runtime, "session", "run", session, "--", "no-such-command-here")
    assert missing.returncode == 127
    lines = mecha(runtime, "session", "run", session, "--jsonl", "--", "echo", "hi")
    events = [json.loads(line) for line in lines.stdout.splitlines()]
    assert events[0] == {"event": "stdout", "data": "hi\n"} and events[-1]["event"] == "result"
    fed = mecha(
        runtime,
        "session",
        "run",
        session,
        "--stdin",
        "inherit",
        "--",
        "tr",
        "a-z",
        "A-Z",
        input=b"in",
    )
    assert fed.stdout == b"IN"


def test_session_run_starts_with_the_standard_library_alone(
    runtime: pathlib.Path, session: str
) -> None:
    """A shell-driven agent pays `session run`'s start-up on every command: the client
    imports no `typing`, `attrs`, `returns`, event loop or dependency injection (see
    `cli/session_run.py`); and a failure still answers as `run` does."""
    ran = mecha(runtime, "session", "run", session, "--timeout", "30", "--", "echo", "hi")
    assert (ran.returncode, ran.stdout) == (0, b"hi\n"), ran.stderr
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    argv = ["-X", "importtime", "-m", "mechasandbox", "session", "run", session, "--", "true"]
    traced = subprocess.run(
        [sys.executable, *argv],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert traced.returncode == 0, traced.stderr
    imported = {
        line.rpartition("|")[2].strip()
        for line in traced.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "mechasandbox.cli.session_run" in imported
    heavy = {"typing", "attrs", "attr", "returns", "asyncio", "anyio", "dependency_injector"}
    assert heavy.isdisjoint({name.split(".")[0] for name in imported}), sorted(imported)
    bad = mecha(runtime, "session", "run", session, "--memory", "lots", "--json", "--", "true")
    assert bad.returncode == 125
    error = json.loads(bad.stdout)["error"]
    assert error["kind"] == "config_invalid" and "--memory" in error["message"]


def test_export_on_a_local_session_has_nothing_to_bring(
    runtime: pathlib.Path, session: str, workspace: pathlib.Path
) -> None:
    """A local session works in the workspace itself: `export` answers at once, with no
    warning, and the file a command wrote is where it was written."""
    assert (
        mecha(runtime, "session", "run", session, "--", "sh", "-c", "echo x > work/made").returncode
        == 0
    )
    plain = mecha(runtime, "session", "export", session)
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, b"", b"")
    said = mecha(runtime, "session", "export", session, "--json")
    assert said.returncode == 0, said.stderr
    assert json.loads(said.stdout) == {"session": session, "exported": True, "warnings": []}
    assert (workspace / "work" / "made").read_text() == "x\n"


def test_export_of_a_stopped_session_is_an_error(runtime: pathlib.Path, session: str) -> None:
    assert mecha(runtime, "session", "stop", session).returncode == 0
    said = mecha(runtime, "session", "export", session, "--json")
    assert said.returncode == 125
    assert json.loads(said.stdout)["error"]["kind"] == "backend_failed"


def test_stop_ends_it_and_a_later_run_is_a_typed_error(runtime: pathlib.Path, session: str) -> None:
    pid = supervisor_pid(runtime, session)
    assert mecha(runtime, "session", "stop", session).returncode == 0
    after = mecha(runtime, "session", "run", session, "--json", "--", "true")
    assert after.returncode == 125
    assert json.loads(after.stdout)["error"]["kind"] == "backend_failed"
    assert _ends(pid, within_s=10), "the supervisor outlives stop"


def test_the_supervisors_death_leaves_no_sandbox(
    runtime: pathlib.Path, session: str, workspace: pathlib.Path
) -> None:
    token = secrets.token_hex(6)
    left = mecha(runtime, "session", "run", session, "--", "sh", "-c", "true")
    assert left.returncode == 0
    running = subprocess.Popen(
        [*CLI, "session", "run", session, "--", "sh", "-c", f"sleep 1000; : {token}"],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not alive_with_marker(token):
        time.sleep(0.05)
    assert alive_with_marker(token) != []
    os.kill(supervisor_pid(runtime, session), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        alive_with_marker(token) or alive_with_marker(str(workspace))
    ):
        time.sleep(0.05)
    assert alive_with_marker(token) == []
    assert alive_with_marker(str(workspace)) == []  # bwrap's argv, the agent's directory
    assert running.wait(timeout=10) == 125  # told the session ended, typed
    after = mecha(runtime, "session", "run", session, "--", "true")
    assert after.returncode == 125 and b"backend_failed" in after.stderr


def test_a_caller_killed_mid_command_takes_the_command_with_it(
    runtime: pathlib.Path, session: str
) -> None:
    token = secrets.token_hex(6)
    caller = subprocess.Popen(
        [*CLI, "session", "run", session, "--", "sh", "-c", f"sleep 1000; : {token}"],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not alive_with_marker(token):
        time.sleep(0.05)
    assert alive_with_marker(token) != []
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive_with_marker(token):
        time.sleep(0.05)
    assert alive_with_marker(token) == []
    after = mecha(runtime, "session", "run", session, "--", "echo", "still")
    assert (after.returncode, after.stdout) == (0, b"still\n")


def test_an_interrupted_run_answers_interrupted(runtime: pathlib.Path, session: str) -> None:
    caller = subprocess.Popen(
        [*CLI, "session", "run", session, "--json", "--", "sh", "-c", "echo started; sleep 1000"],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        stdout=subprocess.PIPE,
    )
    time.sleep(1.5)
    caller.send_signal(signal.SIGINT)
    out, _ = caller.communicate(timeout=10)
    assert caller.returncode == 128 + signal.SIGINT
    answer = json.loads(out)
    assert answer["error"]["kind"] == "interrupted" and answer["stdout"] == "started\n"


NOBODY_CONNECTS = """
import json, socket, struct, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(sys.argv[1])
except OSError as error:
    print("refused", error.errno)
    sys.exit(0)
body = json.dumps({"op": "run", "argv": ["touch", sys.argv[2]], "json": True}).encode()
try:
    socket.send_fds(sock, [struct.pack("!I", len(body)) + body], [1, 2])
    print("answered" if sock.recv(100) else "closed")
except (BrokenPipeError, ConnectionResetError):
    # the supervisor closed it unanswered: before the request was sent (EPIPE) or after
    print("closed")
"""


def test_another_user_cannot_use_a_session(
    runtime: pathlib.Path, session: str, workspace: pathlib.Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user (setpriv to nobody)")
    path = runtime / "mechasandbox" / "sessions" / f"{session}.sock"
    assert path.stat().st_mode & 0o777 == 0o600
    for directory in (runtime / "mechasandbox", runtime / "mechasandbox" / "sessions"):
        assert directory.stat().st_mode & 0o777 == 0o700
    marker = workspace / "work" / "by-nobody"
    as_nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    attack = [*as_nobody, "/usr/bin/python3", "-c", NOBODY_CONNECTS, str(path), str(marker)]
    # the directories refuse it (0700): open the way to the socket, then the socket itself,
    # to see each next layer hold
    opened = [runtime, runtime / "mechasandbox", runtime / "mechasandbox" / "sessions"]
    modes = {p: p.stat().st_mode & 0o777 for p in opened}
    try:
        for directory in opened:
            directory.chmod(modes[directory] | 0o711)
        said = subprocess.run(attack, capture_output=True, timeout=30, check=False)
        assert said.stdout.split()[0] == b"refused", said  # the socket's mode 0600
        path.chmod(0o666)
        said = subprocess.run(attack, capture_output=True, timeout=30, check=False)
        assert said.stdout.strip() == b"closed", said  # SO_PEERCRED: not this user
    finally:
        path.chmod(0o600)
        for directory, mode in modes.items():
            directory.chmod(mode)
    assert not marker.exists()
    assert mecha(runtime, "session", "run", session, "--", "true").returncode == 0


def test_a_runtime_directory_others_may_write_is_refused(
    runtime: pathlib.Path, workspace: pathlib.Path
) -> None:
    require_session_agent()
    (runtime / "mechasandbox").mkdir(mode=0o700)
    (runtime / "mechasandbox").chmod(0o777)
    started = mecha(runtime, "session", "start", "--json", "--backend", "bubblewrap", cwd=workspace)
    assert started.returncode == 125
    error = json.loads(started.stdout)["error"]
    assert error["kind"] == "config_invalid" and "not a private directory" in error["message"]


def test_the_idle_timeout_ends_the_supervisor(
    runtime: pathlib.Path, workspace: pathlib.Path
) -> None:
    require_session_agent()
    started = mecha(
        runtime,
        "session",
        "start",
        "--json",
        "--backend",
        "bubblewrap",
        "--idle-timeout",
        "1",
        cwd=workspace,
    )
    if started.returncode != 0 and b"backend_unavailable" in started.stdout:
        pytest.skip(started.stdout.decode())
    info = json.loads(started.stdout)
    assert info["idle_timeout_s"] == 1.0 and info["max_lifetime_s"] == 8 * 3600
    assert _ends(info["pid"], within_s=15), "the supervisor outlives its idle timeout"
    assert alive_with_marker(str(workspace)) == []
    after = mecha(runtime, "session", "run", info["session"], "--", "true")
    assert after.returncode == 125


def test_bad_ids_and_verbs_are_usage_errors(runtime: pathlib.Path) -> None:
    for argv in (
        ["session", "run", "../../etc", "--", "true"],
        ["session", "frobnicate"],
        ["session", "run", "0123456789abcdef"],
    ):
        said = mecha(runtime, *argv)
        assert said.returncode == 125 and b"Traceback" not in said.stderr, (argv, said)
    assert socket is not None


def test_the_commands_own_words_never_change_how_session_run_answers(
    runtime: pathlib.Path,
) -> None:
    """`--json` after the `--` is the command's (`curl --json ...`): a failure of `session
    run` itself is still its error line on stderr, as `run`'s is; the option before the
    `--` gives the JSON object."""
    missing = "0123456789abcdef"
    words = mecha(runtime, "session", "run", missing, "--", "curl", "--json", "{}")
    assert words.returncode == 125 and words.stdout == b"", words
    assert words.stderr.startswith(b"mechasandbox: error: backend_failed:"), words.stderr
    lines = mecha(runtime, "session", "run", missing, "--", "sh", "-c", "echo --jsonl")
    assert lines.returncode == 125 and lines.stdout == b"", lines
    asked = mecha(runtime, "session", "run", missing, "--json", "--", "curl", "--jsonl")
    assert asked.returncode == 125
    assert json.loads(asked.stdout)["error"]["kind"] == "backend_failed"


def test_doctor_and_policy_describe_sessions(
    runtime: pathlib.Path, workspace: pathlib.Path
) -> None:
    agent = require_session_agent()
    doctor = json.loads(mecha(runtime, "doctor", "--json").stdout)["sessions"]
    assert {"bubblewrap", "landlock"} & set(doctor["backends"]) and doctor["agent"] == agent
    assert "process" not in doctor["backends"] and doctor["kept"] and doctor["per_command"]
    planned = mecha(
        runtime, "policy", "--json", "--backend", "bubblewrap", "--", "true", cwd=workspace
    )
    assert json.loads(planned.stdout)["session"]["supported"] is True
    one_shot = mecha(
        runtime, "policy", "--json", "--backend", "process", "--best-effort", "--", "true"
    )
    assert json.loads(one_shot.stdout)["session"]["supported"] is False


@pytest.mark.parametrize("backend", ["bubblewrap", "landlock"])
def test_allowlist_through_the_cli_reports_each_runs_own_refusals(
    runtime: pathlib.Path, workspace: pathlib.Path, backend: str
) -> None:
    require_session_agent()
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"upstream " + self.path.encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    # loopback only: an IP literal listed as IP:port needs no resolver
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    start = ["session", "start", "--backend", backend, "--host-processes", "visible"]
    allow = ["--network", "allowlist", "--allow-domain", f"127.0.0.1:{port}"]
    started = mecha(runtime, *start, *allow, cwd=workspace)
    if started.returncode != 0 and b"backend_unavailable" in started.stderr:
        server.shutdown()
        pytest.skip(started.stderr.decode())
    assert started.returncode == 0, started.stderr
    session_id = started.stdout.decode().strip()
    try:

        def curl(path: str, to: int = port) -> dict[str, object]:
            url = f"http://127.0.0.1:{to}{path}"
            ran = mecha(runtime, "session", "run", session_id, "--json", "--", "curl", "-sS", url)
            answer: dict[str, object] = json.loads(ran.stdout)
            return answer

        reached = curl("/first")
        assert reached["stdout"] == "upstream /first\n" and reached["violations"] == []
        refused = curl("/", to=port + 1 if port < 65535 else port - 1)
        assert "upstream" not in str(refused["stdout"])
        violations = refused["violations"]
        assert isinstance(violations, list) and len(violations) == 1, refused
        assert violations[0]["kind"] == "network" and "127.0.0.1" in violations[0]["detail"]
        again = curl("/again")
        assert again["stdout"] == "upstream /again\n" and again["violations"] == []
    finally:
        mecha(runtime, "session", "stop", session_id)
        server.shutdown()
        server.server_close()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def test_the_supervisor_ends_with_its_session_and_removes_its_log(
    runtime: pathlib.Path, session: str
) -> None:
    pid = supervisor_pid(runtime, session)
    (log,) = runtime.glob(f"**/{session}.log")
    assert mecha(runtime, "session", "run", session, "--", "true").returncode == 0
    agents = []
    for child in _descendants(pid):
        with contextlib.suppress(OSError), open(f"/proc/{child}/comm") as comm:
            # bubblewrap binds it at /run/mechasandbox/agent, landlock runs it as built
            if comm.read().strip() in ("agent", "mechasandbox-ag"):
                agents.append(child)
    assert agents, "the session's agent"
    for agent in agents:  # the session ends on its own (as when it fails closed)
        os.kill(agent, signal.SIGKILL)
    assert _ends(pid, within_s=10), "the supervisor lingers"
    assert not log.exists()
    after = mecha(runtime, "session", "run", session, "--", "true")
    assert after.returncode == 125
