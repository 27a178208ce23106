"""What the runner is asked to spawn, and what it reports back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from mechasandbox.domain.events import OutputSink
from mechasandbox.domain.request import StreamedInput, Terminal
from mechasandbox.domain.result import Usage


@attrs.frozen(kw_only=True)
class RlimitSetting:
    """One `setrlimit` call: resource name as in the `resource` module, soft and hard."""

    resource: str
    soft: int
    hard: int


@attrs.frozen(kw_only=True)
class ChildHook:
    """A function the spawn helper calls in the child just before exec (Landlock, seccomp).

    `target` is "module:function"; `argument` must be JSON-serialisable.

    `ahead`: what the hook does depends on the policy alone, not on the run nor on the file
    system (dropping capabilities, no_new_privs, a seccomp filter). Such a hook may run
    before the run is asked for, in a child the helper forks ahead of time for runs with the
    same `ahead` hooks (see `runner.warm`): off the run's critical path. (An exec shim
    child applies them at run time, in the same place of the order, see `runner.native`.)
    Ahead hooks run after the cgroup join and before the rlimits and the other hooks, in
    the order given, whether a warm child applies them or not.

    `rehearsal`: a "module:function" that a warm child prepared after a run with this hook
    calls with the same argument while it waits. It must only read (list directories, build
    structures): it makes the child take, before the next run, the page copies a process
    forked from the helper pays the first time it touches the hook's code and data. Its
    errors are ignored.
    """

    target: str
    argument: Any = None
    ahead: bool = False
    rehearsal: str | None = None


@attrs.frozen(kw_only=True)
class SpawnSpec:
    """One process to start. The runner does exactly this and nothing implicit (no shell)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str
    # The process's input: bytes, or a descriptor the runner reads as the process takes
    # it (see `StreamedInput`); a pty's slave, which is then its stdout and stderr too and
    # the controlling terminal of its session (see `Terminal`); None: /dev/null.
    stdin: bytes | StreamedInput | Terminal | None = None
    # After `stdin` is written its pipe stays open until the process ends: the process sees
    # end-of-file only if this host process dies (a lifeline; see `backends.oci.lifeline`).
    hold_stdin: bool = False
    # With a `Terminal` stdin: the runner makes it the controlling terminal of the run's
    # session. False: the launcher makes a session inside, whose terminal it is (bubblewrap).
    terminal_session: bool = True
    # What the spawn helper starts, detached and with this spec's environment, if the host
    # goes away while the process runs (after killing it): for what killing the process does
    # not end, a container (its engine's CLI is the process; `rm --force` stops it).
    on_host_loss: tuple[str, ...] = ()
    timeout_s: float | None = None
    max_output_bytes: int = 4 * 1024 * 1024
    umask: int = 0o077
    rlimits: tuple[RlimitSetting, ...] = ()
    cgroup_procs: tuple[str, ...] = ()  # cgroup.procs files the child joins before exec
    hooks: tuple[ChildHook, ...] = ()
    executable: str | None = None  # resolved path; argv[0] searched on env PATH when None
    # Groups of cgroup.procs files (pooled cgroups) where a runner that prepares children
    # ahead of time may prepare those of later runs like this one, once this run is over
    # (a hint, as `PreparesCgroups.prepare_cgroups`; it saves a message per run).
    prepare_after: tuple[tuple[str, ...], ...] = ()
    # Called by the runner every `WATCH_INTERVAL_S` while the process runs (in the host,
    # never sent to the helper): a reason returned stops the run as a deadline does, and
    # becomes the outcome's `stopped`. For what the host must keep an eye on during a run
    # (bubblewrap: the guards of existing host paths, see `backends.workspace.guards`).
    watch: Callable[[], str | None] | None = attrs.field(default=None, eq=False, repr=False)
    # Called by the runner with each chunk of output it keeps (under `max_output_bytes`),
    # as it comes: the run's live output (see `domain.events`). An exception it raises
    # stops the run as an interruption does (the tree is killed) and propagates.
    on_output: OutputSink | None = attrs.field(default=None, eq=False, repr=False)


WATCH_INTERVAL_S = 0.05


@attrs.frozen(kw_only=True)
class ProcessOutcome:
    """How the process ended. `timed_out` means the runner killed the tree at the deadline;
    `stopped`, that it killed it because the spec's `watch` gave this reason; `interrupted`,
    that it killed it because the caller was told to stop by this signal (see
    `runner.interruption`)."""

    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    duration_s: float
    usage: Usage
    timed_out: bool = False
    stopped: str | None = None
    interrupted: int | None = None
