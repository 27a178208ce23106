"""The seccomp program builder: structure, and behaviour once loaded in a real process."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import mechasandbox
from mechasandbox.backends.linux import seccomp

SRC = str(Path(mechasandbox.__file__).resolve().parents[1])


def _instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("<HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]


def test_program_starts_with_an_architecture_check_and_kills_unknown_ones() -> None:
    insns = _instructions(seccomp.build_filter())
    assert insns[0] == (0x20, 0, 0, 4)  # ld [arch]
    assert insns[1][3] == seccomp.AUDIT_ARCH_X86_64
    assert insns[3][3] == seccomp.AUDIT_ARCH_AARCH64
    assert insns[5] == (0x06, 0, 0, seccomp.RET_KILL_PROCESS)
    assert insns[-1] == (0x06, 0, 0, seccomp.RET_ALLOW)  # default allow


def test_every_jump_stays_inside_the_program() -> None:
    insns = _instructions(seccomp.build_filter())
    for index, (code, jt, jf, k) in enumerate(insns):
        if code & 0x07 == 0x05:  # BPF_JMP
            targets = [index + 1 + k] if code == 0x05 else [index + 1 + jt, index + 1 + jf]
            assert all(target < len(insns) for target in targets)


def test_unknown_or_argument_checked_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no_such_call"):
        seccomp.build_filter(["no_such_call"])
    with pytest.raises(ValueError, match="socket"):
        seccomp.build_filter(["socket"])


def test_listed_calls_change_the_program() -> None:
    assert seccomp.build_filter(["ptrace"]) != seccomp.build_filter(["ptrace", "mount"])


def test_summary_names_the_denied_calls_and_families() -> None:
    text = seccomp.summary()
    assert "ptrace" in text
    assert "AF_UNIX" in text


_PROBE = r"""
import ctypes, errno, os, socket, sys
from mechasandbox.backends.linux import seccomp, seccomp_install
seccomp_install.install(seccomp.build_filter())
libc = ctypes.CDLL(None, use_errno=True)
def err(result):
    return ctypes.get_errno() if result == -1 else 0
print("unshare", err(libc.unshare(0x10000000)))
print("ptrace", err(libc.ptrace(0, 0, 0, 0)))
try:
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    print("vsock", 0)
except OSError as e:
    print("vsock", e.errno)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.close(); print("unix", 0)
path = sys.argv[1]
try:
    os.mkfifo(path + "/fifo")
    print("mkfifo", 0)
except OSError as e:
    print("mkfifo", e.errno)
open(path + "/f", "w").close()
try:
    os.chmod(path + "/f", 0o4755)
    print("setuid", 0)
except OSError as e:
    print("setuid", e.errno)
os.chmod(path + "/f", 0o755); print("chmod", 0)
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux-only")
def test_loaded_program_denies_what_it_lists(tmp_path: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path)],
        capture_output=True,
        env={"PYTHONPATH": SRC, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=True,
        timeout=30,
    )
    results = dict(line.split() for line in ran.stdout.decode().splitlines())
    assert results == {
        "unshare": "1",  # EPERM
        "ptrace": "1",
        "vsock": "97",  # EAFNOSUPPORT
        "unix": "0",
        "mkfifo": "1",
        "setuid": "1",
        "chmod": "0",
        "fork": "7",
    }
    assert not (tmp_path / "fifo").exists()
    assert not os.stat(tmp_path / "f").st_mode & 0o4000


_PAIRS = r"""
import socket
from mechasandbox.backends.linux import seccomp, seccomp_install
seccomp_install.install(seccomp.build_filter(deny_socket_families_except=(socket.AF_INET,)))
for name in ("SOCK_STREAM", "SOCK_SEQPACKET", "SOCK_DGRAM"):
    try:
        socket.socketpair(socket.AF_UNIX, getattr(socket, name) | socket.SOCK_CLOEXEC)
        print(name, 0)
    except OSError as e:
        print(name, e.errno)
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    print("unix", 0)
except OSError as e:
    print("unix", e.errno)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux-only")
def test_without_af_unix_only_connected_socketpairs_remain() -> None:
    """A datagram pair could sendto() any path socket of the host."""
    ran = subprocess.run(
        [sys.executable, "-c", _PAIRS],
        capture_output=True,
        env={"PYTHONPATH": SRC, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=True,
        timeout=30,
    )
    results = dict(line.split() for line in ran.stdout.decode().splitlines())
    assert results == {"SOCK_STREAM": "0", "SOCK_SEQPACKET": "0", "SOCK_DGRAM": "1", "unix": "97"}
    assert "socketpair: stream and seqpacket only" in seccomp.summary(
        deny_socket_families_except=(socket.AF_INET,)
    )
