"""The `ray` backend on a real two-node cluster (`ray_cluster`, in network namespaces):
placement, the policy on the nodes, deadlines, what comes back into the workspace, and a
node lost mid-run. The test that kills the worker node comes last and starts it again."""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
import threading
import time
from typing import Any

import anyio
import attrs
import pytest
from returns.result import Failure, Result

from mechasandbox.backends.cluster.wire import NodeFinished
from mechasandbox.domain.errors import (
    BackendFailed,
    BackendUnavailable,
    MemoryLimit,
    NodeLost,
    PolicyUnsupported,
    SandboxError,
    Timeout,
)
from mechasandbox.domain.events import OutputEvent
from mechasandbox.domain.limits import MIB, Limits
from mechasandbox.domain.policy import (
    HostProcesses,
    NetworkMode,
    NetworkPolicy,
    Policy,
)
from mechasandbox.domain.request import RunRequest
from mechasandbox.domain.result import RunResult
from mechasandbox.testing.ray_cluster import GCS_PORT, HEAD_ADDRESS, WORKER_ADDRESS, NetnsCluster

pytestmark = pytest.mark.ray

POLICY = Policy()


def run(
    cluster: NetnsCluster,
    argv: list[str],
    workspace: pathlib.Path,
    policy: Policy = POLICY,
    *,
    pinned_to: str | None = None,
    on_output: Any = None,
) -> Result[RunResult, SandboxError]:
    request = RunRequest(argv=tuple(argv), workspace=str(workspace), on_output=on_output)
    return anyio.run(cluster.backend(pinned_to).run, request, policy)


def test_runs_spread_over_both_nodes(ray_cluster: NetnsCluster, tmp_path: pathlib.Path) -> None:
    timed = ray_cluster.call("time", "ray", ("sleep", "0.3"), str(tmp_path), POLICY, 8, 8, None)
    addresses = {node["node_id"]: node["address"] for node in ray_cluster.nodes()}
    assert {addresses.get(node) for node in timed["nodes"]} == {HEAD_ADDRESS, WORKER_ADDRESS}


@pytest.mark.parametrize("address", [HEAD_ADDRESS, WORKER_ADDRESS])
def test_a_pinned_run_goes_to_its_node(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path, address: str
) -> None:
    node = ray_cluster.node_id(address)
    for _ in range(3):
        assert run(ray_cluster, ["true"], tmp_path, pinned_to=node).unwrap().node == node


def test_no_network_inside_not_even_the_cluster(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """The cluster's own GCS port answers on the node's network (it is how the node
    joined), yet the command cannot reach it."""
    script = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(({HEAD_ADDRESS!r}, {GCS_PORT}), 3)\n"
        "    print('connected')\n"
        "except OSError as error:\n"
        "    print('refused', error)\n"
    )
    finished = run(ray_cluster, ["python3", "-c", script], tmp_path).unwrap()
    assert finished.stdout.startswith(b"refused"), finished


def test_the_allowlist_never_reaches_the_cluster(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """Even an allowlist naming the head's address and port: Ray's port runs code for
    whoever reaches it, so the proxy on the node refuses every address of the cluster."""
    network = NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=(f"{HEAD_ADDRESS}:{GCS_PORT}",))
    script = (
        "import urllib.request\n"
        "try:\n"
        f"    urllib.request.urlopen('http://{HEAD_ADDRESS}:{GCS_PORT}/', timeout=5)\n"
        "    print('reached')\n"
        "except Exception as error:\n"
        "    print('refused', error)\n"
    )
    node = ray_cluster.node_id(WORKER_ADDRESS)
    policy = attrs.evolve(POLICY, network=network)
    finished = run(ray_cluster, ["python3", "-c", script], tmp_path, policy, pinned_to=node)
    result = finished.unwrap()
    assert result.stdout.startswith(b"refused"), result
    assert any(HEAD_ADDRESS in v.detail for v in result.violations if v.kind == "network"), result


def test_timeout_on_the_node(ray_cluster: NetnsCluster, tmp_path: pathlib.Path) -> None:
    policy = attrs.evolve(POLICY, limits=Limits(timeout_s=1.0))
    started = time.monotonic()
    result = run(ray_cluster, ["sh", "-c", "echo started; sleep 30"], tmp_path, policy)
    assert time.monotonic() - started < 4.0
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, Timeout), error
    assert error.partial.stdout == b"started\n"
    assert error.partial.node is not None


def test_out_of_memory_on_the_node(ray_cluster: NetnsCluster, tmp_path: pathlib.Path) -> None:
    policy = attrs.evolve(POLICY, limits=Limits(memory_bytes=64 * MIB, timeout_s=30))
    bomb = "b = bytearray(512 * 1024 * 1024); print(len(b))"
    result = run(ray_cluster, ["python3", "-c", bomb], tmp_path, policy)
    assert isinstance(result, Failure), result
    assert isinstance(result.failure(), MemoryLimit), result


def test_docker_under_gvisor_on_the_nodes(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """`[ray] backend = "docker"` with `runtime = "runsc"`: the nodes advertise the variant
    `docker+runsc` (started with `--image` and `--runtime runsc`) and run it; the kernel the
    command sees is gVisor's, and its changes come back."""
    from tests.conftest import required_backends

    if not any("mechasandbox:docker+runsc" in n["resources"] for n in ray_cluster.nodes()):
        reason = "no node advertises docker under runsc (no docker, gVisor or test image)"
        if "docker" in required_backends():
            pytest.fail(reason)
        pytest.skip(reason)
    request = RunRequest(argv=("sh", "-c", "uname -r; echo made > f"), workspace=str(tmp_path))
    backend = ray_cluster.backend(node_backend=("docker", "runsc"))
    finished = anyio.run(backend.run, request, POLICY).unwrap()
    assert finished.backend == "docker", finished
    assert finished.stdout.decode().strip() != os.uname().release  # gVisor's own kernel
    assert (tmp_path / "f").read_text() == "made\n"


def test_a_run_pinned_to_no_node_is_refused(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    result = run(ray_cluster, ["true"], tmp_path, pinned_to="00" * 28)
    assert isinstance(result, Failure), result
    assert isinstance(result.failure(), BackendUnavailable), result


def test_a_node_refuses_what_its_backend_cannot_enforce(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """Fail closed on the node: a strict run handed to a node whose backend cannot
    enforce its policy (placed by the variant's resource alone, so Ray lets it through)
    is refused by that backend there, and nothing runs."""
    policy = Policy(host_processes=HostProcesses.HIDDEN)
    messages = ray_cluster.call(
        "raw", "landlock", {"mechasandbox:landlock": 1.0}, policy, str(tmp_path)
    )
    finished = messages[-1]
    assert isinstance(finished, NodeFinished)
    assert isinstance(finished.outcome, PolicyUnsupported), finished


def test_a_node_refuses_a_variant_it_does_not_advertise(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    messages = ray_cluster.call(
        "raw", "seatbelt", {"mechasandbox:bubblewrap": 1.0}, POLICY, str(tmp_path)
    )
    (finished,) = messages
    assert isinstance(finished.outcome, BackendUnavailable), finished


def test_strict_runs_go_only_where_the_policy_is_enforced(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """The caller's side: what no node enforces is refused before anything is sent."""
    from mechasandbox.backends.cluster.resources import NodeView, missing_on_best
    from mechasandbox.domain.capabilities import Protection

    nodes = [
        NodeView(node_id=n["node_id"], address=n["address"], resources=n["resources"])
        for n in ray_cluster.nodes()
    ]
    hidden = Policy(host_processes=HostProcesses.HIDDEN)
    assert missing_on_best(nodes, "landlock", hidden) == (Protection.HOST_PROCESSES_HIDDEN,)
    assert missing_on_best(nodes, "bubblewrap", hidden) == ()
    assert missing_on_best(nodes, "seatbelt", hidden) is None  # no node runs it


# --- what comes back into the workspace ----------------------------------------------------
def test_changes_come_back_and_removals_too(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "old.txt").write_text("old\n")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "inside").write_text("x")
    script = "cat old.txt > copy.txt; mkdir -p new/deep; echo hi > new/deep/f; rm -r gone"
    run(ray_cluster, ["sh", "-c", script], tmp_path).unwrap()
    assert (tmp_path / "copy.txt").read_text() == "old\n"
    assert (tmp_path / "new" / "deep" / "f").read_text() == "hi\n"
    assert not (tmp_path / "gone").exists()


def test_link_tricks_do_not_come_back(ray_cluster: NetnsCluster, tmp_path: pathlib.Path) -> None:
    """A link out of the workspace, a set-user-ID file, a write to a protected path: none
    reaches the caller's workspace as the command meant it."""
    script = (
        "ln -s /etc/shadow shadow; ln -s ../../../../../../etc escape; ln -s inside.txt ok;"
        " echo x > inside.txt; cp /bin/true suid; chmod 4755 suid;"
        " mkdir -p .git/hooks; echo evil > .git/hooks/post-checkout 2>/dev/null; true"
    )
    finished = run(ray_cluster, ["sh", "-c", script], tmp_path).unwrap()
    assert not os.path.lexists(tmp_path / "shadow")
    assert not os.path.lexists(tmp_path / "escape")
    assert os.readlink(tmp_path / "ok") == "inside.txt"
    assert not (tmp_path / "suid").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert not (tmp_path / ".git" / "hooks" / "post-checkout").exists()
    assert any("shadow" in w and "link out" in w for w in finished.warnings), finished.warnings


def test_a_link_in_the_callers_workspace_is_never_written_through(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """The caller's workspace holds `out -> outside` (a link to a directory elsewhere): the
    node sees a link out of its copy (not carried), the command makes `out/` a directory
    with a file, and that file lands in a directory that replaced the link, never in
    `outside`."""
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (workspace / "out").symlink_to(outside)
    result = run(ray_cluster, ["sh", "-c", "mkdir -p out && echo pwned > out/f"], workspace)
    finished = result.unwrap()
    assert list(outside.iterdir()) == []
    assert not (workspace / "out").is_symlink()
    assert (workspace / "out" / "f").read_text() == "pwned\n"
    assert any("out ->" in w for w in finished.warnings), finished.warnings


def test_denied_paths_in_the_workspace_stay_denied_on_the_node(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """`deny_read` inside the workspace is never sent; `deny_write` inside it is the node
    copy's (the policy's paths are moved there) and never written back."""
    (tmp_path / "secret.txt").write_text("sk-live-123\n")
    (tmp_path / "locked.txt").write_text("as it was\n")
    fs = attrs.evolve(
        POLICY.filesystem,
        deny_read=(*POLICY.filesystem.deny_read, str(tmp_path / "secret.txt")),
        deny_write=(str(tmp_path / "locked.txt"),),
    )
    script = "cat secret.txt; echo changed > locked.txt; cat locked.txt"
    finished = run(ray_cluster, ["sh", "-c", script], tmp_path, attrs.evolve(POLICY, filesystem=fs))
    result = finished.unwrap()
    assert b"sk-live" not in result.stdout + result.stderr
    assert b"changed" not in result.stdout, result
    assert (tmp_path / "secret.txt").read_text() == "sk-live-123\n"
    assert (tmp_path / "locked.txt").read_text() == "as it was\n"


def test_a_workspace_bomb_is_refused(ray_cluster: NetnsCluster, tmp_path: pathlib.Path) -> None:
    """More than the cap (16 MiB for the driver of these tests) written by the command: the
    changes are not carried back, and the run says so instead of leaving the workspace
    silently behind."""
    script = "head -c 20000000 /dev/zero > big; echo done"
    result = run(ray_cluster, ["sh", "-c", script], tmp_path)
    assert isinstance(result, Failure), result
    error = result.failure()
    assert isinstance(error, BackendFailed), error
    assert "not carried back" in error.reason
    assert not (tmp_path / "big").exists()


def test_a_workspace_too_big_to_send_is_refused(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "big").write_bytes(b"\0" * (17 << 20))
    result = run(ray_cluster, ["true"], tmp_path)
    assert isinstance(result, Failure), result
    assert "cannot be sent" in result.failure().message


# --- the caller's side of a deadline, the caller killed -------------------------------------
def started_event() -> tuple[threading.Event, Any]:
    started = threading.Event()

    def seen(event: OutputEvent) -> None:
        if b"started" in event.data:
            started.set()

    return started, seen


def test_a_hung_node_is_left_after_timeout_and_grace(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """The worker node stops answering (SIGSTOP to all of it) after the command started:
    the node cannot enforce its timeout, so the caller cancels the task at timeout + grace
    (1 s + 3 s for this driver) and ends the run at once as a
    `Timeout` with the output that arrived. The command is gone once the node runs again."""
    marker = f"hung-{os.getpid()}-{time.monotonic_ns()}"
    started, seen = started_event()

    def pause() -> None:
        if started.wait(30):
            ray_cluster.pause_worker()

    pauser = threading.Thread(target=pause)
    pauser.start()
    policy = attrs.evolve(POLICY, limits=Limits(timeout_s=1.0))
    try:
        began = time.monotonic()
        result = run(
            ray_cluster,
            ["sh", "-c", f"echo started; sleep 40 # {marker}"],
            tmp_path,
            policy,
            pinned_to=ray_cluster.node_id(WORKER_ADDRESS),
            on_output=seen,
        )
        elapsed = time.monotonic() - began
        pauser.join()
        assert isinstance(result, Failure), result
        error = result.failure()
        assert isinstance(error, Timeout), error
        assert error.partial.stdout == b"started\n"
        assert 4.0 <= elapsed < 15.0, elapsed
    finally:
        pauser.join()
        ray_cluster.pause_worker(paused=False)
        assert gone(marker, within_s=20)
        ray_cluster.kill_worker()
        ray_cluster.restart_worker()


def gone(marker: str, within_s: float) -> bool:
    from mechasandbox.runner.proctable import alive_with_marker

    deadline = time.monotonic() + within_s
    while alive_with_marker(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_the_caller_killed_mid_run_ends_the_command(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """The driver dies (SIGKILL) while its command runs on a node: Ray ends the tasks of a
    driver that is gone, and the node's spawn helper kills the command's tree."""
    from mechasandbox.runner.proctable import alive_with_marker

    marker = f"orphan-{os.getpid()}-{time.monotonic_ns()}"
    started, seen = started_event()
    worker = ray_cluster.node_id(WORKER_ADDRESS)

    def call() -> None:
        argv = ["sh", "-c", f"echo started; sleep 60 # {marker}"]
        with contextlib.suppress(EOFError, OSError):  # the driver is killed under it
            run(ray_cluster, argv, tmp_path, pinned_to=worker, on_output=seen)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        assert started.wait(30)
        assert alive_with_marker(marker), "the command must be running (else: vacuous)"
        ray_cluster.kill_driver()
        assert gone(marker, within_s=30)
    finally:
        ray_cluster.restart_driver()
        caller.join(10)


def test_a_lost_node_runs_the_command_again_only_when_the_caller_opted_in(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """`[ray] retries = 1`, the run preferring the worker: the worker is killed mid-run,
    and Ray runs the command again on the head; the result is that run's. (Without the
    opt-in it is a `NodeLost`: the test after this one.)"""
    started, seen = started_event()
    worker, head = ray_cluster.node_id(WORKER_ADDRESS), ray_cluster.node_id(HEAD_ADDRESS)
    killed_while_running: list[bool] = []

    def kill_when_started() -> None:
        if started.wait(30):
            # The first attempt runs on the worker (else: vacuous): its `sleep` is a child
            # of a process in the worker's namespace.
            killed_while_running.append(_runs_in(ray_cluster.worker, "sleep 5"))
            ray_cluster.kill_worker()

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    request = RunRequest(
        argv=("sh", "-c", "echo started; sleep 5; echo done"),
        workspace=str(tmp_path),
        on_output=seen,
    )
    backend = ray_cluster.backend(worker, preferred=True, retries=1)
    try:
        result = anyio.run(backend.run, request, POLICY)
        killer.join()
        finished = result.unwrap()
        assert killed_while_running == [True]
        assert finished.node == head, finished
        assert finished.stdout == b"started\ndone\n"
    finally:
        killer.join()
        ray_cluster.restart_worker()


def _runs_in(namespace: str, command: str) -> bool:
    """Whether a process running `command` descends from one in the network namespace
    `namespace` (the sandbox's own processes are in a namespace of their own)."""
    wanted = os.stat(f"/run/netns/{namespace}").st_ino
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            line = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if command.encode() not in line:
            continue
        pid = int(entry)
        while pid > 1:
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino == wanted:
                    return True
                fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                break
            pid = int(fields[1])
    return False


def test_the_cli_on_the_cluster_and_ctrl_c(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    """`mechasandbox run` with `[ray]` in a configuration file, in the head's namespace:
    the JSON object names the node, the changes are back; a SIGINT stops the command on
    its node at once (the task cancelled), and the CLI says `interrupted`."""
    import json
    import signal
    import subprocess
    import sys

    from mechasandbox.runner.proctable import alive_with_marker

    config = tmp_path / "ray.toml"
    config.write_text(f'[backend]\nname = "ray"\n[ray]\naddress = "{ray_cluster.address}"\n')
    workspace = tmp_path / "ws"
    workspace.mkdir()
    cli = ["nsenter", f"--net=/run/netns/{ray_cluster.head}", "--", sys.executable]
    cli += ["-m", "mechasandbox", "run", "--config", str(config), "--workspace", str(workspace)]
    done = subprocess.run(
        [*cli, "--json", "--", "sh", "-c", "echo hi; echo x > made"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    answer = json.loads(done.stdout)
    assert (done.returncode, answer["stdout"], answer["error"]) == (0, "hi\n", None), done
    assert answer["node"] in {node["node_id"] for node in ray_cluster.nodes()}
    assert (workspace / "made").read_text() == "x\n"

    marker = f"cli-{os.getpid()}-{time.monotonic_ns()}"
    running = subprocess.Popen(
        [*cli, "--", "sh", "-c", f"echo started; sleep 60 # {marker}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert running.stdout is not None
        assert running.stdout.readline() == "started\n"
        assert alive_with_marker(marker), "the command must be running (else: vacuous)"
        running.send_signal(signal.SIGINT)
        _, stderr = running.communicate(timeout=15)
    finally:
        running.kill()
        running.wait()
    assert running.returncode == 130, stderr
    assert "interrupted" in stderr
    assert gone(marker, within_s=10)


# --- a node lost: last, it starts the worker node again ------------------------------------
def test_a_node_killed_mid_run_is_a_typed_error_and_the_other_node_serves(
    ray_cluster: NetnsCluster, tmp_path: pathlib.Path
) -> None:
    worker = ray_cluster.node_id(WORKER_ADDRESS)
    started = threading.Event()

    def seen(event: OutputEvent) -> None:
        if b"started" in event.data:
            started.set()

    def kill_when_started() -> None:
        if started.wait(30):
            ray_cluster.kill_worker()

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    policy = attrs.evolve(POLICY, limits=Limits(timeout_s=60))
    try:
        began = time.monotonic()
        result = run(
            ray_cluster,
            ["sh", "-c", "echo started; sleep 50; echo never > marker"],
            tmp_path,
            policy,
            pinned_to=worker,
            on_output=seen,
        )
        elapsed = time.monotonic() - began
        killer.join()
        assert isinstance(result, Failure), result
        error = result.failure()
        assert isinstance(error, NodeLost), error
        assert error.node == worker
        assert error.partial.stdout == b"started\n"
        assert elapsed < 45, "lost, not waited for until the timeout"
        assert not (tmp_path / "marker").exists()
        # The head still serves.
        again = run(ray_cluster, ["sh", "-c", "echo fine"], tmp_path).unwrap()
        assert again.stdout == b"fine\n"
        assert again.node == ray_cluster.node_id(HEAD_ADDRESS)
    finally:
        killer.join()
        ray_cluster.restart_worker()
