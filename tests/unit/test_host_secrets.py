"""The suite's own plugin (tests/host_secrets.py): a test that failed while the host replaced
a masked /etc secret runs again; any other failure is reported at once."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests import host_secrets

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the plugin acts on Linux only"
)

TESTS = """
import os
from pathlib import Path

SECRET = Path({secret!r})


def attempt(name):
    counter = SECRET.parent / name
    count = len(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text("x" * count)
    return count


def replace_the_secret():
    new = SECRET.with_name("shadow+")
    new.write_text("changed")
    os.rename(new, SECRET)


def test_fails_once_while_the_secret_is_replaced(tmp_path):
    assert not (tmp_path / "left").exists()  # fresh fixtures on each attempt
    (tmp_path / "left").touch()
    if attempt("once") == 1:
        replace_the_secret()
        assert False, "stopped: /etc/shadow was replaced on the host during the run"


def test_fails_on_its_own():
    attempt("own")
    assert False, "a fault of ours"


def test_fails_while_replaced_every_time():
    attempt("always")
    replace_the_secret()
    assert False, "stopped again"
"""


def test_only_failures_while_a_masked_secret_was_replaced_run_again(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "etc" / "shadow"
    secret.parent.mkdir()
    secret.write_text("original")
    monkeypatch.setattr(host_secrets, "PATTERNS", (str(secret),))
    pytester.makepyfile(test_nested=textwrap.dedent(TESTS).format(secret=str(secret)))
    result = pytester.runpytest("-p", "tests.host_secrets", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    attempts = {name: len((secret.parent / name).read_text()) for name in ("once", "own")}
    assert attempts == {"once": 2, "own": 1}
    assert len((secret.parent / "always").read_text()) == 1 + host_secrets.RERUNS
    result.stdout.fnmatch_lines(
        [
            "*run again: a masked /etc secret was replaced during the test*",
            f"*test_fails_once_while_the_secret_is_replaced: {secret} replaced on the host*",
        ]
    )
