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
    CLI_FLAG_VERSIONS,
    LINUX_PATH,
    MIN_CLI_VERSION,
    AppleContainerBackend,
    CliVersion,
    ContainerInvocation,
    cli_version_problem,
    compile_args,
    parse_cli_version,
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
ROOT_HOST = HostContext(env=HOST.env, home="/var/root", uid=0, gid=0, platform="darwin")
# What `container --version` prints (ReleaseVersion.singleLine in apple/container).
VERSION_OUTPUT = "container CLI version 0.12.3 (build: release, commit: 1a2b3c4)"
RECENT_CLI: Result[str, str] = Success(VERSION_OUTPUT)


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
    policy: Policy,
    workspace: str = f"{HOME}/proj",
    argv: tuple[str, ...] = ("make", "test"),
    *,
    stdin: bytes | None = None,
    host: HostContext = HOST,
) -> Result[ContainerInvocation, object]:
    result: Result[ContainerInvocation, object] = compile_args(
        RunRequest(argv=argv, workspace=workspace, stdin=stdin),
        policy,
        host,
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

LIMITS = Limits(
    cpu_time_s=30, max_processes=64, max_open_files=256, max_file_size_bytes=1024 * 1024
)
# (policy, workspace, stdin, host)
CASES: dict[str, tuple[Policy, str, bytes | None, HostContext]] = {
    "default": (Policy(), f"{HOME}/proj", None, HOST),
    "wide": (WIDE, f"{HOME}/proj", None, HOST),
    "tmp_workspace": (Policy(limits=Limits(memory_bytes=None)), "/tmp/ws", None, HOST),
    "stdin": (Policy(), f"{HOME}/proj", b"input\n", HOST),
    "limits": (Policy(limits=LIMITS), f"{HOME}/proj", None, HOST),
    "root_caller": (Policy(limits=LIMITS), "/var/root/proj", None, ROOT_HOST),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_args_match_golden(case: str) -> None:
    policy, workspace, stdin, host = CASES[case]
    result = compile_for(policy, workspace, stdin=stdin, host=host)
    assert isinstance(result, Success), result
    check_golden(f"apple_container_{case}.txt", render(result.unwrap()))


def value_of(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def values_of(argv: tuple[str, ...], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def test_default_args_confine() -> None:
    invocation = compile_for(Policy()).unwrap()
    argv = invocation.argv
    assert argv[:3] == ("/usr/local/bin/container", "run", "--rm")
    assert value_of(argv, "--network") == "none"
    assert value_of(argv, "--memory") == "4096M"
    assert argv[argv.index("--entrypoint") + 1 :] == (
        "make",
        "docker.io/library/python:3.12-slim",
        "test",
    )
    assert "OPENAI_API_KEY" not in invocation.env_file
    assert "sk-secret" not in " ".join(argv)
    assert f"PATH={LINUX_PATH}\n" in invocation.env_file


def test_the_command_runs_as_the_caller_without_capabilities_on_a_read_only_root() -> None:
    argv = compile_for(Policy()).unwrap().argv
    image = argv.index("docker.io/library/python:3.12-slim")
    options = argv[:image]  # the command's own words come after the image
    assert "--read-only" in options
    assert values_of(options, "--tmpfs") == ["/tmp"]
    assert values_of(options, "--cap-drop") == ["ALL"]
    assert (value_of(options, "--uid"), value_of(options, "--gid")) == ("501", "20")


def test_home_is_the_private_tmp_unless_the_policy_sets_it() -> None:
    assert "HOME=/tmp\n" in compile_for(Policy()).unwrap().env_file
    own = Policy(environment=EnvironmentPolicy(set=(("HOME", "/Users/dev/proj"),)))
    assert "HOME=/Users/dev/proj\n" in compile_for(own).unwrap().env_file


def test_the_policy_limits_become_ulimits() -> None:
    argv = compile_for(Policy(limits=LIMITS)).unwrap().argv
    assert sorted(values_of(argv, "--ulimit")) == [
        "core=0:0",
        "cpu=30:31",
        "fsize=1048576:1048576",
        "nofile=256:256",
        "nproc=64:64",
    ]
    # memory is the VM's, never RLIMIT_AS (the CLI has no `as` type)
    assert not any(v.startswith("as=") for v in values_of(argv, "--ulimit"))


def test_a_root_caller_gets_no_nproc_which_would_not_bind() -> None:
    argv = compile_for(Policy(limits=LIMITS), host=ROOT_HOST).unwrap().argv
    assert (value_of(argv, "--uid"), value_of(argv, "--gid")) == ("0", "0")
    assert not any(v.startswith("nproc=") for v in values_of(argv, "--ulimit"))
    assert values_of(argv, "--cap-drop") == ["ALL"]


@pytest.mark.parametrize(("stdin", "interactive"), [(None, False), (b"", True), (b"x", True)])
def test_stdin_is_passed_only_when_given(stdin: bytes | None, interactive: bool) -> None:
    argv = compile_for(Policy(), stdin=stdin).unwrap().argv
    assert ("--interactive" in argv) is interactive


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
    cli_version: Result[str, str] = RECENT_CLI,
) -> AppleContainerBackend:
    return AppleContainerBackend(
        runner=runner,
        host=host,
        image=image,
        which=which,
        macos_version=lambda: version,
        system_status=lambda _cli: status,
        cli_version=lambda _cli: cli_version,
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
        (
            {"cli_version": Success("container CLI version 0.11.0 (build: release)")},
            "the `container` CLI is 0.11.0; 0.12.0 or newer is needed (it lacks --cap-drop)",
        ),
        (
            {"cli_version": Failure("`container --version` exited 1: boom")},
            "`container --version` exited 1: boom",
        ),
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
    for enforced in (
        Protection.PID_ISOLATION,
        Protection.NETWORK_NONE,
        Protection.MEMORY,
        Protection.CPU,
        Protection.OPEN_FILES,
        Protection.FILE_SIZE,
        Protection.PROCESSES,
    ):
        assert enforced in capabilities.enforced, enforced
    assert "--ulimit nproc" in (capabilities.detail(Protection.PROCESSES) or "")
    for missing in (
        Protection.PROTECTED_PATHS,
        Protection.NETWORK_ALLOWLIST,
        Protection.NAMED_UNIX_SOCKETS,
    ):
        assert missing not in capabilities.enforced
        assert capabilities.detail(missing)


def test_capabilities_for_a_root_caller_leave_out_the_process_count() -> None:
    capabilities = make_backend(RecordingRunner(outcome()), host=ROOT_HOST).probe().unwrap()
    assert Protection.PROCESSES not in capabilities.enforced
    assert "does not apply to root" in (capabilities.detail(Protection.PROCESSES) or "")
    assert Protection.CPU in capabilities.enforced


# --- the CLI's release --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "version"),
    [
        (VERSION_OUTPUT, (0, 12, 3)),
        ("container CLI version 1.2.2 (build: release, commit: 0a0a0a0)", (1, 2, 2)),
        ("container CLI version 0.6.0 (build: debug, commit: unspecified)\n", (0, 6, 0)),
        ("container CLI version 0.0.0 (build: release, commit: unspecified)", (0, 0, 0)),
        ("container CLI version unknown", None),
        ("", None),
    ],
)
def test_cli_version_is_read_from_its_output(output: str, version: object) -> None:
    assert parse_cli_version(output) == version


def test_the_minimum_is_the_newest_flag() -> None:
    assert MIN_CLI_VERSION == (0, 12, 0)
    assert dict(CLI_FLAG_VERSIONS) == {
        "--network none": (0, 6, 0),
        "--read-only": (0, 8, 0),
        "--ulimit": (0, 9, 0),
        "--cap-drop": (0, 12, 0),
    }


@pytest.mark.parametrize(
    ("release", "lacking"),
    [
        ("0.5.0", "--network none, --read-only, --ulimit, --cap-drop"),
        ("0.6.0", "--read-only, --ulimit, --cap-drop"),
        ("0.8.1", "--ulimit, --cap-drop"),
        ("0.11.0", "--cap-drop"),
        ("0.0.0", "--network none, --read-only, --ulimit, --cap-drop"),
    ],
)
def test_an_old_cli_is_refused_naming_its_release(release: str, lacking: str) -> None:
    problem = cli_version_problem(f"container CLI version {release} (build: release)")
    assert problem == (
        f"the `container` CLI is {release}; 0.12.0 or newer is needed (it lacks {lacking})"
    )


@pytest.mark.parametrize("release", ["0.12.0", "0.12.3", "1.0.0", "1.2.2"])
def test_a_recent_cli_is_accepted(release: str) -> None:
    assert cli_version_problem(f"container CLI version {release} (build: release)") is None


def test_an_unreadable_version_is_refused() -> None:
    problem = cli_version_problem("something else")
    assert problem is not None
    assert "cannot tell the `container` CLI's release" in problem
    assert "something else" in problem


def test_cli_version_runs_the_cli_once_per_binary(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    cli = tmp_path / "container"
    cli.write_text(f'#!/bin/sh\necho x >> {calls}\necho "{VERSION_OUTPUT}"\n')
    cli.chmod(0o755)
    query = CliVersion()
    assert query(str(cli)) == Success(VERSION_OUTPUT)
    assert query(str(cli)) == Success(VERSION_OUTPUT)
    assert calls.read_text().count("x") == 1
    # an upgrade (a new file at the same path) is read again
    upgraded = tmp_path / "container.new"
    upgraded.write_text('#!/bin/sh\necho "container CLI version 1.0.0 (build: release)"\n')
    upgraded.chmod(0o755)
    upgraded.replace(cli)
    assert query(str(cli)) == Success("container CLI version 1.0.0 (build: release)")


def test_cli_version_says_why_it_has_none(tmp_path: Path) -> None:
    cli = tmp_path / "container"
    cli.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    cli.chmod(0o755)
    assert CliVersion()(str(cli)) == Failure("`container --version` exited 3: boom")
    missing = CliVersion()(str(tmp_path / "absent"))
    assert isinstance(missing, Failure)


def test_run_writes_a_private_env_file_and_leaves_no_container(tmp_path: Path) -> None:
    runner = RecordingRunner(outcome())
    backend = make_backend(runner)
    policy = Policy(enforcement=Enforcement.BEST_EFFORT)
    result = anyio.run(backend.run, RunRequest(argv=["true"], workspace=str(tmp_path)), policy)
    assert isinstance(result, Success), result
    assert len(runner.specs) == 1  # --rm removed it; no cleanup call
    spec = runner.specs[0]
    assert "OPENAI_API_KEY" not in dict(spec.env)
    assert runner.env_files == [f"HOME=/tmp\nLANG=en_US.UTF-8\nPATH={LINUX_PATH}\n"]
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
    assert sections["environment"] == "HOME LANG PATH"


def test_plan_without_an_image_still_shows_what_would_run(tmp_path: Path) -> None:
    backend = make_backend(RecordingRunner(outcome()), image=None)
    request = RunRequest(argv=["echo", "hi"], workspace=str(tmp_path))
    plan = backend.plan(request, Policy(), HOST).unwrap()
    sections = dict(plan.sections)
    assert "<no image configured> hi" in sections["argv"]
    assert any("no image configured" in w for w in plan.warnings)
