"""Run by `oci_sessions_bench.py` in llm-sandbox's own venv (never the project's): one
llm-sandbox docker session on a local image, driven over stdin. A line `open` answers the
seconds its session took to open; a line `N` runs `execute_command("true")` N times and
answers their durations; `close` ends it. Answers are JSON lines on stdout."""

from __future__ import annotations

import json
import sys
import time

from llm_sandbox import SandboxSession


def main() -> None:
    image = sys.argv[1]
    session = None
    for line in sys.stdin:
        word = line.strip()
        if word == "open":
            started = time.perf_counter()
            session = SandboxSession(
                lang="python",
                image=image,
                keep_template=True,
                skip_environment_setup=True,
                runtime_configs={"network_mode": "none"},  # never any network
                verbose=False,
            )
            session.open()
            print(json.dumps(time.perf_counter() - started), flush=True)
        elif word == "close":
            if session is not None:
                session.close()
            print(json.dumps(0), flush=True)
            return
        else:
            assert session is not None
            walls = []
            for _ in range(int(word)):
                started = time.perf_counter()
                result = session.execute_command("true")
                walls.append(time.perf_counter() - started)
                assert result.exit_code == 0, result
            print(json.dumps(walls), flush=True)


if __name__ == "__main__":
    main()
