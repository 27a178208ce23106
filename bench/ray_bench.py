"""The `ray` backend's cost: the latency it adds, and throughput over one node and two.

PYTHONPATH=src python bench/ray_bench.py [rounds] [runs]

Starts the two-node cluster of the tests (`mechasandbox.testing.ray_cluster`: each node in
a network namespace of its own, the driver in the head's; root only), with a small
workspace (20 files, 80 KiB), then measures in the driver's process:

1. latency of `true`, interleaved rounds: the node's own backend (`auto`: bubblewrap)
   called directly in the driver, next to the same through Ray pinned to the driver's own
   node (what Ray and the workspace's tar add) and pinned to the other node; warm (a few
   runs first, then measured);
2. throughput: `runs` runs of `true`, 8 at a time, pinned to one node, then spread over
   both.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from mechasandbox.domain.policy import Policy
from mechasandbox.testing.ray_cluster import HEAD_ADDRESS, WORKER_ADDRESS, NetnsCluster

POLICY = Policy()
TRUE = ("true",)


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    reason = NetnsCluster.unavailable()
    if reason is not None:
        print(f"(skipped: {reason})")
        return
    with tempfile.TemporaryDirectory() as workspace, NetnsCluster.running() as cluster:
        for index in range(20):
            Path(workspace, f"file{index}.txt").write_bytes(b"x" * 4096)
        head, worker = cluster.node_id(HEAD_ADDRESS), cluster.node_id(WORKER_ADDRESS)
        contenders: dict[str, tuple[str, str | None]] = {
            "local bubblewrap on the node": ("bubblewrap", None),
            "ray, pinned to the same node": ("ray", head),
            "ray, pinned to the other node": ("ray", worker),
        }
        samples: dict[str, list[float]] = {name: [] for name in contenders}

        def once(via: str, node: str | None) -> dict[str, Any]:
            answer: dict[str, Any] = cluster.call("time", via, TRUE, workspace, POLICY, 1, 1, node)
            if "failed" in answer["nodes"]:
                raise SystemExit(f"a run failed ({via}, {node})")
            return answer

        for _ in range(10):  # warm: the nodes' workers, their applications, warm children
            for via, node in contenders.values():
                once(via, node)
        for _ in range(rounds):
            for name, (via, node) in contenders.items():
                samples[name] += once(via, node)["each"]
        print(f"latency of `true`, small workspace, {rounds} interleaved rounds (ms)")
        print(f"{'':34}{'p50':>8}{'p95':>8}")
        for name, values in samples.items():
            print(f"{name:34}{p(values, 0.5):>8.2f}{p(values, 0.95):>8.2f}")
        local = statistics.median(samples["local bubblewrap on the node"])
        added = statistics.median(samples["ray, pinned to the same node"]) - local
        print(f"{'added by ray (same node, p50)':34}{added * 1000:>8.2f}   (target <= 25)")

        print(f"\nthroughput of {runs} runs of `true`, 8 at a time")
        for name, node in (("one node (pinned)", head), ("two nodes (spread)", None)):
            cluster.call("time", "ray", TRUE, workspace, POLICY, 16, 8, node)  # warm
            answer = cluster.call("time", "ray", TRUE, workspace, POLICY, runs, 8, node)
            spread = len({n for n in answer["nodes"] if n})
            rate = runs / answer["total"]
            print(f"{name:34}{rate:>8.1f} runs/s  ({answer['total']:.2f} s, {spread} node(s))")


if __name__ == "__main__":
    main()
