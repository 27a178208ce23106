"""Nothing in a container outlives the process that started it.

Killing the engine CLI (`docker run`, `podman run`) does not stop the container: a caller
killed with SIGKILL (or SIGTERM, which Python does not turn into a clean exit) would leave
the command running, writing the workspace, long after. So the container is tied to us:

- Its stdin is the lifeline. The CLI runs with `--interactive`, its own stdin a pipe whose
  write end only this host process holds and never closes (`SpawnSpec.hold_stdin`). The
  engine closes the container's stdin when the CLI's attachment ends: when the CLI dies,
  which the spawn helper sees to when we die (and the kernel closes our end anyway).
- The watcher (`_WATCH_SCRIPT`, POSIX sh and `sleep`) is the container's PID 1 (no
  `--init`): the kernel delivers no signal from inside the PID namespace to an init that
  has no handler for it, so the command, which runs as the same uid, can neither kill nor
  stop it (it once killed a watcher that ran under tini, and outlived a killed caller). It
  starts the command and blocks reading the lifeline; a `CHLD` trap wakes the read when a
  child ends: the command, the deadline's `sleep` (the run's deadline enforced from
  inside, a few seconds after the host's own, for a host that is alive but stuck), or a
  one-second tick (a child that ends just before the read starts would leave it blocked:
  the tick bounds that to a second). A read that fails with no child having ended met
  end-of-file: the lifeline is cut. Then, or at the deadline, or once the command ended:
  `kill -9 -1` (every other process of the container) and exit with the command's
  status, which ends the PID namespace. A deadline `sleep` that ends early (a command's
  `pkill sleep`) is started again for what is left (`date +%s`). Without tini, orphans
  the command leaves stay zombies until then: they count under `--pids-limit`.
- The pids limit is the whole container's: the command can take every free slot, those
  left for the watcher included. So the watcher starts its deadline and first tick before
  the command (a command that forked up to the limit at once made the watcher's own first
  fork fail, and a shell that cannot fork exits: the run ended with status 2 and no
  output). A later fork of its own that the limit refuses (a tick, a deadline started
  again) still ends the shell: its `EXIT` trap then kills everything and says `starved`,
  and the run fails with `process_limit` instead of reporting the shell's status.
- The command's input (the request's stdin) cannot share the lifeline: it comes from a
  private file of the run mounted read-only at `STDIN_PATH`; streamed input, from a FIFO
  there that the host fills as the command reads (`feeding`).
- A warm pool's keeper is the same loop without a command: the pool keeps its attached CLI
  running in a thread, and commands come in by `exec`.
- What stays behind (the stopped container; nothing runs in it) is removed by the sweep a
  later process of ours makes beside its first run (`sweep_beside`: containers whose owner
  process is gone).

The watcher needs `/bin/sh` in the image (the probe checks, once per image); without one a
run is not tied, and the backend does not claim `Protection.TREE_TEARDOWN`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import attrs
from returns.result import Failure, Result

from mechasandbox.domain.errors import SandboxError, SpawnFailed
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import StreamedInput
from mechasandbox.leftovers import temp_prefix
from mechasandbox.runner.runner import feed_fifo
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

WATCH_NAME = "mechasandbox-watch"
WATCH_PREFIX = (WATCH_NAME + ": ").encode()
KEEPER_NAME = "mechasandbox-keeper"
# Where the command's input is mounted (beside the allowlist bridge's proxy socket).
STDIN_PATH = "/run/mechasandbox/stdin"
# The watcher's own processes under the pids limit: its shell, the deadline's sleep, the
# tick and the tick's successor while the finished one is reaped.
WATCHER_PROCESSES = 4
# The deadline inside comes this long after the host's, which ends the run properly first.
DEADLINE_GRACE_S = 3.0

# $1: the deadline in seconds (0: none); $2: the command's input; the rest: the command.
# The lifeline is the script's stdin, kept on fd 3 (an asynchronous list gets /dev/null
# as its stdin unless redirected explicitly). The shell's own stderr goes quiet once the
# command has started, so that it does not report the command's death ("Killed").
# `up PID`: the process runs (neither gone nor a zombie: `kill -0` holds for a zombie).
_WATCH_SCRIPT = """\
exec 3<&0 4>&2
t=$1
in=$2
shift 2
up() { while read -r k v _; do [ "$k" = State: ] && { [ "$v" != Z ]; return; }; done \
<"/proc/$1/status"; return 1; }
forks() { for f in /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/pids.events; do \
[ -r "$f" ] && { read -r _ n <"$f"; [ "${n:-0}" != 0 ] && echo "$1 $n" >&4; return; }; done; }
q=
trap '[ -n "$q" ] || { kill -9 -1; echo "$0: starved" >&4; }' EXIT
w=0
trap w=1 CHLD
d=
e=
if [ "$t" != 0 ]; then e=$(date +%s); e=$((${e:-0} + t)); sleep "$t" 3<&- 4>&- & d=$!; fi
sleep 1 3<&- 4>&- &
k=$!
(exec "$@") <"$in" 3<&- 4>&- &
c=$!
exec 2>/dev/null
while up "$c"; do
  if ! up "$k"; then
    wait "$k"
    sleep 1 3<&- 4>&- & k=$!
  fi
  w=0
  read -r _ <&3 && continue
  [ "$w" = 1 ] || break
  if [ -n "$d" ] && ! up "$d"; then
    n=$(date +%s)
    if [ -z "$n" ] || [ "$n" -ge "$e" ]; then break; fi
    wait "$d"
    sleep $((e - n)) 3<&- 4>&- & d=$!
  fi
done
q=1
if up "$c"; then kill -9 -1; exit 137; fi
wait "$c"
s=$?
kill -9 -1
forks "$0: pids.max"
exit "$s"
"""
# A pool's keeper, PID 1 too: waits on its lifeline; commands come in by `exec`. SIGCHLD
# ignored: the kernel reaps the orphans they leave (no tini).
_KEEPER_SCRIPT = "trap '' CHLD\nwhile read -r _; do :; done\nkill -9 -1\n"


@attrs.frozen(kw_only=True)
class Lifeline:
    """How one container is tied to this process (see the module).

    `deadline_s`: the watcher's own deadline (None: none); `stdin_file`: the host file
    holding the command's input (None: /dev/null)."""

    deadline_s: int | None = None
    stdin_file: str | None = None


def deadline_for(timeout_s: float | None) -> int | None:
    return None if timeout_s is None else math.ceil(timeout_s + DEADLINE_GRACE_S)


def watched_argv(lifeline: Lifeline, argv: tuple[str, ...] | list[str]) -> list[str]:
    """`/bin/sh -c WATCH mechasandbox-watch DEADLINE INPUT ARGV...`."""
    deadline = str(lifeline.deadline_s or 0)
    source = STDIN_PATH if lifeline.stdin_file is not None else "/dev/null"
    return ["/bin/sh", "-c", _WATCH_SCRIPT, WATCH_NAME, deadline, source, *argv]


def keeper_argv() -> list[str]:
    """A pool keeper: waits on the lifeline, then takes every exec'd command with it."""
    return ["/bin/sh", "-c", _KEEPER_SCRIPT, KEEPER_NAME]


def tie(spec: SpawnSpec, *, removal: tuple[str, ...]) -> SpawnSpec:
    """The engine CLI's spec with the lifeline as its stdin (see the module), and the
    container's `removal` (`ENGINE rm --force NAME`) for the spawn helper to start if this
    process goes away while it runs: the command can hold the lifeline open itself (it may
    open PID 1's stdin through `/proc/1/fd/0` for writing), so the helper, outside the
    container and alive after us, removes it too."""
    return attrs.evolve(spec, stdin=b"", hold_stdin=True, on_host_loss=removal)


_REFUSED_FORKS = re.compile(rb"(?:^|\n)" + re.escape(WATCH_PREFIX) + rb"pids\.max (\d+)\n\Z")


def refused_forks(outcome: ProcessOutcome) -> tuple[ProcessOutcome, int]:
    """The outcome without the watcher's last word, and the forks the container's pids
    limit refused (0: none, or not known). After the command ended and everything else in
    the container was killed, the watcher reads the container's `pids.events` (mounted
    read-only at /sys/fs/cgroup: the container's own cgroup) and, when the limit refused
    forks, says how many as the last line of stderr: nothing can write after it. (The
    engine removes the cgroup when the container ends, before the host could read it.)"""
    found = _REFUSED_FORKS.search(outcome.stderr)
    if found is None or outcome.stderr_truncated:
        return outcome, 0
    stderr = outcome.stderr[: found.start()] + (b"\n" if found.group(0).startswith(b"\n") else b"")
    return attrs.evolve(outcome, stderr=stderr), int(found.group(1))


# (busybox's sh may print it as `sh: mechasandbox-watch: starved` from its error exit.)
_STARVED = re.compile(rb"(?:^|\n)(?:sh: )?" + re.escape(WATCH_PREFIX) + rb"starved\n\Z")


def starved(outcome: ProcessOutcome) -> ProcessOutcome | None:
    """The outcome without the watcher's last word when the pids limit refused one of the
    watcher's own forks, which ended it (see the module); None otherwise."""
    found = _STARVED.search(outcome.stderr)
    if found is None:
        return None
    stderr = outcome.stderr[: found.start()] + (b"\n" if found.group(0).startswith(b"\n") else b"")
    return attrs.evolve(outcome, stderr=stderr)


def exec_failure(outcome: ProcessOutcome, command: str, *, image: str) -> SandboxError | None:
    """The watcher's shell could not exec the command (`mechasandbox-watch: exec: X: not
    found`, 127; `Permission denied`, 126): a spawn failure, not the command's status."""
    first = outcome.stderr.split(b"\n", 1)[0]
    if outcome.exit_code not in (126, 127) or not first.startswith(WATCH_PREFIX):
        return None
    if b"exec: " not in first:
        return None
    reason = "command not found" if outcome.exit_code == 127 else "not executable"
    message = first.decode("utf-8", "replace")[-200:]
    return SpawnFailed(
        command=command,
        reason=f"{reason} in image {image!r}: {message}",
        exit_status=outcome.exit_code,
    )


# -- the command's input ------------------------------------------------------------------


def write_input(data: bytes | StreamedInput | None, *, uid: int, gid: int) -> str | None:
    """The request's stdin in a fresh private directory (None for no input); readable by
    the container's user (the caller's uid, or the one a root caller runs it as). Streamed
    input: a FIFO there, which `feeding` fills as the command reads it."""
    if data is None:
        return None
    directory = tempfile.mkdtemp(prefix=temp_prefix("stdin"))
    path = os.path.join(directory, "stdin")
    if isinstance(data, StreamedInput):
        os.mkfifo(path, 0o600)
    else:
        with open(path, "xb") as handle:
            handle.write(data)
    if os.geteuid() == 0 and (uid, gid) != (0, 0):
        # Root runs the container as another user: hand that user the file (and the way in).
        os.chown(directory, uid, gid)
        os.chown(path, uid, gid)
    os.chmod(path, 0o400)
    return path


@contextlib.asynccontextmanager
async def feeding(data: bytes | StreamedInput | None, path: str | None) -> AsyncIterator[None]:
    """While the body runs: streamed input fed into its FIFO at `path` (see `write_input`)
    as the command reads it, from the moment the watcher opens it for the command."""
    if not isinstance(data, StreamedInput) or path is None:
        yield
        return
    async with anyio.create_task_group() as feeder:
        feeder.start_soon(feed_fifo, path, data)
        yield
        feeder.cancel_scope.cancel()  # the run is over: what the source still holds stays


def remove_input(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(os.path.dirname(path))


# -- a pool keeper's attached CLI ------------------------------------------------------------


class Attached:
    """An engine CLI kept running in a thread of its own (a keeper's `run`, attached to
    its lifeline): `done` once it ended, `outcome` then."""

    def __init__(self, run: Callable[[SpawnSpec], Awaitable[Any]], spec: SpawnSpec) -> None:
        self.outcome: Result[ProcessOutcome, SpawnFailed] | None = None
        self._ended = threading.Event()

        def body() -> None:
            try:
                self.outcome = anyio.run(run, spec)
            except Exception as error:  # reported to whoever waits for the start
                self.outcome = Failure(SpawnFailed(command=spec.argv[0], reason=repr(error)))
            finally:
                self._ended.set()

        threading.Thread(target=body, name="mechasandbox-keeper", daemon=True).start()

    def done(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout_s: float) -> bool:
        return self._ended.wait(timeout_s)

    def failure_reason(self) -> str:
        outcome = self.outcome
        if outcome is None:
            return "still running"
        if isinstance(outcome, Failure):
            return str(outcome.failure().message)
        text = outcome.unwrap().stderr.decode("utf-8", "replace").strip()
        return text[-500:] or f"the engine CLI ended with status {outcome.unwrap().exit_code}"


# -- the sweep ------------------------------------------------------------------------------


class Sweeps:
    """The engines swept so far (see `sweep_beside`): once each, by the first run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._swept: set[tuple[str, str]] = set()

    def claim(self, key: tuple[str, str]) -> bool:
        """Whether this run makes the sweep for this engine (the first one does)."""
        with self._lock:
            if key in self._swept:
                return False
            self._swept.add(key)
            return True


async def sweep_beside(
    sweeps: Sweeps,
    key: tuple[str, str],
    sweep: Callable[[], Awaitable[object]],
    run: Callable[[], Awaitable[Result[Any, SandboxError]]],
    *,
    concurrently: bool = True,
    pending: Callable[[], Awaitable[object]] | None = None,
    budget_s: float | None = None,
) -> Result[Any, SandboxError]:
    """`run()`, with the first run on an engine (the first `sweeps` sees) also removing the
    containers that processes of ours which died left behind (`OciBackend.reap_leftovers`):
    beside the run (its result waits for that, which is over long before a container is),
    or first,
    where the engine's CLI calls must not overlap (`concurrently=False`: podman, whose
    conmon the spawn helper takes for a stray of whichever run ends first).
    `pending`: the containers earlier runs of this process left (their engine was lost),
    removed the same way by any run while there are some. `budget_s`: how long the sweep
    may take (the run's deadline: a hung engine must not hold the answer)."""
    first = sweeps.claim(key)
    if not first and pending is None:
        return await run()

    async def quietly() -> None:
        limit = math.inf if budget_s is None else max(0.0, budget_s)
        with anyio.move_on_after(limit), contextlib.suppress(Exception):
            # (best effort: the next run, or the next process, sweeps again)
            if pending is not None:
                await pending()
            if first:
                await sweep()

    if not concurrently:
        await quietly()
        return await run()
    async with anyio.create_task_group() as group:
        group.start_soon(quietly)
        result = await run()
    return result


def for_policy(policy: Policy, stdin_file: str | None) -> Lifeline:
    """The lifeline of a run under `policy` (`stdin_file`: where its input waits, if any)."""
    return Lifeline(deadline_s=deadline_for(policy.limits.timeout_s), stdin_file=stdin_file)


# Where a planned run's input would wait (each run's own file: `mechasandbox policy` shows this).
STDIN_PLACEHOLDER = "<per-run input file>"
