"""Which host files under /etc a bubblewrap run depends on staying put while it goes.

The sandbox sees the host's /etc read-only, with its secrets (`linux.roots.ETC_SECRETS`:
shadow, gshadow, sudoers...) masked. A mask is a mount on the file's directory entry: a host
process that replaces the file (`useradd`, `groupadd` and `passwd` write /etc/shadow and
/etc/gshadow by a rename over them) takes the mask off, and the command, as root, could read
the new file. So a run whose masked secret is replaced is stopped (`guards.py`). Replacing
any other /etc file (/etc/group, /etc/hosts) guards nothing and must not stop a run.

The replacements are made in a private mount namespace over an overlay of /etc, so the
host's own /etc is never written (other runs on the machine would be stopped by it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
from mechasandbox.runner.runner import HelperProcessRunner
from tests.conftest import require_available

SRC = str(Path(__file__).resolve().parents[2] / "src")

pytestmark = [
    pytest.mark.backend("bubblewrap"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only"),
]

# Runs in the private namespace: one run per name, each replacing /etc/<name> (a rename
# over it, as shadow-utils writes) once the command has started; prints the outcomes.
REPLACING = textwrap.dedent(
    """
    import json, os, sys, tempfile, threading, time
    import anyio
    from mechasandbox.backends.linux.bubblewrap import BubblewrapBackend
    from mechasandbox.domain.limits import Limits
    from mechasandbox.domain.policy import Policy
    from mechasandbox.domain.request import RunRequest
    from mechasandbox.runner.runner import HelperProcessRunner

    def replace_when_started(started, path):
        deadline = time.monotonic() + 30
        while not os.path.exists(started) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(path, "rb") as original:
            data = original.read()
        with open(path + "+", "wb") as new:
            new.write(data)
        os.chmod(path + "+", os.stat(path).st_mode)
        os.rename(path + "+", path)

    runner = HelperProcessRunner()
    outcomes = {}
    try:
        backend = BubblewrapBackend(runner=runner)
        for name in sys.argv[1:]:
            workspace = tempfile.mkdtemp()
            started = os.path.join(workspace, "started")
            replacing = threading.Thread(
                target=replace_when_started, args=(started, "/etc/" + name)
            )
            replacing.start()
            request = RunRequest(
                argv=("sh", "-c", "touch started; sleep 1; echo end"), workspace=workspace
            )
            result = anyio.run(backend.run, request, Policy(limits=Limits(timeout_s=30)))
            replacing.join()
            value = result.value_or(None)
            outcomes[name] = (
                "ran: " + value.stdout.decode() + " ".join(value.warnings)
                if value is not None
                else "failed: " + result.failure().message
            )
    finally:
        runner.close()
    print(json.dumps(outcomes))
    """
)

OVERLAY = """
set -e
mount -t tmpfs tmpfs "$SCRATCH"
mkdir "$SCRATCH/upper" "$SCRATCH/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$SCRATCH/upper,workdir=$SCRATCH/work" /etc
exec "$PYTHON" -c "$SCRIPT" "$@"
"""


def _replacing_in_a_private_etc(tmp_path: Path, *names: str) -> dict[str, str]:
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace over /etc")
    for name in names:
        if not os.path.isfile(f"/etc/{name}"):
            pytest.skip(f"this host has no /etc/{name}")
    scratch = tmp_path / "etc-overlay"
    scratch.mkdir()
    completed = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", OVERLAY, "sh", *names],
        env={
            **os.environ,
            "PYTHONPATH": SRC,
            "PYTHON": sys.executable,
            "SCRIPT": REPLACING,
            "SCRATCH": str(scratch),
        },
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    outcomes: dict[str, str] = json.loads(completed.stdout.decode().splitlines()[-1])
    return outcomes


def test_only_a_replaced_masked_secret_of_etc_stops_a_run(
    runner: HelperProcessRunner, tmp_path: Path
) -> None:
    require_available(BubblewrapBackend(runner=runner))
    outcomes = _replacing_in_a_private_etc(tmp_path, "group", "hosts", "gshadow")
    assert outcomes["group"] == "ran: end\n", outcomes
    assert outcomes["hosts"] == "ran: end\n", outcomes
    assert outcomes["gshadow"].startswith("failed: "), outcomes
    assert "stopped: /etc/gshadow was replaced on the host during the run" in outcomes["gshadow"]
