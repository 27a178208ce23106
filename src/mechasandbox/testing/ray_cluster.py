"""A real two-node Ray cluster on one Linux machine, for tests and benchmarks of `ray`.

Nothing of it touches the host's network: the head runs in one network namespace, the
worker in another, joined by a veth pair whose private addresses exist only inside those
two namespaces; the driver (the process that joins the cluster and runs the `ray`
backend) runs in the head's namespace too, since a Ray driver joins through a node of
its own machine. The test process, in the host's namespace, reaches the driver through a
unix socket (`DriverBackend`), which crosses namespaces without any address. Ray would
otherwise put the host's own address in place of 127.0.0.1.

Every process is one of the cluster's namespaces, and stopping is killing the processes
in those namespaces (`ip netns pids`), then removing the namespaces: never `ray stop`,
which stops every Ray of the machine. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and
`ip`; `NetnsCluster.unavailable()` says why not otherwise.

    python -m mechasandbox.testing.ray_cluster serve SOCKET ADDRESS   (the driver's side)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Client, Connection, Listener
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import attrs
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext, LaunchPlan
from mechasandbox.domain.capabilities import Capabilities
from mechasandbox.domain.errors import BackendUnavailable, SandboxError
from mechasandbox.domain.policy import Policy
from mechasandbox.domain.request import RunRequest, StreamedInput
from mechasandbox.domain.result import RunResult

# The image the nodes' container backends run in (scripts/ci-engines.sh builds it).
IMAGE = "mechasandbox-test:busybox"
HEAD_ADDRESS = "10.213.0.1"
WORKER_ADDRESS = "10.213.0.2"
GCS_PORT = 6379
_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True)


def _in_namespace(namespace: str, argv: Sequence[str]) -> list[str]:
    """`argv` in the network namespace alone (`ip netns exec` would also mount a sysfs of
    its own there, which hides the cgroups the node's backends limit runs with)."""
    return ["nsenter", f"--net=/run/netns/{namespace}", "--", *argv]


@attrs.define
class NetnsCluster:
    """The namespaces, the temp dir and the driver of one cluster (see the module)."""

    name: str
    temp_dir: str
    node_backend: str = "auto"
    driver_socket: str = ""
    authkey: bytes = attrs.field(factory=lambda: secrets.token_bytes(16))
    driver: subprocess.Popen[bytes] | None = None

    @property
    def head(self) -> str:
        return f"{self.name}-h"

    @property
    def worker(self) -> str:
        return f"{self.name}-w"

    @property
    def address(self) -> str:
        return f"{HEAD_ADDRESS}:{GCS_PORT}"

    @staticmethod
    def unavailable() -> str | None:
        """Why a cluster cannot be started here, or None."""
        if not sys.platform.startswith("linux"):
            return "network namespaces are Linux's"
        if os.geteuid() != 0:
            return "creating network namespaces needs root"
        if shutil.which("ip") is None or shutil.which("nsenter") is None:
            return "no `ip` (iproute2) or `nsenter` (util-linux) for network namespaces"
        try:
            import ray  # noqa: F401
        except ImportError:
            return "Ray is not installed (pip install 'mechasandbox[ray]')"
        return None

    @classmethod
    @contextlib.contextmanager
    def running(cls, node_backend: str = "auto") -> Iterator[NetnsCluster]:
        name = f"msbray{os.getpid()}"
        cluster = cls(name=name, temp_dir=tempfile.mkdtemp(prefix="msbray-"))
        cluster.node_backend = node_backend
        try:
            cluster._network()
            cluster._start_node(cluster.head, head=True)
            cluster._start_node(cluster.worker, head=False)
            cluster._start_driver()
            cluster.wait_for_nodes(2)
            yield cluster
        finally:
            cluster.stop()

    def _network(self) -> None:
        _ip("netns", "add", self.head)
        _ip("netns", "add", self.worker)
        _ip("link", "add", f"{self.name}h", "type", "veth", "peer", "name", f"{self.name}w")
        _ip("link", "set", f"{self.name}h", "netns", self.head)
        _ip("link", "set", f"{self.name}w", "netns", self.worker)
        for namespace, device, address in (
            (self.head, f"{self.name}h", HEAD_ADDRESS),
            (self.worker, f"{self.name}w", WORKER_ADDRESS),
        ):
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", device)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "link", "set", device, "up")

    def _start_node(self, namespace: str, *, head: bool) -> None:
        ray_arguments = ["--num-cpus=2", "--disable-usage-stats"]
        if head:
            ray_arguments += [
                "--head",
                "--include-dashboard=false",
                f"--node-ip-address={HEAD_ADDRESS}",
                f"--port={GCS_PORT}",
                f"--temp-dir={self.temp_dir}",
            ]
        else:
            ray_arguments += [f"--address={self.address}", f"--node-ip-address={WORKER_ADDRESS}"]
        start = [sys.executable, "-m", "mechasandbox.backends.cluster.start"]
        start += ["--image", IMAGE, "--runtime", "runsc", "--", *ray_arguments]
        started = subprocess.run(
            _in_namespace(namespace, start),
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, **_ENVIRONMENT},
            timeout=120,
        )
        if started.returncode != 0:
            said = (started.stderr + started.stdout)[-2000:]
            raise RuntimeError(f"the Ray node in {namespace} did not start: {said}")

    def restart_worker(self) -> None:
        """The worker node again, after `kill_worker`."""
        self._start_node(self.worker, head=False)
        self.wait_for_nodes(2)

    def kill_worker(self) -> None:
        """SIGKILL to every process of the worker's namespace: the node is lost at once."""
        _kill_namespace(self.worker)

    def pause_worker(self, *, paused: bool = True) -> None:
        """SIGSTOP (or SIGCONT) to every process of the worker's namespace: a node that
        hangs, answering nothing."""
        for pid in _namespace_pids(self.worker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def kill_driver(self) -> None:
        """The caller killed mid-run: SIGKILL to the driver."""
        if self.driver is not None:
            self.driver.kill()
            self.driver.wait()

    def restart_driver(self) -> None:
        self.kill_driver()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.driver_socket)
        self._start_driver()

    def _start_driver(self) -> None:
        self.driver_socket = os.path.join(self.temp_dir, "driver.sock")
        serve = [sys.executable, "-m", "mechasandbox.testing.ray_cluster", "serve"]
        serve += [self.driver_socket, self.address, self.node_backend]
        self.driver = subprocess.Popen(
            _in_namespace(self.head, serve),
            env={**os.environ, **_ENVIRONMENT, "MECHASANDBOX_DRIVER_KEY": self.authkey.hex()},
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(self.driver_socket):
            if self.driver.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the cluster's driver did not start")
            time.sleep(0.05)

    def call(self, *request: Any) -> Any:
        """One request to the driver and its one answer."""
        with Client(self.driver_socket, authkey=self.authkey) as connection:
            connection.send(request)
            return connection.recv()

    def driver_pid(self) -> int:
        return int(self.call("pid"))

    def nodes(self) -> list[dict[str, Any]]:
        """The live nodes: `node_id`, `address`, `resources`."""
        return list(self.call("nodes"))

    def node_id(self, address: str) -> str:
        return str(next(node["node_id"] for node in self.nodes() if node["address"] == address))

    def wait_for_nodes(self, count: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.nodes()) != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {count} live nodes")
            time.sleep(0.2)

    def backend(
        self,
        pinned_to: str | None = None,
        node_backend: tuple[str, str | None] | None = None,
        *,
        preferred: bool = False,
        retries: int | None = None,
    ) -> DriverBackend:
        """The driver's `ray` backend (`RayBackend.pinned` with `pinned_to`, `preferred`);
        `node_backend`: (name, runtime) the nodes run under instead of `auto`; `retries`:
        `[ray] retries`."""
        return DriverBackend(
            cluster=self,
            pinned_to=pinned_to,
            node_backend=node_backend,
            preferred=preferred,
            retries=retries,
        )

    @contextlib.contextmanager
    def session(
        self, workspace: str, policy: Policy, pinned_to: str | None = None
    ) -> Iterator[Result[DriverSession, SandboxError]]:
        """A session of the driver's `ray` backend (`RayBackend.open_session`), closed after
        the block."""
        opened: Result[str, SandboxError] = self.call("session_open", workspace, policy, pinned_to)
        try:
            yield opened.map(lambda key: DriverSession(cluster=self, key=key))
        finally:
            if isinstance(opened, Success):
                self.call("session_close", opened.unwrap())

    def stop(self) -> None:
        if self.driver is not None and self.driver.poll() is None:
            self.driver.kill()
            self.driver.wait()
        for namespace in (self.worker, self.head):
            _kill_namespace(namespace)
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _namespace_pids(namespace: str) -> list[int]:
    found = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


def _kill_namespace(namespace: str) -> None:
    """Every process in `namespace` (all started by this cluster), until none is left."""
    for _ in range(50):
        pids = _namespace_pids(namespace)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


@attrs.frozen(kw_only=True)
class DriverBackend:
    """The `ray` backend of the cluster's driver, as a `Backend` of this process: each call
    goes over the driver's unix socket (a streamed input's descriptor with it)."""

    cluster: NetnsCluster
    pinned_to: str | None = None
    node_backend: tuple[str, str | None] | None = None
    preferred: bool = False
    retries: int | None = None

    @property
    def name(self) -> str:
        return "ray"

    def probe(self) -> Result[Capabilities, BackendUnavailable]:
        found: Result[Capabilities, BackendUnavailable] = self.cluster.call("probe")
        return found

    def plan(
        self, request: RunRequest, policy: Policy, host: HostContext
    ) -> Result[LaunchPlan, SandboxError]:
        planned: Result[LaunchPlan, SandboxError] = self.cluster.call(
            "plan", tuple(request.argv), request.workspace, policy
        )
        return planned

    async def run(self, request: RunRequest, policy: Policy) -> Result[RunResult, SandboxError]:
        sink = request.on_output

        def call() -> Result[RunResult, SandboxError]:
            with Client(self.cluster.driver_socket, authkey=self.cluster.authkey) as connection:
                streamed = isinstance(request.stdin, StreamedInput)
                stdin = None if streamed else request.stdin
                connection.send(
                    ("run", tuple(request.argv), request.workspace, stdin, streamed, policy)
                )
                connection.send((self.pinned_to, self.preferred, self.node_backend, self.retries))
                if isinstance(request.stdin, StreamedInput):
                    send_handle(connection, request.stdin.fd, self.cluster.driver_pid())
                while True:
                    kind, value = connection.recv()
                    if kind == "output" and sink is not None:
                        anyio.from_thread.run_sync(sink, value)
                    elif kind == "result":
                        outcome: Result[RunResult, SandboxError] = value
                        return outcome

        return await anyio.to_thread.run_sync(call)


@attrs.frozen(kw_only=True)
class DriverSession:
    """A session held by the driver (`NetnsCluster.session`), driven over its socket."""

    cluster: NetnsCluster
    key: str

    def facts(self) -> dict[str, Any]:
        """`node`, `directory` (the node's copy), `warnings`, `ended` of the session."""
        return dict(self.cluster.call("session_facts", self.key))

    def run(
        self, argv: Sequence[str], *, on_output: Any = None, limits: Any = None
    ) -> Result[RunResult, SandboxError]:
        with Client(self.cluster.driver_socket, authkey=self.cluster.authkey) as connection:
            connection.send(("session_run", self.key, tuple(argv), limits))
            while True:
                kind, value = connection.recv()
                if kind == "output" and on_output is not None:
                    on_output(value)
                elif kind == "result":
                    outcome: Result[RunResult, SandboxError] = value
                    return outcome

    def export(self) -> Result[tuple[str, ...], SandboxError]:
        exported: Result[tuple[str, ...], SandboxError] = self.cluster.call(
            "session_export", self.key
        )
        return exported


# --- the driver's side ---------------------------------------------------------------------
def _serve(socket_path: str, address: str, node_backend: str) -> None:
    from mechasandbox.config.schema import BackendSettings, RaySettings, Settings
    from mechasandbox.containers import Application

    settings = Settings(
        backend=BackendSettings(name="ray"),
        ray=RaySettings(address=address, backend=node_backend, grace=3.0, max_transfer=16 << 20),
    )
    app = Application.from_config(
        workspace=tempfile.gettempdir(), user_file=None, settings=settings
    ).unwrap()
    backend: Any = app.backends.selected()
    probed = backend.probe()
    if isinstance(probed, Failure):
        raise SystemExit(f"the driver cannot use the cluster: {probed.failure().message}")
    listener = Listener(socket_path, family="AF_UNIX", authkey=bytes.fromhex(_key()))
    local = _LocalBackends()
    with anyio.from_thread.start_blocking_portal() as portal:
        sessions = _Sessions(portal=portal)
        while True:
            connection = listener.accept()
            arguments = (connection, backend, local, sessions)
            threading.Thread(target=_answer, args=arguments, daemon=True).start()


@attrs.define
class _Sessions:
    """The driver's open sessions, by key, all on one event loop (`portal`)."""

    portal: Any
    open: dict[str, Any] = attrs.field(factory=dict)

    def answer(self, connection: Connection, backend: Any, request: tuple[Any, ...]) -> None:
        from mechasandbox.backends.session_base import SessionSettings

        kind, *rest = request
        if kind == "session_open":
            workspace, policy, pinned_to = rest
            chosen = backend if pinned_to is None else backend.pinned(pinned_to)
            opened = self.portal.call(chosen.open_session, workspace, policy, SessionSettings())
            key = secrets.token_hex(8)
            if isinstance(opened, Success):
                self.open[key] = opened.unwrap()
            connection.send(opened.map(lambda _: key))
            return
        session = self.open[rest[0]]
        if kind == "session_facts":
            facts = {"node": session.node, "directory": session.directory}
            connection.send({**facts, "warnings": session.warnings, "ended": session.ended})
        elif kind == "session_run":
            _, argv, limits = rest

            def send(event: Any) -> None:
                connection.send(("output", event))

            run = RunRequest(argv=argv, workspace=session.workspace, on_output=send)
            connection.send(("result", self.portal.call(lambda: session.run(run, limits=limits))))
        elif kind == "session_export":
            connection.send(self.portal.call(session.export))
        elif kind == "session_close":
            self.portal.call(self.open.pop(rest[0]).aclose)
            connection.send(None)


@attrs.define
class _LocalBackends:
    """The driver's node's own backends, built once (warm, as the nodes' are)."""

    built: dict[str, Any] = attrs.field(factory=dict)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def named(self, name: str) -> Any:
        from mechasandbox.containers import Application

        with self.lock:
            if name not in self.built:
                app = Application()
                app.config.from_dict({**app.config(), "backend": name})
                self.built[name] = app.backends.selected()
            return self.built[name]


def _key() -> str:
    return os.environ["MECHASANDBOX_DRIVER_KEY"]


def _answer(
    connection: Connection, backend: Any, local: _LocalBackends, sessions: _Sessions
) -> None:
    with connection:
        request = connection.recv()
        kind = request[0]
        if kind.startswith("session_"):
            sessions.answer(connection, backend, request)
        elif kind == "pid":
            connection.send(os.getpid())
        elif kind == "probe":
            connection.send(backend.probe())
        elif kind == "nodes":
            import ray

            connection.send(
                [
                    {
                        "node_id": node["NodeID"],
                        "address": node["NodeManagerAddress"],
                        "resources": node["Resources"],
                    }
                    for node in ray.nodes()
                    if node["Alive"]
                ]
            )
        elif kind == "plan":
            _, argv, workspace, policy = request
            planned = RunRequest(argv=argv, workspace=workspace)
            connection.send(backend.plan(planned, policy, HostContext.current()))
        elif kind == "run":
            _run(connection, backend, request)
        elif kind == "time":
            via = request[1]
            chosen = backend if via == "ray" else local.named(via)
            connection.send(_time(chosen, *request[2:]))
        elif kind == "raw":
            connection.send(_raw(backend, *request[1:]))


def _run(connection: Connection, backend: Any, request: tuple[Any, ...]) -> None:
    _, argv, workspace, stdin, streamed, policy = request
    pinned_to, preferred, node_backend, retries = connection.recv()
    if streamed:
        stdin = StreamedInput(recv_handle(connection))
    chosen = backend if pinned_to is None else backend.pinned(pinned_to, preferred=preferred)
    if node_backend is not None or retries is not None:
        from mechasandbox.backends.cluster.connection import ClusterConnection

        settings = chosen.connection.settings
        if retries is not None:
            settings = attrs.evolve(settings, retries=retries)
        if node_backend is not None:
            name, runtime = node_backend
            settings = attrs.evolve(settings, backend=name)
            chosen = attrs.evolve(chosen, runtime=runtime, image=IMAGE)
        chosen = attrs.evolve(chosen, connection=ClusterConnection(settings=settings))

    def send(event: Any) -> None:
        connection.send(("output", event))

    run = RunRequest(argv=argv, workspace=workspace, stdin=stdin, on_output=send)
    try:
        result = anyio.run(chosen.run, run, policy)
    finally:
        if isinstance(stdin, StreamedInput):
            os.close(stdin.fd)
    connection.send(("result", result))


def _raw(
    backend: Any, variant: str, resources: dict[str, float], policy: Policy, workspace: str
) -> list[Any]:
    """The node's side handed a run as given (`true` under `variant`, placed by
    `resources`), bypassing the caller's checks: what the node itself says."""
    import ray

    from mechasandbox.backends.cluster import transfer
    from mechasandbox.backends.cluster.wire import NodeRun

    run = NodeRun(
        argv=("true",),
        stdin=None,
        policy=policy,
        variant=variant,
        image=None,
        workspace=transfer.pack_workspace(workspace, 1 << 20).unwrap()[0],
        caller_workspace=workspace,
        max_transfer=1 << 20,
    )
    task = backend.connection.task().options(resources=resources, max_retries=0)
    return [ray.get(reference) for reference in task.remote(run)]


def _time(
    backend: Any,
    argv: tuple[str, ...],
    workspace: str,
    policy: Policy,
    count: int,
    concurrency: int,
    pinned_to: str | None,
) -> dict[str, Any]:
    """`count` runs of `argv`, `concurrency` at a time, through `backend` (the `ray`
    backend, or a local backend of the driver's node), timed here: each run's seconds, the
    whole, and the nodes that ran them."""
    chosen = backend if pinned_to is None else backend.pinned(pinned_to)
    each: list[float] = []
    nodes: list[str | None] = []

    async def one() -> None:
        started = time.perf_counter()
        result = await chosen.run(RunRequest(argv=argv, workspace=workspace), policy)
        each.append(time.perf_counter() - started)
        nodes.append(result.unwrap().node if isinstance(result, Success) else "failed")

    async def all_runs() -> None:
        limiter = anyio.CapacityLimiter(concurrency)

        async def limited() -> None:
            async with limiter:
                await one()

        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(limited)

    started = time.perf_counter()
    anyio.run(all_runs)
    return {"each": each, "total": time.perf_counter() - started, "nodes": nodes}


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2], sys.argv[3], sys.argv[4])
