"""The JSON result says exactly what happened (docs/cli.md, docs/failure-semantics.md):
the exact bytes of the output, the backend that answered, limits as a user wrote them, and
what a limit refused in a completed run as a violation rather than an error."""

from __future__ import annotations

import base64
import json
import pathlib
from typing import Any

import pytest

from mechasandbox.backends import catalog
from mechasandbox.cli.main import main
from mechasandbox.domain.capabilities import Protection
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    status = main(list(argv))
    obj: dict[str, Any] = json.loads(capsys.readouterr().out)
    return status, obj


@pytest.fixture
def bubblewrap(runner: HelperProcessRunner) -> str:
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend

    backend = BubblewrapBackend(runner=runner)
    require_available(backend)
    if Protection.PROCESSES not in backend.probe().unwrap().enforced:
        pytest.skip("no process limit here")
    return backend.name


def _run(workspace: pathlib.Path, *argv: str) -> tuple[str, ...]:
    return ("run", "--json", "--workspace", str(workspace), *argv)


def test_output_that_is_not_utf8_is_also_given_exactly(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, bubblewrap: str
) -> None:
    script = r"printf 'a\377b\300'; printf 'fine \342\234\223' >&2"
    status, obj = _json(capsys, *_run(tmp_path, "--backend", bubblewrap, "--", "sh", "-c", script))
    assert status == 0
    assert obj["stdout"] == "a\ufffdb\ufffd"  # the text form, as before
    assert base64.b64decode(obj["stdout_b64"]) == b"a\xffb\xc0"
    assert obj["stderr"] == "fine \u2713"
    assert obj["stderr_b64"] is None  # valid UTF-8: the text is exact


def test_a_failure_names_the_backend_auto_chose(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, bubblewrap: str
) -> None:
    status, obj = _json(capsys, *_run(tmp_path, "--", "no-such-command-here"))
    assert status == 127
    assert obj["error"]["kind"] == "spawn_failed"
    assert obj["backend"] in catalog.AUTO_ORDER  # the one that refused, not "auto"


def test_refused_forks_then_success_is_a_violation_with_exit_0(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, bubblewrap: str
) -> None:
    script = "(for i in $(seq 100); do sleep 1 & done) 2>/dev/null; exit 0"
    argv = _run(tmp_path, "--backend", bubblewrap, "--max-processes", "16", "--", "sh", "-c")
    status, obj = _json(capsys, *argv, script)
    assert status == 0
    assert obj["exit_code"] == 0
    assert obj["error"] is None
    (violation,) = obj["violations"]
    assert violation["kind"] == "process_limit"
    assert violation["count"] >= 1


def test_a_limit_error_gives_the_size_as_written(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, bubblewrap: str
) -> None:
    argv = _run(tmp_path, "--backend", bubblewrap, "--max-file-size", "1m", "--", "sh", "-c")
    status, obj = _json(capsys, *argv, "head -c 5000000 /dev/zero > big")
    assert status == 128 + 25
    assert obj["error"]["kind"] == "file_size_limit"
    assert "1m" in obj["error"]["message"]
