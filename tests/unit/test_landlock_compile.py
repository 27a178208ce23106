"""Golden tests of the pure parts of the landlock backend: ruleset, seccomp, capabilities."""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import attrs
import pytest

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.linux import seccomp
from mechasandbox.backends.linux.landlock import capabilities_for
from mechasandbox.backends.linux.landlock_compiler import (
    FS_IOCTL_DEV,
    FS_MAKE_BLOCK,
    FS_MAKE_CHAR,
    FS_REFER,
    FS_TRUNCATE,
    NET_BIND_TCP,
    NET_CONNECT_TCP,
    READ,
    SCOPE_ABSTRACT_UNIX_SOCKET,
    SCOPE_SIGNAL,
    WRITE,
    compile_landlock_rules,
    handled_fs_for,
    seccomp_filter,
)
from mechasandbox.backends.linux.landlock_rules import READ_DIR, expand_rules
from mechasandbox.domain import (
    EnvironmentPolicy,
    FilesystemPolicy,
    HostProcesses,
    NetworkMode,
    NetworkPolicy,
    Policy,
    Protection,
    RunRequest,
)

HOST = HostContext(
    env=(("HOME", "/home/dev"), ("OPENAI_API_KEY", "sk-secret"), ("PATH", "/usr/bin:/bin")),
    home="/home/dev",
    uid=1000,
    gid=1000,
    platform="linux",
)
REQUEST = RunRequest(argv=["true"], workspace="/work/project")


DEFAULT_POLICY = Policy()


def compile_default(policy: Policy = DEFAULT_POLICY, **kwargs: object) -> str:
    ruleset = compile_landlock_rules(
        REQUEST,
        policy,
        HOST,
        tmp_dir="/tmp/run-1",
        **kwargs,  # type: ignore[arg-type]
    )
    return ruleset.render_rules()


GOLDEN_RULES = """\
/usr: read+exec
/bin: read+exec
/sbin: read+exec
/lib: read+exec
/lib32: read+exec
/lib64: read+exec
/libx32: read+exec
/etc: read+exec
/opt: read+exec
/nix/store: read+exec
/proc: read_file|read_dir
/dev/null: write_file|read_file
/dev/zero: write_file|read_file
/dev/full: write_file|read_file
/dev/random: write_file|read_file
/dev/urandom: write_file|read_file
/tmp/run-1: read+write+exec (required)
/work/project: read+write+exec (required)
  except /work/project/.bash_profile: read+exec
  except /work/project/.bashrc: read+exec
  except /work/project/.env: read+exec
  except /work/project/.envrc: read+exec
  except /work/project/.git/commondir: read+exec
  except /work/project/.git/config: read+exec
  except /work/project/.git/config.worktree: read+exec
  except /work/project/.git/hooks: read+exec
  except /work/project/.git/info: read+exec
  except /work/project/.git/modules: read+exec
  except /work/project/.git/worktrees: read+exec
  except /work/project/.gitmodules: read+exec
  except /work/project/.idea: read+exec
  except /work/project/.mechasandbox.toml: read+exec
  except /work/project/.openagents: read+exec
  except /work/project/.profile: read+exec
  except /work/project/.vscode: read+exec
  except /work/project/.zprofile: read+exec
  except /work/project/.zshrc: read+exec"""


def test_default_policy_golden() -> None:
    assert compile_default() == GOLDEN_RULES


def test_home_is_not_granted_and_nothing_outside_the_list() -> None:
    rules = compile_landlock_rules(REQUEST, Policy(), HOST, tmp_dir="/tmp/run-1").rules
    assert not [r for r in rules if r.path.startswith("/home")]
    writable = sorted(r.path for r in rules if r.access & ~READ)
    assert writable == [
        "/dev/full",
        "/dev/null",
        "/dev/random",
        "/dev/urandom",
        "/dev/zero",
        "/tmp/run-1",
        "/work/project",
    ]


def test_writable_trees_never_grant_devices() -> None:
    assert not WRITE & (FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_IOCTL_DEV)


def test_without_carving_the_workspace_is_granted_whole() -> None:
    text = compile_default(carve_protected=False)
    assert "/work/project: read+write+exec (required)" in text
    assert "except" not in text


def test_deny_read_inside_a_readable_root_is_carved_and_deny_wins() -> None:
    policy = Policy(
        filesystem=FilesystemPolicy(readable=("~",), writable=("~/.ssh/sockets",), protected=())
    )
    text = compile_default(policy)
    assert "/home/dev: read+exec\n  except /home/dev/.aws: none" in text
    assert "  except /home/dev/.ssh: none" in text
    assert "/home/dev/.ssh/sockets" not in text  # writable inside a denied path: dropped


def test_a_writable_rule_above_the_workspace_carves_the_protected_paths() -> None:
    """Landlock adds the rights of every rule on a path's way up: a writable home around
    the workspace would undo the workspace's carving."""
    policy = Policy(filesystem=FilesystemPolicy(writable=("/work",), readable=("/srv",)))
    rules = {r.path: r for r in compile_landlock_rules(REQUEST, policy, HOST).rules}
    assert ("/work/project/.git/config", READ) in rules["/work"].exclusions
    assert ("/work/project/.envrc", READ) in rules["/work"].exclusions
    assert rules["/srv"].exclusions == ()  # reading grants nothing a protected path lacks


def test_a_path_excluded_twice_keeps_the_narrowest_rights(tmp_path: Path) -> None:
    """Denied reading and protected (read-only): nothing is granted on it."""
    (tmp_path / ".env").write_text("")
    (tmp_path / "src").mkdir()
    root = str(tmp_path)
    for order in ((0, READ), (READ, 0)):
        exclusions = [[f"{root}/.env", access] for access in order]
        assert expand_rules([[root, WRITE, True, exclusions]]) == [
            (root, READ_DIR),
            (f"{root}/src", WRITE),
        ]


def test_deny_write_keeps_read() -> None:
    policy = Policy(filesystem=FilesystemPolicy(deny_write=("/work/project/vendor",), protected=()))
    assert "  except /work/project/vendor: read+exec" in compile_default(policy)


@pytest.mark.parametrize(
    ("abi", "refer", "truncate", "ioctl"),
    [
        (1, False, False, False),
        (2, True, False, False),
        (3, True, True, False),
        (5, True, True, True),
        (7, True, True, True),
    ],
)
def test_handled_rights_follow_the_abi(abi: int, refer: bool, truncate: bool, ioctl: bool) -> None:
    handled = handled_fs_for(abi)
    assert bool(handled & FS_REFER) is refer
    assert bool(handled & FS_TRUNCATE) is truncate
    assert bool(handled & FS_IOCTL_DEV) is ioctl
    ruleset = compile_landlock_rules(REQUEST, Policy(), HOST, abi=abi)
    assert all(r.access & ~handled == 0 for r in ruleset.rules)


@pytest.mark.parametrize(
    ("abi", "mode", "net", "scoped"),
    [
        (3, NetworkMode.NONE, 0, 0),
        (4, NetworkMode.NONE, NET_BIND_TCP | NET_CONNECT_TCP, 0),
        (
            6,
            NetworkMode.NONE,
            NET_BIND_TCP | NET_CONNECT_TCP,
            SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET,
        ),
        (7, NetworkMode.FULL, 0, SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET),
    ],
)
def test_network_and_scopes(abi: int, mode: NetworkMode, net: int, scoped: int) -> None:
    policy = Policy(network=NetworkPolicy(mode=mode))
    ruleset = compile_landlock_rules(REQUEST, policy, HOST, abi=abi)
    assert (ruleset.handled_net, ruleset.scoped, ruleset.net_rules) == (net, scoped, ())
    # never AF_UNIX (1): full network is the internet, not the host's unix sockets
    families = (2, 10) if mode is NetworkMode.FULL else ()
    assert ruleset.seccomp.socket_families == families


@pytest.mark.parametrize("mode", list(NetworkMode))
def test_named_unix_sockets_open_af_unix(mode: NetworkMode) -> None:
    network = NetworkPolicy(mode=mode, allow_unix_sockets=("/run/user/1000/agent.sock",))
    ruleset = compile_landlock_rules(
        REQUEST, Policy(network=network), HOST, abi=7, proxy=(3128, "http://127.0.0.1:3128")
    )
    assert ruleset.seccomp.socket_families[0] == 1
    assert ruleset.scoped & SCOPE_ABSTRACT_UNIX_SOCKET


def test_named_unix_sockets_are_not_enforced_by_landlock() -> None:
    capabilities = capabilities_for(7, "no cgroups", 1000)
    assert Protection.NAMED_UNIX_SOCKETS not in capabilities.enforced
    named = Policy(
        host_processes=HostProcesses.VISIBLE,
        network=NetworkPolicy(mode=NetworkMode.FULL, allow_unix_sockets=("/s",)),
    )
    assert Protection.NAMED_UNIX_SOCKETS in capabilities.missing(named)
    assert Protection.NAMED_UNIX_SOCKETS not in capabilities.missing(
        attrs.evolve(named, network=NetworkPolicy(mode=NetworkMode.FULL))
    )


def test_environment_is_scrubbed_and_tmp_is_private() -> None:
    policy = Policy(environment=EnvironmentPolicy(set=(("FOO", "bar"),)))
    env = dict(compile_landlock_rules(REQUEST, policy, HOST, tmp_dir="/tmp/run-1").env)
    assert env == {
        "FOO": "bar",
        "PATH": "/usr/bin:/bin",
        "TMPDIR": "/tmp/run-1",
        "TMP": "/tmp/run-1",
        "TEMP": "/tmp/run-1",
    }


def test_hook_argument_is_json_shaped() -> None:
    argument = compile_landlock_rules(REQUEST, Policy(), HOST).to_hook_argument()
    assert argument["abi"] == 7
    assert base64.b64decode(str(argument["seccomp"]))[:8] == struct.pack("<HBBI", 0x20, 0, 0, 4)


# --- seccomp (the shared program, as landlock configures it) ---------------------------------
AUDIT_ARCH = {"x86_64": seccomp.AUDIT_ARCH_X86_64, "aarch64": seccomp.AUDIT_ARCH_AARCH64}


def _decode(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("<HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]


def _run_filter(program: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """A tiny interpreter of the instructions the builder emits."""
    data = struct.pack("<iI", nr, arch) + b"\0" * 8
    data += b"".join(struct.pack("<Q", a) for a in (*args, 0, 0, 0, 0, 0, 0)[:6])
    instructions = _decode(program)
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = instructions[pc]
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x06:  # ret k
            return k
        elif code == 0x54:  # and k
            acc &= k
            pc += 1
        elif code == 0x05:  # ja k
            pc += 1 + k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)


def _nr(name: str, machine: str) -> int:
    number = seccomp.SYSCALLS[name][0 if machine == "x86_64" else 1]
    assert number is not None
    return number


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_semantics(machine: str) -> None:
    program = seccomp_filter(()).instructions
    arch = AUDIT_ARCH[machine]

    def nr(name: str) -> int:
        return _nr(name, machine)

    eperm, allow, eafnosupport = 0x50000 | 1, 0x7FFF0000, 0x50000 | 97
    assert _run_filter(program, 0x3E, 0x40000003) == 0x80000000  # i386: killed
    for name in ("ptrace", "chroot", "unshare", "mount", "mknodat", "io_uring_setup", "bpf"):
        assert _run_filter(program, nr(name), arch) == eperm, name
    assert _run_filter(program, nr("clone3"), arch) == 0x50000 | 38  # ENOSYS
    assert _run_filter(program, nr("socket"), arch, (1,)) == eafnosupport
    assert _run_filter(program, nr("socket"), arch, (2,)) == eafnosupport
    assert _run_filter(program, nr("clone"), arch, (0x11,)) == allow
    assert _run_filter(program, nr("clone"), arch, (0x10000000,)) == eperm
    assert _run_filter(program, nr("ioctl"), arch, (0, 0x5412)) == eperm
    assert _run_filter(program, nr("ioctl"), arch, (0, 0x5401)) == allow
    assert _run_filter(program, nr("fchmodat"), arch, (0, 0, 0o4755)) == eperm
    assert _run_filter(program, nr("fchmodat"), arch, (0, 0, 0o755)) == allow
    assert _run_filter(program, 0, arch) == allow  # read on x86_64 / io_setup on aarch64
    if machine == "x86_64":
        assert _run_filter(program, 0x40000000 | 1, arch) == eperm  # x32
    full = seccomp_filter((1, 2, 10)).instructions
    for family, verdict in ((1, allow), (2, allow), (10, allow), (16, eafnosupport)):
        assert _run_filter(full, nr("socket"), arch, (family,)) == verdict


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_stream_only_allows_ipv4_tcp_and_nothing_else(machine: str) -> None:
    program = seccomp_filter((2,), stream_only=True).instructions
    arch, socket_nr = AUDIT_ARCH[machine], _nr("socket", machine)
    eperm, allow, eafnosupport = 0x50000 | 1, 0x7FFF0000, 0x50000 | 97
    nonblock_cloexec = 0o4000 | 0o2000000
    cases = (
        ((2, 1, 0), allow),  # AF_INET, SOCK_STREAM
        ((2, 1 | nonblock_cloexec, 6), allow),  # ... with flags, IPPROTO_TCP
        ((2, 2, 0), eperm),  # SOCK_DGRAM: no UDP, so no DNS
        ((2, 3, 1), eperm),  # SOCK_RAW
        ((2, 1, 132), eperm),  # SCTP stream
        ((2, 1, 262), eperm),  # MPTCP
        ((10, 1, 0), eafnosupport),  # IPv6
        ((1, 1, 0), eafnosupport),  # unix
    )
    for args, verdict in cases:
        assert _run_filter(program, socket_nr, arch, args) == verdict, args


# --- carving (child side, on a real tree) -----------------------------------------------------
def test_expand_rules_carves_around_exclusions(tmp_path: Path) -> None:
    (tmp_path / ".git" / "hooks").mkdir(parents=True)
    (tmp_path / ".git" / "objects").mkdir()
    (tmp_path / ".git" / "config").write_text("")
    (tmp_path / "src").mkdir()
    (tmp_path / "README").write_text("")
    os.symlink("/etc", tmp_path / "link")
    root = str(tmp_path)
    exclusions = [
        [f"{root}/.git/hooks", READ],
        [f"{root}/.git/config", READ],
        [f"{root}/.envrc", READ],
    ]
    rules = expand_rules([[root, WRITE, True, exclusions], ["/nonexistent", READ, False, []]])
    assert rules == [
        (root, READ),
        (f"{root}/.git", READ),
        (f"{root}/.git/config", READ),
        (f"{root}/.git/hooks", READ),
        (f"{root}/.git/objects", WRITE),
        (f"{root}/README", WRITE),
        (f"{root}/src", WRITE),
        ("/nonexistent", READ),  # not looked for: whoever opens it skips it
    ]


def test_expand_rules_residual_none_keeps_listing_only(tmp_path: Path) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / "notes").write_text("")
    rules = expand_rules([[str(tmp_path), READ, True, [[f"{tmp_path}/.ssh", 0]]]])
    assert rules == [(str(tmp_path), 1 << 3), (f"{tmp_path}/notes", READ)]


# --- capabilities per ABI ---------------------------------------------------------------------
def test_capabilities_follow_the_abi() -> None:
    full = capabilities_for(7, "no cgroup here", 1000)
    assert Protection.PID_ISOLATION in full.enforced  # signal scope at ABI >= 6
    assert Protection.HOST_PROCESSES_HIDDEN not in full.enforced
    assert Protection.NETWORK_ALLOWLIST in full.enforced  # TCP port rules at ABI >= 4
    assert "ports, not addresses" in (full.detail(Protection.NETWORK_ALLOWLIST) or "")
    assert {Protection.FILESYSTEM_WRITE, Protection.PROTECTED_PATHS} <= full.enforced
    old = capabilities_for(2, "no cgroup here", 1000)
    assert Protection.FILESYSTEM_WRITE not in old.enforced
    assert Protection.PID_ISOLATION not in old.enforced
    assert Protection.NETWORK_ALLOWLIST not in old.enforced
    assert "truncate" in (old.detail(Protection.FILESYSTEM_WRITE) or "")
    assert any("signalled" in w for w in old.warnings)
    root = capabilities_for(7, "no cgroup here", 0)
    assert Protection.PROCESSES not in root.enforced
    uncarved = capabilities_for(7, "no cgroup here", 1000, carve_protected=False)
    assert Protection.PROTECTED_PATHS not in uncarved.enforced
    assert Policy().enforcement.value == "strict"
    assert full.missing(Policy()) == (Protection.HOST_PROCESSES_HIDDEN,)
    assert full.missing(Policy(host_processes=HostProcesses.VISIBLE)) == ()
