"""The watcher's last words on a container's stderr (`oci.lifeline`), as the host reads
them: refused forks and a watcher the pids limit starved."""

from __future__ import annotations

from mechasandbox.backends.oci import lifeline
from mechasandbox.domain.result import Usage
from mechasandbox.runner.spec import ProcessOutcome


def _outcome(stderr: bytes, *, truncated: bool = False) -> ProcessOutcome:
    return ProcessOutcome(
        exit_code=2,
        signal=None,
        stdout=b"out\n",
        stderr=stderr,
        stdout_truncated=False,
        stderr_truncated=truncated,
        duration_s=0.1,
        usage=Usage(),
    )


def test_a_starved_watcher_is_read_off_the_end_of_stderr() -> None:
    left = lifeline.starved(_outcome(b"the command's\nmechasandbox-watch: starved\n"))
    assert left is not None and left.stderr == b"the command's\n"
    alone = lifeline.starved(_outcome(b"mechasandbox-watch: starved\n"))
    assert alone is not None and alone.stderr == b""
    shell = lifeline.starved(_outcome(b"sh: mechasandbox-watch: starved\n"))
    assert shell is not None and shell.stderr == b""


def test_starved_only_as_the_last_line() -> None:
    assert lifeline.starved(_outcome(b"mechasandbox-watch: starved\nmore\n")) is None
    assert lifeline.starved(_outcome(b"xmechasandbox-watch: starved\n")) is None
    assert lifeline.starved(_outcome(b"")) is None


def test_refused_forks_are_read_and_taken_off() -> None:
    outcome, refused = lifeline.refused_forks(_outcome(b"said\nmechasandbox-watch: pids.max 24\n"))
    assert (outcome.stderr, refused) == (b"said\n", 24)
    cut, none = lifeline.refused_forks(
        _outcome(b"said\nmechasandbox-watch: pids.max 24\n", truncated=True)
    )
    assert none == 0 and cut.stderr.endswith(b"pids.max 24\n")
