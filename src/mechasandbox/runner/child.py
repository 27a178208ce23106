"""What a child of the spawn helper runs between its fork and its exec (see `helper`).

Two ways in: `exec_run`, in a child the helper forks for a run, sets everything up and
execs; `wait_for_run`, in a warm child (see `warm`), joins the run's cgroups and applies
the policy's ahead hooks first, waits for a run, then goes on as `exec_run`. The order of
the set-up is the same on every path (the exec shim follows it too, see `native`): cgroup,
ahead hooks, rlimits (so a run never raises a limit with a capability it has dropped), the
other hooks. A failure before the exec goes to the report pipe as "errno:stage", which the
helper reads once the child is gone.

Every Python object the child touches after the fork is a page the kernel must copy: the
helper decodes what it can before (`Launch`), and this module imports what the helper has
anyway (the standard library; no `typing`, as in `helper`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
import resource
import signal
import socket
import sys

from mechasandbox.runner import framing

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: the helper does not import `typing`
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    ChildHook: TypeAlias = Callable[[Any], None]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# What a warm child writes to its report pipe once the host handed it a run (a failure to
# report may follow).
HANDED = b"+"

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def prctl(option: int, value: int) -> None:
    if _LIBC is None:
        return
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def load_hook(spec: str) -> ChildHook:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        if "site" in sys.modules:
            raise
        import site  # the helper starts without it (`-S`): a hook from site-packages

        site.main()
        module = importlib.import_module(module_name)
    hook: ChildHook = getattr(module, attribute)
    return hook


def hook_of(hooks: dict[str, ChildHook], spec: str) -> ChildHook:
    """The hook `spec` names: loaded by the helper already (in `hooks`), or now."""
    return hooks.get(spec) or load_hook(spec)


class Launch:
    """A spawn request decoded in the helper, so that the forked child has little to do:
    every Python object it touches after the fork is a page the kernel must copy."""

    __slots__ = (
        "argv",
        "cgroup_procs",
        "cwd",
        "env",
        "executable",
        "rlimits",
        "terminal",
        "umask",
    )

    def __init__(self, request: dict[str, Any]) -> None:
        self.argv: list[str] = list(request["argv"])
        self.env: dict[str, str] = dict(request["env"])
        self.executable: str = request.get("executable") or self.argv[0]
        self.cwd: str = request["cwd"]
        self.umask = int(request.get("umask", 0o077))
        # stdin is a pty's slave (so are stdout and stderr), to be the session's terminal
        self.terminal = bool(request.get("terminal"))
        self.cgroup_procs: list[bytes] = [os.fsencode(p) for p in request.get("cgroup_procs", ())]
        self.rlimits: list[tuple[int, tuple[int, int]]] = [
            (getattr(resource, name), (int(soft), int(hard)))
            for name, soft, hard in request.get("rlimits", ())
        ]


def exec_run(
    launch: Launch,
    stdio: list[int],
    hooks: list[tuple[ChildHook, Any]],
    report_fd: int,
    *,
    ahead: list[tuple[ChildHook, Any]] | None = None,
    detached: bool = False,
) -> None:
    """Runs in the forked child: set everything up, then exec. Never returns.

    `ahead`: hooks applied before the rlimits (a warm child applies them while it waits,
    in that same place of the order). `detached`: a warm child, which has set the session
    and the parent-death signal and joined its cgroups already (`launch` has none left).
    Signal dispositions need no work here: the helper catches (rather than ignores) the
    signals it handles, and exec resets caught signals to their defaults; its signal mask
    is empty (see `helper.main`)."""
    stage = "setsid"
    try:
        if not detached:
            os.setsid()
            stage = "pdeathsig"
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        stage = "stdio"
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        if launch.terminal:
            stage = "terminal"
            set_controlling_terminal(0)
            stage = "stdio"
        # Keep only 0-2 and the report pipe (close-on-exec): nothing of the host leaks in.
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 65536)
        stage = "chdir"
        os.chdir(launch.cwd)
        stage = "umask"
        os.umask(launch.umask)
        stage = "cgroup"
        join(launch.cgroup_procs)
        for hook, argument in ahead or ():
            stage = "hook"
            hook(argument)
        stage = "rlimit"
        for which, limits in launch.rlimits:
            resource.setrlimit(which, limits)
        for hook, argument in hooks:
            stage = "hook"
            hook(argument)
        stage = "exec"
        if os.sep in launch.executable:
            os.execve(launch.executable, launch.argv, launch.env)
        os.execvpe(launch.executable, launch.argv, launch.env)
    except OSError as error:
        os.write(report_fd, f"{error.errno or errno.EIO}:{stage}".encode())
    except BaseException:
        os.write(report_fd, f"{errno.EIO}:{stage}".encode())
    finally:
        os._exit(127)


def set_controlling_terminal(fd: int) -> None:
    """Make the terminal `fd` the controlling terminal of this process's session (it is a
    session leader with none, after `setsid`): an interactive program inside gets job
    control, and /dev/tty is this terminal."""
    import fcntl  # only runs with a terminal pay for these imports
    import termios

    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def join(procs_files: list[bytes]) -> None:
    for procs_file in procs_files:
        procs = os.open(procs_file, os.O_WRONLY)
        try:
            os.write(procs, b"0")
        finally:
            os.close(procs)


def apply_ahead(ahead: list[Any], hooks: dict[str, ChildHook]) -> None:
    for spec, argument in ahead:
        hook_of(hooks, spec)(argument)


def rehearse(rehearsals: list[Any], hooks: dict[str, ChildHook]) -> None:
    for spec, argument in rehearsals:
        with contextlib.suppress(BaseException):  # a rehearsal that failed changed nothing
            hook_of(hooks, spec)(argument)


def wait_for_run(
    procs_files: list[bytes],
    runs: socket.socket,
    hooks: dict[str, ChildHook],
    report_fd: int,
    ahead: list[Any] | None,
    rehearsals: list[Any],
) -> None:
    """Runs in a warm child: leave the helper's session, join the cgroups, apply `ahead`
    (see `warm.ahead_of`), then wait for a spawn request with its stdio on `runs` (from the host,
    which the helper offered this child; the run's socket goes to the helper in the host's
    `claim`), mark the report pipe (`HANDED`), and carry the request out as `exec_run`
    does. The host closing `runs` instead ends it. Never returns. The host hands it only
    requests whose `warm.ahead_of` equals `ahead` (any request when `ahead` is None).

    Once a request came, every failure goes to the report pipe as in `exec_run` (a join or an
    ahead hook that failed earlier included), so that the run is reported as not started,
    never as a run that exited with status 0."""
    failed: tuple[str, OSError] | None = None
    stage = "cgroup"
    try:
        os.setsid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        join(procs_files)
        if ahead is not None:
            stage = "hook"
            apply_ahead(ahead, hooks)
    except OSError as error:
        failed = (stage, error)
    except BaseException:
        failed = (stage, OSError(errno.EIO, stage))
    if failed is None:
        rehearse(rehearsals, hooks)
    try:
        request, stdio = framing.receive(runs)
    except framing.PeerClosed:
        os._exit(0)  # the host let this child go: no run was handed to it
    except BaseException as error:  # a run came but could not be read: not started
        os.write(report_fd, HANDED + f"{getattr(error, 'errno', None) or errno.EIO}:setup".encode())
        os._exit(127)
    os.write(report_fd, HANDED)
    runs.close()
    if failed is not None:
        os.write(report_fd, f"{failed[1].errno or errno.EIO}:{failed[0]}".encode())
        os._exit(127)
    stage = "setup"
    try:
        launch = Launch(request)
        launch.cgroup_procs = []  # joined already: a second join would wait again
        stage = "hook"
        chosen = [(hook_of(hooks, spec), argument) for spec, argument in request.get("hooks", ())]
        # Applied while waiting, or (a generic child) now, in the same place of the order.
        late = [] if ahead is not None else request.get("ahead", ())
        late_ahead = [(hook_of(hooks, spec), argument) for spec, argument in late]
    except OSError as error:
        os.write(report_fd, f"{error.errno or errno.EIO}:{stage}".encode())
        os._exit(127)
    except BaseException:
        os.write(report_fd, f"{errno.EIO}:{stage}".encode())
        os._exit(127)
    exec_run(launch, stdio, chosen, report_fd, ahead=late_ahead, detached=True)
