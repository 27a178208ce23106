"""Reading refusals from what commands print: the path and the rule, across the formats of
common tools; the network hint's hosts; the toolchain root a spawn hint names."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.refusal_hints import _toolchain_root, offline_violation, spawn_hint
from mechasandbox.backends.refusals import filesystem_violations, refusal_view
from mechasandbox.domain import NetworkMode, NetworkPolicy, Policy, RunResult, SpawnFailed


def _host(home: str = "/home/dev") -> HostContext:
    return HostContext(env=(("PATH", "/usr/bin"),), home=home, uid=1000, gid=1000, platform="linux")


def _found(stderr: str, tmp_path: Path, *, closed: bool = False) -> dict[str, str]:
    workspace = str(tmp_path)
    view = refusal_view(
        "landlock",
        Policy(),
        _host(),
        workspace,
        system=("/usr", "/etc"),
        closed=(workspace,) if closed else (),
    )
    run = RunResult(backend="landlock", exit_code=1, signal=None, stderr=stderr.encode())
    return {v.detail.split(": ", 1)[0]: v.detail for v in filesystem_violations(run, view)}


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("sh: 1: cannot create .envrc: Read-only file system", ".envrc"),
        ("bash: line 1: .envrc: Permission denied", ".envrc"),
        ("touch: cannot touch '.envrc': Permission denied", ".envrc"),
        ("mkdir: cannot create directory \u2018.vscode\u2019: Read-only file system", ".vscode"),
        ("error: could not lock config file .git/config: Read-only file system", ".git/config"),
        ("fatal: cannot write '.git/config': Operation not permitted", ".git/config"),
        ("rm: cannot remove '.git/config': Device or resource busy", ".git/config"),
        ("OSError: [Errno 30] Read-only file system: '.git/hooks/x'", ".git/hooks/x"),
        ("Error: EACCES: permission denied, open '.env'", ".env"),
        ("mv: cannot move 'src/x' to '.envrc': Permission denied", ".envrc"),
    ],
)
def test_the_path_of_a_refusal_is_read_from_each_tools_format(
    line: str, path: str, tmp_path: Path
) -> None:
    found = _found(line, tmp_path)
    assert list(found) == [path]
    assert "filesystem.protected" in found[path]
    assert f"(the command reported: {line})" in found[path]


def test_lines_without_a_refusal_or_a_rule_are_left_alone(tmp_path: Path) -> None:
    assert _found("sh: 1: cannot open src/x: No such file", tmp_path) == {}
    assert _found("cat: src/x: Permission denied", tmp_path) == {}  # the workspace's own
    assert _found("warning: .envrc is old", tmp_path) == {}


def test_a_closed_top_level_and_paths_outside(tmp_path: Path) -> None:
    found = _found(
        "sed: couldn't open temporary file ./sedAb12: Permission denied\n"
        "touch: cannot touch '/usr/x': Permission denied\n"
        "cat: /home/dev/notes: Permission denied\n"
        "cat: /proc/1/environ: Permission denied\n",
        tmp_path,
        closed=True,
    )
    assert "the workspace's top level takes no new entry" in found["sedAb12"]
    assert "read-only in the sandbox" in found["/usr/x"]
    assert "outside what the sandbox shows" in found["/home/dev/notes"]
    assert "/proc/1/environ" not in found


def test_no_more_than_the_cap(tmp_path: Path) -> None:
    lines = "\n".join(f"touch: cannot touch '/usr/x{n}': Permission denied" for n in range(50))
    assert len(_found(lines, tmp_path)) == 20


@pytest.mark.parametrize(
    ("stderr", "hosts"),
    [
        ("curl: (6) Could not resolve host: example.com", ["example.com"]),
        (
            "WARNING: Retrying ... 'NewConnectionError(... Temporary failure in name "
            "resolution')': /simple/requests/",
            ["pypi.org", "files.pythonhosted.org"],
        ),
        (
            "npm ERR! request to https://registry.npmjs.org/x failed, reason: getaddrinfo "
            "EAI_AGAIN registry.npmjs.org",
            ["registry.npmjs.org"],
        ),
        ("dial tcp: lookup proxy.golang.org on [::1]:53: no such host", ["proxy.golang.org"]),
        ("socket.gaierror: [Errno -3] Temporary failure in name resolution", []),
    ],
)
def test_the_offline_hint_names_the_hosts_the_error_names(stderr: str, hosts: list[str]) -> None:
    run = RunResult(backend="bubblewrap", exit_code=1, signal=None, stderr=stderr.encode())
    found = offline_violation(run, Policy())
    assert found is not None
    assert found.kind == "network"
    expected = " ".join(f"--allow-domain {h}" for h in hosts) or "--allow-domain HOST"
    assert f"--network allowlist {expected} (" in found.detail


def test_no_offline_hint_with_network_or_success() -> None:
    stderr = b"curl: (6) Could not resolve host: example.com"
    failed = RunResult(backend="bubblewrap", exit_code=6, signal=None, stderr=stderr)
    full = Policy(network=NetworkPolicy(mode=NetworkMode.FULL))
    assert offline_violation(failed, full) is None
    ok = RunResult(backend="bubblewrap", exit_code=0, signal=None, stderr=stderr)
    assert offline_violation(ok, Policy()) is None


@pytest.mark.parametrize(
    ("path", "root"),
    [
        ("/home/dev/.pyenv/shims/pytest", "/home/dev/.pyenv"),
        ("/home/dev/.cargo/bin/cargo", "/home/dev/.cargo"),
        ("/home/dev/.local/bin/black", "/home/dev/.local/bin"),
        ("/opt/tool/bin/tool", "/opt/tool"),
        ("/srv/tools/tool", "/srv/tools"),
    ],
)
def test_the_toolchain_root_a_hint_names(path: str, root: str) -> None:
    assert _toolchain_root(path, "/home/dev") == root


def test_a_spawn_hint_only_for_what_the_sandbox_cannot_see(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tool = home / ".tool" / "bin" / "t"
    tool.parent.mkdir(parents=True)
    tool.touch(mode=0o755)
    host = HostContext(
        env=(("PATH", f"{tool.parent}:/usr/bin"),),
        home=str(home),
        uid=1000,
        gid=1000,
        platform="linux",
    )
    view = refusal_view("bubblewrap", Policy(), host, str(tmp_path / "ws"), system=("/usr",))
    error = SpawnFailed(command="t", reason="command not found on PATH", exit_status=127)
    hinted = spawn_hint(error, host, view)
    assert hinted.reason.endswith("--allow-read ~/.tool (filesystem.readable)"), hinted
    shown = SpawnFailed(command="sh", reason="command not found on PATH", exit_status=127)
    assert spawn_hint(shown, host, view) == shown  # /usr/bin/sh: the sandbox sees it


def _bubblewrap_found(stderr: str, tmp_path: Path, home: Path) -> dict[str, str]:
    """As bubblewrap sees it: the home an empty tmpfs, a toolchain in it bound read-only."""
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    policy = Policy()
    policy = attrs.evolve(
        policy,
        filesystem=attrs.evolve(policy.filesystem, readable=(str(home / ".pyenv"),)),
    )
    view = refusal_view(
        "bubblewrap",
        policy,
        _host(str(home)),
        str(workspace),
        system=("/usr", "/etc"),
        scratch=("/tmp", str(home)),
    )
    run = RunResult(backend="bubblewrap", exit_code=1, signal=None, stderr=stderr.encode())
    return {v.detail.split(": ", 1)[0]: v.detail for v in filesystem_violations(run, view)}


def test_a_secret_the_sandbox_hides_is_missing_inside_and_explained(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/id_rsa").write_text("key\n")
    (home / "notes").write_text("mine\n")
    found = _bubblewrap_found(
        f"cat: {home}/.ssh/id_rsa: No such file or directory\n"
        f"cat: {home}/notes: No such file or directory\n"
        f"cat: {home}/.ssh/id_ed25519: No such file or directory\n"  # not on the host either
        f"Error: ENOENT: no such file or directory, open '{tmp_path}/ws/gone'\n",
        tmp_path,
        home,
    )
    assert list(found) == [f"{home}/.ssh/id_rsa", f"{home}/notes"]
    assert "hidden: filesystem.deny_read '~/.ssh'" in found[f"{home}/.ssh/id_rsa"]
    assert "outside what the sandbox shows" in found[f"{home}/notes"]


def test_a_toolchain_bound_read_only_in_a_scratch_home_is_read_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    found = _bubblewrap_found(
        f"sh: 1: cannot create {home}/.pyenv/shims/x: Read-only file system\n"
        f"touch: cannot touch '{home}/scratch': Read-only file system\n",
        tmp_path,
        home,
    )
    assert list(found) == [f"{home}/.pyenv/shims/x"]
    assert "read-only in the sandbox" in found[f"{home}/.pyenv/shims/x"]


@pytest.mark.parametrize(
    ("stderr", "address"),
    [
        ("curl: (7) Failed to connect to localhost port 8080 after 0 ms: Connection refused",
         "127.0.0.1:8080"),
        ("Connecting to 127.0.0.1:5432... failed: Connection refused.", "127.0.0.1:5432"),
        ("ConnectionRefusedError: [Errno 111] Connection refused", "127.0.0.1:PORT"),
        ("Error: connect ECONNREFUSED ::1:3000", "127.0.0.1:3000"),
    ],
)  # fmt: skip
def test_a_refused_loopback_connection_names_the_one_address_to_allow(
    stderr: str, address: str
) -> None:
    run = RunResult(backend="bubblewrap", exit_code=7, signal=None, stderr=stderr.encode())
    found = offline_violation(run, Policy())
    assert found is not None
    assert "not reachable from it" in found.detail
    assert found.detail.endswith(f"--network allowlist --allow-domain {address}")
    full = Policy(network=NetworkPolicy(mode=NetworkMode.FULL))
    assert offline_violation(run, full) is None
