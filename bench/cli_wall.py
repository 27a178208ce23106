"""Wall time of CLI calls, for one or more source trees side by side.

    python bench/cli_wall.py [--runs N] [--tree DIR ...] [-- COMMAND ...]

Each round runs every command once per tree, in turn, so that load from other work on the
machine hits every tree alike. Each call is the real entry point, `python -m mechasandbox`,
with PYTHONPATH set to the tree's `src`, in an empty temporary directory. Prints p50, p10,
p90, min and max in ms, and the CPU time of the whole process tree (the CLI, its spawn
helper and the sandbox). Compile the trees' bytecode first (`python -m compileall -q src`):
an interpreter that may not write bytecode otherwise compiles every module on every call.

Defaults: the tree this file belongs to, `run --backend bubblewrap -- true` and `doctor`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = ("run --backend bubblewrap -- true", "doctor")


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--tree", action="append", default=[], help="a source tree (repeat)")
    parser.add_argument("command", nargs="*", help="CLI arguments, one string per command")
    args = parser.parse_args()
    trees = args.tree or [str(HERE.parent)]
    commands = args.command or list(COMMANDS)
    wall: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in commands}
    cpu: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in commands}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.runs):
            for tree in trees:
                env = {**os.environ, "PYTHONPATH": str(Path(tree) / "src")}
                for command in commands:
                    before = _cpu_of_children()
                    started = time.perf_counter()
                    done = subprocess.run(
                        [sys.executable, "-m", "mechasandbox", *command.split()],
                        env=env,
                        cwd=cwd,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        check=False,
                    )
                    wall[(tree, command)].append((time.perf_counter() - started) * 1000)
                    cpu[(tree, command)].append((_cpu_of_children() - before) * 1000)
                    if done.returncode:
                        print(f"{tree}: {command}: exit {done.returncode}", file=sys.stderr)
    print(f"{'tree':30} {'command':36} {'p50':>6} {'p10':>6} {'p90':>6} {'min':>6} {'max':>6} cpu")
    for (tree, command), samples in wall.items():
        deciles = statistics.quantiles(samples, n=10)
        print(
            f"{tree[-30:]:30} {command[:36]:36} {statistics.median(samples):6.0f} "
            f"{deciles[0]:6.0f} {deciles[-1]:6.0f} {min(samples):6.0f} {max(samples):6.0f} "
            f"{statistics.median(cpu[(tree, command)]):4.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
