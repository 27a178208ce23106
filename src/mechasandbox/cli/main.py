"""The `mechasandbox` command (the contract is CLI.md; `verbs` does the work).

A `run` needs the spawn helper, a second Python process that takes a few tens of
milliseconds to start. It is started here, before anything else is imported, so that its
start-up overlaps all of the host's own.

A `run` told to stop (SIGINT, SIGTERM) stops its command and answers with what it has
(`interrupted`, exit 128+N; see docs/failure-semantics.md): from here on, those signals only
feed an `Interruption`, which the runner acts on (`runner.interruption`).
"""

from __future__ import annotations

import gc
import signal
import sys

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: `session run` does not import `typing`
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

    from mechasandbox.runner.client import SpawnHelperClient


def _runs(raw: Sequence[str]) -> bool:
    """Whether the verb (the first argument) runs a command: `run`, `shell`."""
    return raw[:1] in (["run"], ["shell"])


def _early_helper(raw: Sequence[str]) -> SpawnHelperClient | None:
    """A spawn helper already starting, when the verb runs a command (the first argument)."""
    if not _runs(raw):
        return None
    from mechasandbox.runner.client import SpawnHelperClient

    helper = SpawnHelperClient()
    helper.prestart()
    return helper


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:2] == ["session", "run"]:
        # Every command of a shell-driven agent's session: the client alone, which keeps
        # its imports to the standard library (see `session_run`).
        from mechasandbox.cli.session_run import run

        return run(raw[2:])
    if not _runs(raw):
        from mechasandbox.cli.verbs import run_verb

        return run_verb(raw, None)
    from mechasandbox.runner.interruption import Interruption

    with Interruption().catching(signal.SIGINT, signal.SIGTERM) as interruption:
        helper = _early_helper(raw)
        try:
            from mechasandbox.cli.verbs import run_verb

            return run_verb(raw, helper, interruption)
        finally:
            if helper is not None:
                helper.close()


def entry_point() -> NoReturn:
    """The program (`mechasandbox`, `python -m mechasandbox`): `main` in a process that
    lives for one command. The cyclic garbage collector stays off (start-up allocates a lot
    and frees little; a collection would only traverse it), and what is left at the end is
    frozen, so that the interpreter's teardown does not traverse it either: the operating
    system frees the memory at exit. Exit handlers run as usual. Ctrl-C where no run
    handles it (another verb, the first imports) ends the program without a traceback."""
    gc.disable()
    try:
        status = main()
    except KeyboardInterrupt:
        print("mechasandbox: interrupted", file=sys.stderr)
        status = 128 + signal.SIGINT
    gc.freeze()
    sys.exit(status)
