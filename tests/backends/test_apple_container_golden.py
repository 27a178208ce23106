"""Golden tests of the `container run` arguments, and unit tests of the backend (any platform).

Regenerate the golden files with `MECHASANDBOX_UPDATE_GOLDEN=1 pytest tests/backends`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from returns.result import Failure, Result, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.macos.apple_container import (
    LINUX_PATH,
    AppleContainerBackend,
    ContainerInvocation,
    compile_args,
)
from mechasandbox.domain import (
    GIB,
    ConfigInvalid,
    Enforcement,
    FilesystemPolicy,
    Limits,
    NetworkMode,
    NetworkPolicy,
    Policy,
    PolicyUnsupported,
    Protection,
    RunRequest,
    SpawnFailed,
    Timeout,
)
from mechasandbox.domain.policy import EnvironmentPolicy
from mechasandbox.domain.result import Usage
from mechasandbox.runner.spec import ProcessOutcome, SpawnSpec

GOLDEN = Path(__file__).parent / "golden"
HOME = "/Users/dev"
HOST = HostContext(
    env=(
        ("HOME", HOME),
        ("LANG", "en_US.UTF-8"),
        ("OPENAI_API_KEY", "sk-secret"),
        ("PATH", "/opt/homebrew/bin:/usr/bin:/bin"),
    ),
    home=HOME,
    uid=501,
    gid=20,
    platform="darwin",
)


def fake_realpath(path: str) -> str:
    return "/private" + path if path == "/tmp" or path.startswith("/tmp/") else path


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MECHASANDBOX_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"missing golden file {path}; set MECHASANDBOX_UPDATE_GOLDEN=1"
    assert actual == path.read_text(), f"{name} differs from the golden file"


def compile_for(
    policy: Policy, workspace: str = f"{HOME}/proj", argv: tuple[str, ...] = ("make", "test")
) -> Result[ContainerInvocation, object]:
    result: Result[ContainerInvocation, object] = compile_args(
        RunRequest(argv=argv, workspace=workspace),
        policy,
        HOST,
        cli="/usr/local/bin/container",
        image="docker.io/library/python:3.12-slim",
        name="mechasandbox-0123456789abcdef",
        env_file="/private/var/folders/zz/T/mechasandbox-x/env",
        cpus=2 if policy.network.mode is NetworkMode.FULL else None,
        realpath=fake_realpath,
    )
    return result


def render(invocation: ContainerInvocation) -> str:
    return (
        "# argv, one per line\n"
        + "\n".join(invocation.argv)
        + "\n# env-file\n"
        + invocation.env_file
        + "# warnings\n"
        + "".join(f"{w}\n" for w in invocation.warnings)
    )


WIDE = Policy(
    filesystem=FilesystemPolicy(
        readable=("~/.cargo/registry", "/tmp/cache"),
        writable=("~/.cache/pip",),
        deny_read=("~/proj/.env",),
    ),
    network=NetworkPolicy(mode=NetworkMode.FULL),
    limits=Limits(memory_bytes=3 * GIB + 1),
    environment=EnvironmentPolicy(pass_through=("OPENAI_API_KEY",), set=(("CI", "1"),)),
    enforcement=Enforcement.BEST_EFFORT,
)

CASES = {
    "default": (Policy(), f"{HOME}/proj"),
    "wide": (WIDE, f"{HOME}/proj"),
    "tmp_workspace": (Policy(limits=Limits(memory_bytes=None)), "/tmp/ws"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_args_match_golden(case: str) -> None:
    policy, workspace = CASES[case]
    result = compile_for(policy, workspace)
    assert isinstance(result, Success), result
    check_golden(f"apple_container_{case}.txt", render(result.unwrap()))


def test_default_args_confine() -> None:
    invocation = compile_for(Policy()).unwrap()
    argv = invocation.argv
    assert argv[:3] == ("/usr/local/bin/container", "run", "--rm")
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[argv.index("--memory") + 1] == "4096M"
    assert argv[argv.index("--entrypoint") + 1 :] == (
        "make",
        "docker.io/library/python:3.12-slim",
        "test",
    )
    assert "OPENAI_API_KEY" not in invocation.env_file
    assert "sk-secret" not in " ".join(argv)
    assert f"PATH={LINUX_PATH}\n" in invocation.env_file


@pytest.mark.parametrize(
    "workspace",
    [
        "/Users/dev/a:b",  # -v syntax separator
        "/Users/dev/a,target=/etc",  # --mount option injection
        "/Users/dev/a=b",
    ],
)
def test_hostile_paths_are_refused(workspace: str) -> None:
    result = compile_for(Policy(), workspace)
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, ConfigInvalid)
    assert error.field == "workspace"


def test_relative_extra_path_is_refused() -> None:
    result = compile_for(Policy(filesystem=FilesystemPolicy(readable=("rel/dir",))))
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), ConfigInvalid)


def test_allowlist_is_unsupported() -> None:
    result = compile_for(Policy(network=NetworkPolicy(mode=NetworkMode.ALLOWLIST)))
    assert result == Failure(
        PolicyUnsupported(backend="apple-container", missing=(Protection.NETWORK_ALLOWLIST,))
    )


def test_secret_inside_a_mount_is_refused_when_strict() -> None:
    policy = Policy(filesystem=FilesystemPolicy(deny_read=(".env",)))
    result = compile_for(policy)
    assert result == Failure(
        PolicyUnsupported(backend="apple-container", missing=(Protection.FILESYSTEM_READ,))
    )
    relaxed = compile_for(
        Policy(filesystem=policy.filesystem, enforcement=Enforcement.BEST_EFFORT)
    ).unwrap()
    assert relaxed.warnings == (
        "not enforced by apple-container: deny_read '.env' is inside a mount",
    )


def test_newline_in_environment_is_refused() -> None:
    policy = Policy(environment=EnvironmentPolicy(set=(("X", "a\nEVIL=1"),)))
    result = compile_for(policy)
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), ConfigInvalid)


# --- the backend --------------------------------------------------------------------------


class RecordingRunner:
    """A ProcessRunner that records specs and answers with a canned outcome."""

    def __init__(self, outcome: ProcessOutcome) -> None:
        self.outcome = outcome
        self.specs: list[SpawnSpec] = []
        self.env_files: list[str] = []

    async def run(self, spec: SpawnSpec) -> Result[ProcessOutcome, SpawnFailed]:
        self.specs.append(spec)
        if "--env-file" in spec.argv:
            with open(spec.argv[spec.argv.index("--env-file") + 1]) as handle:
                self.env_files.append(handle.read())
        return Success(self.outcome)

    def close(self) -> None:
        pass


def outcome(*, exit_code: int | None = 0, timed_out: bool = False) -> ProcessOutcome:
    return ProcessOutcome(
        exit_code=exit_code,
        signal=None if exit_code is not None else 9,
        stdout=b"out",
        stderr=b"",
        stdout_truncated=False,
        stderr_truncated=False,
        duration_s=0.1,
        usage=Usage(),
        timed_out=timed_out,
    )


def make_backend(
    runner: RecordingRunner,
    *,
    host: HostContext = HOST,
    version: tuple[int, ...] = (26, 0),
    which: Callable[[str], str | None] = lambda _name: "/usr/local/bin/container",
    status: str | None = None,
    image: str | None = "docker.io/library/debian:stable-slim",
) -> AppleContainerBackend:
    return AppleContainerBackend(
        runner=runner,
        host=host,
        image=image,
        which=which,
        macos_version=lambda: version,
        system_status=lambda _cli: status,
    )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        (
            {"host": HostContext(env=(), home="/h", uid=1, gid=1, platform="linux")},
            "needs macOS 26+ (this host is linux)",
        ),
        ({"version": (15, 5)}, "needs macOS 26+ (this is macOS 15.5)"),
        ({"which": lambda _name: None}, "the `container` CLI is not installed"),
        ({"status": "container services are not running"}, "services are not running"),
        ({"image": None}, "no image configured"),
    ],
)
def test_probe_says_why_unavailable(kwargs: dict[str, object], reason: str) -> None:
    backend = make_backend(RecordingRunner(outcome()), **kwargs)  # type: ignore[arg-type]
    probed = backend.probe()
    assert isinstance(probed, Failure)
    assert reason in probed.failure().reason


def test_capabilities_are_honest() -> None:
    capabilities = make_backend(RecordingRunner(outcome())).probe().unwrap()
    assert Protection.PID_ISOLATION in capabilities.enforced
    assert Protection.NETWORK_NONE in capabilities.enforced
    for missing in (
        Protection.PROTECTED_PATHS,
        Protection.NETWORK_ALLOWLIST,
        Protection.CPU,
        Protection.PROCESSES,
    ):
        assert missing not in capabilities.enforced
        assert capabilities.detail(missing)


def test_run_writes_a_private_env_file_and_leaves_no_container(tmp_path: Path) -> None:
    runner = RecordingRunner(outcome())
    backend = make_backend(runner)
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    result = anyio.run(backend.run, RunRequest(argv=["true"], workspace=str(tmp_path)), policy)
    assert isinstance(result, Success), result
    assert len(runner.specs) == 1  # --rm removed it; no cleanup call
    spec = runner.specs[0]
    assert "OPENAI_API_KEY" not in dict(spec.env)
    assert runner.env_files == [f"LANG=en_US.UTF-8\nPATH={LINUX_PATH}\n"]
    assert any("protected-paths" in w for w in result.unwrap().warnings)


def test_timeout_kills_and_deletes_the_container(tmp_path: Path) -> None:
    runner = RecordingRunner(outcome(exit_code=None, timed_out=True))
    backend = make_backend(runner)
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    result = anyio.run(
        backend.run, RunRequest(argv=["sleep", "9"], workspace=str(tmp_path)), policy
    )
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), Timeout)
    name = runner.specs[0].argv[runner.specs[0].argv.index("--name") + 1]
    assert [spec.argv[1:] for spec in runner.specs[1:]] == [
        ("kill", name),
        ("delete", "--force", name),
    ]


def test_plan_shows_the_arguments(tmp_path: Path) -> None:
    backend = make_backend(RecordingRunner(outcome()))
    plan = backend.plan(RunRequest(argv=["ls"], workspace=str(tmp_path)), Policy(), HOST).unwrap()
    sections = dict(plan.sections)
    assert sections["argv"].startswith("/usr/local/bin/container run --rm")
    assert sections["environment"] == "LANG PATH"


def test_plan_without_an_image_still_shows_what_would_run(tmp_path: Path) -> None:
    backend = make_backend(RecordingRunner(outcome()), image=None)
    request = RunRequest(argv=["echo", "hi"], workspace=str(tmp_path))
    plan = backend.plan(request, Policy(), HOST).unwrap()
    sections = dict(plan.sections)
    assert "<no image configured> hi" in sections["argv"]
    assert any("no image configured" in w for w in plan.warnings)
