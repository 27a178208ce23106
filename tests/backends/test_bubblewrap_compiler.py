"""The bwrap argv compiler, fed hand-written host facts: no bwrap, no filesystem."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Mapping

import attrs
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.linux.bubblewrap import _signal_decoded
from mechasandbox.backends.linux.bwrap_compiler import BwrapCommand, compile_bwrap
from mechasandbox.backends.linux.bwrap_hooks import seccomp_program, unix_socket_plan
from mechasandbox.backends.linux.bwrap_layout import BwrapFeatures, HostLayout, PathFact, PathKind
from mechasandbox.backends.linux.bwrap_mounts import paths_to_survey
from mechasandbox.backends.linux.landlock_rules import SCOPE_TARGET
from mechasandbox.backends.unix_sockets import NO_NAMED_SOCKETS, NamedSockets
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import (
    Enforcement,
    FilesystemPolicy,
    NetworkMode,
    NetworkPolicy,
    Policy,
)
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import Usage
from mechasandbox.runner.spec import ProcessOutcome

HOST = HostContext(
    env=(("HOME", "/home/ada"),), home="/home/ada", uid=1000, gid=1000, platform="linux"
)
WS = "/home/ada/proj"
DIR = PathFact(kind=PathKind.DIRECTORY)
FILE = PathFact(kind=PathKind.FILE)
MISSING = PathFact(kind=PathKind.MISSING)
FEATURES = BwrapFeatures(path="/usr/bin/bwrap", version=(0, 8, 0))
SMALL = FilesystemPolicy(
    deny_read=("~/.ssh", "~/.netrc"), protected=(".git/hooks", ".git/config", ".envrc")
)
# Some of the kernel interfaces a host's /proc and /sys have (the others missing here).
KERNEL = {
    "/proc/sys": DIR,
    "/proc/irq": DIR,
    "/proc/sysrq-trigger": FILE,
    "/proc/acpi": DIR,
    "/proc/kcore": FILE,
    "/proc/slabinfo": FILE,
    "/sys": DIR,
    "/sys/firmware": DIR,
}


def layout(
    policy: Policy, workspace: str = WS, overrides: Mapping[str, PathFact] | None = None
) -> HostLayout:
    """Every surveyed path missing, except the merged-usr system and what is given."""
    facts = dict.fromkeys(paths_to_survey(workspace, policy, HOST), MISSING)
    facts.update(
        {
            "/usr": DIR,
            "/etc": DIR,
            "/bin": PathFact(
                kind=PathKind.SYMLINK, link="usr/bin", real="/usr/bin", real_kind=PathKind.DIRECTORY
            ),
            "/lib": PathFact(
                kind=PathKind.SYMLINK, link="usr/lib", real="/usr/lib", real_kind=PathKind.DIRECTORY
            ),
            "/home/ada": DIR,
            "/etc/shadow": FILE,
            **KERNEL,
            workspace: DIR,
        }
    )
    facts.update(overrides or {})
    return HostLayout(facts=tuple(sorted(facts.items())), etc_secrets=("/etc/shadow",))


def compile_ok(policy: Policy, facts: HostLayout, workspace: str = WS) -> BwrapCommand:
    request = RunRequest(argv=["echo", "hi"], workspace=workspace)
    compiled = compile_bwrap(
        request, policy, HOST, workspace=workspace, layout=facts, features=FEATURES
    )
    assert isinstance(compiled, Success), compiled
    command: BwrapCommand = compiled.unwrap()
    return command


GOLDEN = """
/usr/bin/bwrap --unshare-user --unshare-all --disable-userns --cap-drop ALL --die-with-parent
--new-session --seccomp 3 --clearenv --args 4 --chdir /home/ada/proj
--ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --ro-bind /etc /etc
--proc /proc --dev /dev
--perms 1777 --tmpfs /tmp --perms 1777 --tmpfs /var/tmp --perms 1777 --tmpfs /dev/shm
--perms 0700 --tmpfs /home/ada
--bind /home/ada/proj /home/ada/proj
--bind /home/ada/proj/.git /home/ada/proj/.git
--ro-bind /home/ada/proj/.git/hooks /home/ada/proj/.git/hooks
--ro-bind /home/ada/proj/.git/config /home/ada/proj/.git/config
--perms 0555 --tmpfs /home/ada/proj/.envrc --remount-ro /home/ada/proj/.envrc
--ro-bind /proc/irq /proc/irq --ro-bind /proc/sys /proc/sys
--ro-bind /proc/sysrq-trigger /proc/sysrq-trigger
--perms 0555 --tmpfs /proc/acpi --remount-ro /proc/acpi --ro-bind /dev/null /proc/kcore
--ro-bind /dev/null /etc/shadow
-- echo hi
"""


GIT_WORKSPACE = {
    "/home/ada/proj/.git": DIR,
    "/home/ada/proj/.git/hooks": DIR,
    "/home/ada/proj/.git/config": FILE,
}


def test_golden_argv_for_a_git_workspace_in_home() -> None:
    policy = Policy(filesystem=SMALL)
    facts = layout(policy, overrides=GIT_WORKSPACE)
    request = RunRequest(argv=["echo", "hi"], workspace=WS)
    compiled = compile_bwrap(request, policy, HOST, workspace=WS, layout=facts, features=FEATURES)
    assert compiled.map(lambda command: command.argv) == Success(tuple(shlex.split(GOLDEN)))


def test_the_environment_is_read_from_a_descriptor_never_from_the_argv() -> None:
    """bwrap clears its own environment and reads the command's as `--setenv` arguments
    from fd 4: values are on no command line, in the order given, NUL-terminated."""
    policy = Policy(filesystem=SMALL)
    request = RunRequest(argv=["echo", "hi"], workspace=WS)
    environment = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": "/x/evil.so", "EMPTY": ""}
    compiled = compile_bwrap(
        request,
        policy,
        HOST,
        workspace=WS,
        layout=layout(policy),
        features=FEATURES,
        environment=environment,
    ).unwrap()
    assert compiled.argv[compiled.argv.index("--clearenv") :][:3] == ("--clearenv", "--args", "4")
    assert not any("evil" in argument for argument in compiled.argv)
    assert compiled.arguments_on_fd == (
        b"--setenv\0EMPTY\0\0--setenv\0LD_PRELOAD\0/x/evil.so\0--setenv\0PATH\0/usr/bin:/bin\0"
    )
    assert compiled.describe_environment().splitlines() == [
        "--setenv EMPTY \u2026",
        "--setenv LD_PRELOAD \u2026",
        "--setenv PATH \u2026",
    ]
    assert "evil" not in repr(compiled)


def test_a_variable_that_would_become_bwrap_options_is_refused() -> None:
    """A NUL byte (a TOML string can hold one) would end the value's argument early and
    turn the rest into bwrap options of the policy's choosing: `--bind / /...`."""
    policy = Policy(filesystem=SMALL)
    request = RunRequest(argv=["true"], workspace=WS)
    for environment in (
        {"INNOCENT": "x\0--bind\0/\0/home/ada/proj/host"},
        {"A\0--bind": "x"},
        {"A=B": "x"},
        {"": "x"},
    ):
        compiled = compile_bwrap(
            request,
            policy,
            HOST,
            workspace=WS,
            layout=layout(policy),
            features=FEATURES,
            environment=environment,
        )
        assert isinstance(compiled, Failure), environment
        assert isinstance(compiled.failure(), ConfigInvalid)
        assert compiled.failure().field == "environment"


def test_the_guards_are_the_pins_and_masks_of_existing_host_paths() -> None:
    """What is watched during a run for a replacement on the host (see `guards`): pins and
    masks, not the trees the sandbox sees (the backend adds the placeholders, which it
    makes itself)."""
    policy = Policy(filesystem=SMALL)
    assert compile_ok(policy, layout(policy, overrides=GIT_WORKSPACE)).guards == (
        ("/home/ada/proj/.git", "write"),
        ("/home/ada/proj/.git/hooks", "write"),
        ("/home/ada/proj/.git/config", "write"),
        ("/etc/shadow", "read"),
    )


def test_kernel_interfaces_in_proc_are_read_only_or_masked_where_the_host_has_them() -> None:
    """bwrap's fresh /proc shows the kernel's settings (/proc/sys...), which a root
    caller's sandbox could write; /sys is not mounted, so nothing is put over it. Only
    paths the host has are covered (bwrap cannot make a mount point in procfs)."""
    policy = Policy(filesystem=SMALL)
    command = compile_ok(policy, layout(policy))
    kernel = [m.dest for m in command.mounts if m.dest.startswith(("/proc/", "/sys"))]
    assert kernel == [
        "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", "/proc/acpi", "/proc/kcore"
    ]  # fmt: skip
    assert command.argv.index("/proc/sys") > command.argv.index("--proc")
    assert not command.visible("/proc/kcore")
    # A root caller's sandbox is host root to files of mode 0400: those are masked too.
    root = attrs.evolve(HOST, uid=0)
    request = RunRequest(argv=["true"], workspace=WS)
    as_root = compile_bwrap(request, policy, root, workspace=WS, layout=layout(policy))
    argv = " ".join(as_root.unwrap().argv)
    assert "--ro-bind /dev/null /proc/kcore --ro-bind /dev/null /proc/slabinfo" in argv
    assert "/proc/slabinfo" not in command.argv
    # a host without them (another kernel, another configuration): nothing to cover
    bare = layout(policy, overrides=dict.fromkeys(KERNEL, MISSING))
    assert not any(a.startswith("/proc/") for a in compile_ok(policy, bare).argv)


def test_a_policy_cannot_uncover_the_kernel_interfaces() -> None:
    """A /proc or /sys that a policy's readable paths bind from the host gets the same
    covers, after those binds (a later mount wins); a writable one is refused."""
    fs = FilesystemPolicy(readable=("/sys", "/proc", "/proc/sys"), protected=())
    policy = Policy(filesystem=fs)
    argv = " ".join(compile_ok(policy, layout(policy, overrides={"/proc": DIR})).argv)
    assert argv.count("--ro-bind /proc/sys /proc/sys") == 2  # the policy's, then the cover
    assert "--ro-bind /sys /sys" in argv
    assert "--perms 0555 --tmpfs /sys/firmware --remount-ro /sys/firmware" in argv
    assert argv.rindex("--ro-bind /proc/sys") > argv.index("--ro-bind /proc /proc")
    for writable in ("/proc", "/proc/sys", "/sys", "/sys/kernel", "/dev/shm"):
        wfs = FilesystemPolicy(writable=(writable,), protected=())
        wpolicy = Policy(filesystem=wfs)
        refused = compile_bwrap(
            RunRequest(argv=["true"], workspace=WS),
            wpolicy,
            HOST,
            workspace=WS,
            layout=layout(wpolicy, overrides={writable: DIR}),
        )
        assert isinstance(refused, Failure), writable
        assert "kernel interface" in refused.failure().problem


def test_a_readable_root_gets_the_sandboxs_own_proc_dev_and_tmp_over_it() -> None:
    """`readable = ["/"]` would show the host's /proc (its processes), /dev and /tmp: they
    are made again right after that bind, before the workspace under /tmp; a bind of
    /var/tmp itself is kept (shared on purpose)."""
    fs = FilesystemPolicy(readable=("/",), writable=("/var/tmp",), protected=())
    policy = Policy(filesystem=fs)
    ws = "/tmp/proj"
    facts = layout(policy, workspace=ws, overrides={"/": DIR, "/var/tmp": DIR})
    command = compile_ok(policy, facts, workspace=ws)
    after_root = command.mounts[[m.dest for m in command.mounts].index("/") :]
    assert [" ".join(m.args) for m in after_root[:8]] == [
        "--ro-bind / /",
        "--proc /proc",
        "--dev /dev",
        "--perms 1777 --tmpfs /tmp",
        "--perms 0700 --tmpfs /home/ada",
        "--bind /var/tmp /var/tmp",
        "--bind /tmp/proj /tmp/proj",
        "--perms 1777 --tmpfs /dev/shm",
    ]
    assert command.visible("/tmp/proj/main.py") and not command.visible("/tmp/other")
    assert not command.visible("/proc/1/environ")


def test_missing_protected_paths_get_placeholders_at_the_first_missing_component() -> None:
    command = compile_ok(Policy(filesystem=SMALL), layout(Policy(filesystem=SMALL)))
    # no .git at all: .git itself is covered, so `git init` cannot plant hooks or config
    assert command.placeholders == ("/home/ada/proj/.git", "/home/ada/proj/.envrc")
    argv = " ".join(command.argv)
    assert "--perms 0555 --tmpfs /home/ada/proj/.git --remount-ro /home/ada/proj/.git" in argv
    assert "--bind /home/ada/proj/.git" not in argv


def test_a_missing_git_redirection_is_covered_by_a_file_a_submodules_dir_by_a_directory() -> None:
    """`.git/commondir` and `.git/config.worktree` are read by git as files: their covers
    are the files the host makes (pinned read-only like existing ones); `.git/modules` is
    covered like any missing directory. With no `.git` at all, `.git` covers them all."""
    protected = (".git/commondir", ".git/modules", ".git/config.worktree")
    policy = Policy(filesystem=attrs.evolve(SMALL, protected=protected))
    command = compile_ok(policy, layout(policy, overrides={f"{WS}/.git": DIR}))
    git = f"{WS}/.git"
    assert command.placeholders == (f"{git}/commondir", f"{git}/modules", f"{git}/config.worktree")
    argv = " ".join(command.argv)
    assert f"--ro-bind {git}/commondir {git}/commondir" in argv
    assert f"--ro-bind {git}/config.worktree {git}/config.worktree" in argv
    assert f"--perms 0555 --tmpfs {git}/modules --remount-ro {git}/modules" in argv
    bare = compile_ok(policy, layout(policy))
    assert bare.placeholders == (git,)


def test_symlinked_protected_path_is_refused_in_strict_and_warned_in_best_effort() -> None:
    link = PathFact(kind=PathKind.SYMLINK, link="../x", real="/home/ada/x", real_kind=PathKind.FILE)
    strict = Policy(filesystem=SMALL)
    facts = layout(strict, overrides={"/home/ada/proj/.envrc": link})
    request = RunRequest(argv=["true"], workspace=WS)
    refused = compile_bwrap(request, strict, HOST, workspace=WS, layout=facts)
    assert isinstance(refused, Failure)
    assert isinstance(refused.failure(), ConfigInvalid)
    assert "symlink" in refused.failure().message
    relaxed = attrs.evolve(strict, enforcement=Enforcement.BEST_EFFORT)
    command = compile_ok(relaxed, facts)
    assert any("symlink" in warning for warning in command.warnings)


def test_deny_read_is_masked_when_the_workspace_exposes_it() -> None:
    policy = Policy(filesystem=SMALL)
    facts = layout(
        policy, workspace="/home/ada", overrides={"/home/ada/.ssh": DIR, "/home/ada/.netrc": FILE}
    )
    command = compile_ok(policy, facts, workspace="/home/ada")
    argv = " ".join(command.argv)
    assert "--perms 0000 --tmpfs /home/ada/.ssh --remount-ro /home/ada/.ssh" in argv
    assert "--ro-bind /dev/null /home/ada/.netrc" in argv
    assert not command.visible("/home/ada/.ssh/id_rsa")
    assert command.visible("/home/ada/src/main.py")


def test_deny_read_is_not_mounted_where_home_is_hidden_anyway() -> None:
    policy = Policy(filesystem=SMALL)
    command = compile_ok(policy, layout(policy, overrides={"/home/ada/.ssh": DIR}))
    assert "/home/ada/.ssh" not in command.argv
    assert not command.visible("/home/ada/.ssh/id_rsa")
    assert command.visible("/home/ada/proj/main.py")
    assert command.visible("/usr/bin/env")


def test_home_inside_a_broader_workspace_stays_hidden() -> None:
    policy = Policy(filesystem=FilesystemPolicy(deny_read=(), protected=()))
    command = compile_ok(policy, layout(policy, workspace="/home"), workspace="/home")
    argv = command.argv
    assert argv.index("/home") < argv.index("/home/ada")  # the bind first, then the tmpfs
    assert not command.visible("/home/ada/.bashrc")
    assert command.visible("/home/bob/notes")


def test_workspace_root_and_workspace_inside_denied_path_are_refused() -> None:
    policy = Policy(filesystem=SMALL)
    request = RunRequest(argv=["true"], workspace="/")
    root = compile_bwrap(request, policy, HOST, workspace="/", layout=layout(policy, workspace="/"))
    assert isinstance(root, Failure)
    inside = "/home/ada/.ssh/keys"
    facts = layout(policy, workspace=inside)
    denied = compile_bwrap(request, policy, HOST, workspace=inside, layout=facts)
    assert isinstance(denied, Failure)
    assert "inside the denied path" in denied.failure().message


def test_network_full_shares_the_network_and_none_does_not() -> None:
    none = Policy(filesystem=SMALL)
    full = attrs.evolve(none, network=NetworkPolicy(mode=NetworkMode.FULL))
    assert "--share-net" not in compile_ok(none, layout(none)).argv
    assert "--share-net" in compile_ok(full, layout(full)).argv


def test_readable_and_writable_paths_are_bound_at_their_own_paths() -> None:
    policy = Policy(
        filesystem=FilesystemPolicy(readable=("~/.cargo",), writable=("/data/cache",), protected=())
    )
    facts = layout(policy, overrides={"/home/ada/.cargo": DIR, "/data/cache": DIR})
    argv = " ".join(compile_ok(policy, facts).argv)
    assert "--ro-bind /home/ada/.cargo /home/ada/.cargo" in argv
    assert "--bind /data/cache /data/cache" in argv


def test_old_bwrap_gets_no_disable_userns() -> None:
    policy = Policy(filesystem=SMALL)
    request = RunRequest(argv=["true"], workspace=WS)
    old = BwrapFeatures(path="bwrap", version=(0, 6, 1))
    compiled = compile_bwrap(
        request, policy, HOST, workspace=WS, layout=layout(policy), features=old
    )
    assert "--disable-userns" not in compiled.unwrap().argv


def _outcome(exit_code: int | None, sig: int | None) -> ProcessOutcome:
    return ProcessOutcome(
        exit_code=exit_code,
        signal=sig,
        stdout=b"",
        stderr=b"",
        stdout_truncated=False,
        stderr_truncated=False,
        duration_s=0.0,
        usage=Usage(),
    )


def test_bwrap_128_plus_n_statuses_become_signals() -> None:
    assert _signal_decoded(_outcome(128 + signal.SIGXCPU, None)).signal == signal.SIGXCPU
    assert _signal_decoded(_outcome(3, None)).exit_code == 3
    assert _signal_decoded(_outcome(None, signal.SIGKILL)).signal == signal.SIGKILL


# --- host unix sockets -----------------------------------------------------------------
AGENT = "/run/user/1000/ssh-agent.sock"


@pytest.mark.parametrize(
    ("mode", "names", "abi", "allowed", "scope_abi"),
    [
        (NetworkMode.NONE, (), 7, True, 0),  # own netns: only mounted path sockets exist
        (NetworkMode.ALLOWLIST, (), 7, True, 0),  # the bridge's socat needs AF_UNIX
        (NetworkMode.FULL, (), 7, False, 0),  # --share-net: host abstract sockets
        (NetworkMode.FULL, (AGENT,), 7, True, 7),  # named: scope them out instead
        (NetworkMode.FULL, (AGENT,), 5, True, 0),  # no scope: the protection is missing
    ],
)
def test_unix_socket_plan(
    mode: NetworkMode, names: tuple[str, ...], abi: int, allowed: bool, scope_abi: int
) -> None:
    policy = Policy(network=NetworkPolicy(mode=mode, allow_unix_sockets=names))
    plan = unix_socket_plan(policy, NO_NAMED_SOCKETS, abi)
    assert (plan.allowed, plan.scope_abi) == (allowed, scope_abi)
    targets = [hook.target for hook in plan.hooks]
    assert (SCOPE_TARGET in targets) is bool(scope_abi)
    assert plan.hooks[0].argument["data"] == seccomp_program(allowed).hex()


def test_named_sockets_are_bound_read_only_at_their_path() -> None:
    policy = Policy(network=NetworkPolicy(mode=NetworkMode.FULL, allow_unix_sockets=(AGENT,)))
    compiled = compile_bwrap(
        RunRequest(argv=["true"], workspace=WS),
        policy,
        HOST,
        workspace=WS,
        layout=layout(policy),
        features=FEATURES,
        sockets=NamedSockets(bind=(AGENT,), warnings=("named unix socket /x: no socket",)),
    )
    command = compiled.unwrap()
    text = shlex.join(command.argv)
    assert f"--ro-bind {AGENT} {AGENT} -- true" in text
    assert "named unix socket /x: no socket" in command.warnings
