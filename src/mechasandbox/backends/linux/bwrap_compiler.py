"""The bwrap command line of a run, compiled purely from the request, the policy, the host's
facts and a `HostLayout`.

What the compiled argv builds (in this order, since later mounts cover earlier ones):

1. a new user, pid, network, ipc, uts and cgroup namespace; no capabilities, no further
   user namespaces, a new session (no TIOCSTI into the caller's terminal), death with the
   parent, and the seccomp program read from file descriptor 3;
2. an empty root with the system roots read-only (`/usr`, `/etc`, `/opt`, the `/lib*` and
   `/bin` trees or their merged-usr symlinks), fresh `/proc` and `/dev`, private `/tmp`,
   `/var/tmp` and `/dev/shm`;
3. the home directory hidden under an empty tmpfs, then (shallowest first) the policy's
   readable paths read-only, its writable paths and the workspace read-write, each at its
   own path; where one of those covers the sandbox's own /proc, /dev or private tmp dirs
   (`readable = ["/"]`), they are made again right after it;
4. protected "runs later" paths pinned: an existing one re-bound read-only onto itself (a
   mount point can be neither written nor renamed nor unlinked), its existing parent
   directories inside the writable tree re-bound onto themselves (so `mv .git g` fails), and
   a missing one covered by an empty read-only directory, so that it cannot be created;
   those placeholders appear on the host during the run and are removed afterwards. (Not
   `/dev/null` over an empty file, though removing an empty file is much cheaper: git in the
   sandbox would see the devices as untracked files, and `git add -A` would fail on them;
   it ignores empty directories.)
5. the kernel's interfaces that container engines cover, covered the same way wherever the
   sandbox would see them (its /proc; a /sys a policy shows): `/proc/sys`, `/proc/irq`,
   `/proc/sysrq-trigger`... read-only, `/proc/kcore`, `/proc/keys`, `/sys/firmware`...
   masked (a root caller's uid 0 is host uid 0 to every file permission check);
6. `deny_read` paths (and the secrets of `/etc`: shadow, ssh host keys...) masked: an empty
   read-only tmpfs over a directory, `/dev/null` over a file.

The compiler is pure: `compile_bwrap` takes the request, the policy, the host facts and a
`HostLayout` (what exists at the paths the compiler asks about, surveyed just before the
run), and returns the argv. Golden tests feed it a hand-written layout.

bwrap itself starts with a fixed environment of ours (`LAUNCHER_ENVIRONMENT`: empty), never
the command's: the host's loader would act on the command's LD_PRELOAD or GCONV_PATH in bwrap,
outside every confinement. The command's variables reach bwrap as `--clearenv` then one
`--setenv NAME VALUE` each, read from file descriptor 4 (`--args 4`, NUL-separated, filled by
the spawn helper just before exec, see `runner.fd_data`): not on bwrap's argv, which every
user of the host can read in /proc. bwrap applies them to its own environment while it
parses its arguments, after the loader is done, and the command inherits them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, unsafe_variable
from mechasandbox.backends.command_line import exec_problem
from mechasandbox.backends.linux.bwrap_command_line import TRAMPOLINE, command_script, fits_bwrap
from mechasandbox.backends.linux.bwrap_layout import DEFAULT_FEATURES, BwrapFeatures, HostLayout
from mechasandbox.backends.linux.bwrap_mounts import Mount, covering_mount, mount_plan
from mechasandbox.backends.unix_sockets import NO_NAMED_SOCKETS, NamedSockets
from mechasandbox.backends.workspace.placeholders import FileContents
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import NetworkMode, Policy
from mechasandbox.domain.request import RunRequest
from mechasandbox.network.bridge import PROXY_SOCKET, ProxyBridge, bridge_argv

SECCOMP_FD = 3
ARGS_FD = 4  # the command's environment, as `--setenv NAME VALUE` arguments
# Where a session's agent (see `bwrap_session`) is bound read-only inside its sandbox.
SESSION_AGENT = "/run/mechasandbox/agent"


@attrs.frozen(kw_only=True)
class BwrapCommand:
    """A compiled run: bwrap's argv (command included), and what the run leaves to undo."""

    argv: tuple[str, ...]
    # Missing protected paths covered for the run: empty directories on the host, made by
    # the backend just before bwrap (`make_placeholders`) and removed after the run.
    placeholders: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    # The command's environment, which bwrap reads from ARGS_FD (values stay out of reprs).
    environment: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    # The command line, when too long for bwrap's argv: the script the trampoline runs from
    # COMMAND_FD (see `bwrap_command_line`); empty when the argv carries the command.
    command_script: bytes = attrs.field(default=b"", repr=False)

    @property
    def arguments_on_fd(self) -> bytes:
        """What bwrap reads from `--args ARGS_FD`: `--setenv NAME VALUE` per variable, each
        argument NUL-terminated."""
        return b"".join(
            b"--setenv\0" + os.fsencode(name) + b"\0" + os.fsencode(value) + b"\0"
            for name, value in self.environment
        )

    def describe_environment(self) -> str:
        """The arguments on ARGS_FD for `mechasandbox policy`: names, values hidden."""
        return "\n".join(f"--setenv {name} \u2026" for name, _ in self.environment) or "none"

    def visible(self, path: str) -> bool:
        """Whether the host's `path` (a real path) can be seen inside the sandbox."""
        covering = covering_mount(self.mounts, path)
        return covering is not None and covering.exposes

    @property
    def guards(self) -> tuple[tuple[str, str], ...]:
        """(host path, "write" or "read") of the mounts that guard existing host paths."""
        return tuple((m.dest, m.guards) for m in self.mounts if m.guards is not None)


def terminal_mounts(terminal: str) -> list[str]:
    """The run's pty slave at its host path inside, and no other: `--dev` gave the sandbox
    a devpts of its own, where the host's node is not, so `tty` and `ttyname` would find
    nothing; an empty /dev/pts with that one node bound in (the caller's own terminal and
    the host's other ptys stay out of sight). The sandbox then opens no new pty."""
    return ["--tmpfs", "/dev/pts", "--dev-bind", terminal, terminal]


def terminal_command(command: tuple[str, ...], setsid: str | None) -> tuple[str, ...]:
    """`command` in a session whose controlling terminal is the run's pty. Made inside: the
    session bwrap leaves (`--new-session`, which keeps TIOCSTI off any terminal of the
    host's) has its process group outside the pid namespace, where a shell's job control
    could not give the terminal back. `setsid -w -c` forks, starts a session, takes the
    pty (no session has it: the runner leaves that to the launcher here), waits and
    answers with the command's status. Without setsid, the command still has the pty as
    its stdio, but no controlling terminal."""
    if setsid is None:
        return command
    return (setsid, "-w", "-c", *command)


def compile_bwrap(
    request: RunRequest,
    policy: Policy,
    host: HostContext,
    *,
    workspace: str,
    layout: HostLayout,
    features: BwrapFeatures = DEFAULT_FEATURES,
    bridge: ProxyBridge | None = None,
    environment: Mapping[str, str] | None = None,
    sockets: NamedSockets = NO_NAMED_SOCKETS,
    file_placeholders: FileContents = (),
    terminal: str | None = None,
    setsid: str | None = None,
    agent: str | None = None,
) -> Result[BwrapCommand, ConfigInvalid]:
    """The bwrap command line for one run. Pure: everything it knows is in its arguments.

    `workspace` is the real path of the request's workspace (see `check_workspace`).
    `bridge`: in allowlist mode, the proxy socket to bind in and the forwarder to start
    before the command (the network namespace stays empty but for loopback).
    `environment`: the command's, read by bwrap from ARGS_FD (see `arguments_on_fd`).
    `sockets`: the host unix sockets the policy names, bound read-only at their real path
    (connect() needs no write access to the mount).
    `file_placeholders`: the protected paths whose placeholder is a file (see `mount_plan`).
    `terminal`: the host path of the run's own pty slave (see `Terminal`), when it has one,
    and `setsid`, util-linux's, which makes it the controlling terminal of a session inside
    (see `terminal_command`).
    `agent`: the host path of a session's agent, bound read-only at `SESSION_AGENT` (the
    request's argv then starts it, see `bwrap_session`).
    """
    variables = tuple(sorted((environment or {}).items()))
    unsafe = unsafe_variable(variables)
    if unsafe is not None:
        return Failure(ConfigInvalid(problem=unsafe, field="environment"))
    too_long = exec_problem(request.argv, variables)  # the command's own exec, inside
    if too_long is not None:
        return Failure(too_long)
    planned = mount_plan(workspace, policy, host, layout, file_placeholders)
    if isinstance(planned, ConfigInvalid):
        return Failure(planned)
    mounts, placeholders, warnings = planned

    argv: list[str] = [features.path, "--unshare-user", "--unshare-all"]
    if policy.network.mode is NetworkMode.FULL:
        argv.append("--share-net")
    if features.disable_userns:
        argv.append("--disable-userns")
    argv += [
        "--cap-drop", "ALL",
        "--die-with-parent",
        "--new-session",
        "--seccomp", str(SECCOMP_FD),
        "--clearenv", "--args", str(ARGS_FD),
        "--chdir", workspace,
    ]  # fmt: skip
    for mount in mounts:
        argv += mount.args
    if terminal is not None:
        argv += terminal_mounts(terminal)
    for path in sockets.bind:
        argv += ["--ro-bind", path, path]
    if agent is not None:
        argv += ["--ro-bind", agent, SESSION_AGENT]
    bridged = bridge is not None and policy.network.mode is NetworkMode.ALLOWLIST
    if bridge is not None and bridged:
        argv += ["--ro-bind", bridge.socket, PROXY_SOCKET]

    def started(command: tuple[str, ...]) -> list[str]:
        return bridge_argv(bridge, command) if bridge is not None and bridged else [*command]

    script = b""
    if not fits_bwrap(argv, 3 * len(variables), started(request.argv)):
        script = command_script(request.argv)
    command = TRAMPOLINE if script else request.argv
    if terminal is not None:
        command = terminal_command(command, setsid)
    argv += ["--", *started(command)]
    return Success(
        BwrapCommand(
            argv=tuple(argv),
            placeholders=placeholders,
            warnings=warnings + sockets.warnings,
            mounts=mounts,
            environment=variables,
            command_script=script,
        )
    )
