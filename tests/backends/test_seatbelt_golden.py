"""Golden tests of the SBPL compiler and unit tests of the seatbelt backend (any platform).

Regenerate the golden files with `MECHASANDBOX_UPDATE_GOLDEN=1 pytest tests/backends`.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

import anyio
import pytest
from returns.result import Failure, Success

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.macos.sbpl import SbplProfile, compile_profile
from mechasandbox.backends.macos.seatbelt import (
    ENV,
    PLAN_TAG,
    SANDBOX_EXEC,
    SeatbeltBackend,
    SeatbeltSetting,
    seatbelt_rlimits,
)
from mechasandbox.backends.template import Job
from mechasandbox.domain import (
    BackendUnavailable,
    ConfigInvalid,
    Enforcement,
    EnvironmentPolicy,
    FilesystemPolicy,
    Limits,
    NetworkMode,
    NetworkPolicy,
    Policy,
    PolicyUnsupported,
    Protection,
    RunRequest,
    SpawnFailed,
)
from mechasandbox.network.session import EgressProxy
from mechasandbox.runner.runner import HelperProcessRunner

GOLDEN = Path(__file__).parent / "golden"
HOME = "/Users/dev"
HOST = HostContext(
    env=(("HOME", HOME), ("OPENAI_API_KEY", "sk-secret"), ("PATH", "/usr/bin:/bin")),
    home=HOME,
    uid=501,
    gid=20,
    platform="darwin",
)
TMPDIR = "/private/var/folders/zz/abc/T/mechasandbox-run1"
# Where runner images keep Xcode (`/Applications/Xcode.app` a link to it).
XCODE = "/Applications/Xcode_16.2.app"
HOSTILE = '/tmp/ws") (allow default) ; \\"x\n(allow network*)'
# What macOS resolves: /tmp and /var live under /private; ~/link is a symlink to ~/elsewhere.
SYMLINKS = {"/tmp": "/private/tmp", "/var": "/private/var", f"{HOME}/link": f"{HOME}/elsewhere"}


def fake_realpath(path: str) -> str:
    for link, target in SYMLINKS.items():
        if path == link or path.startswith(link + "/"):
            return target + path[len(link) :]
    return path


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MECHASANDBOX_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"missing golden file {path}; set MECHASANDBOX_UPDATE_GOLDEN=1"
    assert actual == path.read_text(), f"{name} differs from the golden file"


def compile_ok(
    policy: Policy, workspace: str = f"{HOME}/proj", proxy_port: int | None = None
) -> SbplProfile:
    result = compile_profile(
        RunRequest(argv=["true"], workspace=workspace),
        policy,
        HOST,
        tmpdir=TMPDIR,
        realpath=fake_realpath,
        proxy_port=proxy_port,
        developer=(XCODE,),
    )
    assert isinstance(result, Success), result
    profile: SbplProfile = result.unwrap()
    return profile


RESTRICTIVE = Policy(
    filesystem=FilesystemPolicy(
        readable=("~/.cargo", "/tmp/shared-cache"),
        writable=("~/.cache/pip",),
        deny_read=("~/.ssh", "~/link/token", "/Users/dev/proj/secrets/.env.prod"),
        deny_write=("/Users/dev/proj/vendor",),
        protected=(".git/hooks", ".git/config", ".vscode/tasks.json", "~/.zshrc"),
    ),
    network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("pypi.org",)),
    enforcement=Enforcement.BEST_EFFORT,
)

# Named host unix sockets: the user's agent (its directory a link), one in the workspace
# (never followed: the repository could make it a link to docker.sock), one behind ~/link.
NAMED_SOCKETS = (
    "/tmp/launchd-501/Listeners",
    "/tmp/ws/dev.sock",
    "~/link/agent.sock",
)

CASES = {
    "default": (Policy(), f"{HOME}/proj", None),
    "named_sockets_full_network": (
        Policy(network=NetworkPolicy(mode=NetworkMode.FULL, allow_unix_sockets=NAMED_SOCKETS)),
        "/tmp/ws",
        None,
    ),
    "named_sockets_no_network": (
        Policy(network=NetworkPolicy(allow_unix_sockets=NAMED_SOCKETS[:1])),
        "/tmp/ws",
        None,
    ),
    "restrictive": (RESTRICTIVE, f"{HOME}/proj", 8877),
    "full_network": (Policy(network=NetworkPolicy(mode=NetworkMode.FULL)), "/tmp/ws", None),
    "hostile_path": (Policy(), HOSTILE, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_profile_matches_golden(case: str) -> None:
    policy, workspace, port = CASES[case]
    check_golden(f"seatbelt_{case}.sbpl", compile_ok(policy, workspace, port).render())


def _strip_comments(text: str) -> str:
    return "\n".join(line.split(";", 1)[0] for line in text.splitlines())


@pytest.mark.parametrize("case", sorted(CASES))
def test_profile_is_well_formed_and_denies_come_last(case: str) -> None:
    policy, workspace, port = CASES[case]
    text = _strip_comments(compile_ok(policy, workspace, port).text)
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    assert text.index("(deny default)") < text.index("(allow")
    # Last match wins in SBPL: every path deny must follow every allow to override it.
    allows = [m.start() for m in re.finditer(r"\(allow ", text)]
    denies = [m.start() for m in re.finditer(r"\(deny file-", text)]
    assert denies
    assert max(allows) < min(denies)


def test_hostile_workspace_stays_data() -> None:
    profile = compile_ok(Policy(), HOSTILE)
    assert "allow default" not in profile.text
    assert "ws" not in profile.text
    # the text does not depend on what the path says, only on how many params there are
    assert profile.text == compile_ok(Policy(), "/tmp/plain").text
    params = dict(profile.params)
    assert params["WORKSPACE"] == "/private" + HOSTILE
    args = profile.sandbox_exec_args()
    assert args[:2] == ("-p", profile.text)
    assert f"-DWORKSPACE=/private{HOSTILE}" in args


def test_paths_are_compiled_against_their_real_path() -> None:
    params = dict(compile_ok(Policy(), "/tmp/ws").params)
    assert params["WORKSPACE"] == "/private/tmp/ws"
    restrictive = compile_ok(RESTRICTIVE, proxy_port=8877).params
    values = [value for _, value in restrictive]
    # a deny is written for the real path and for the path as the policy spelled it
    assert f"{HOME}/elsewhere/token" in values
    assert f"{HOME}/link/token" in values
    assert "/private/tmp/shared-cache" in values


def test_parents_of_protected_paths_cannot_be_renamed() -> None:
    params = compile_ok(RESTRICTIVE, proxy_port=8877).params
    keep = {value for name, value in params if name.startswith("KEEP_")}
    assert keep == {
        f"{HOME}/proj/.git",
        f"{HOME}/proj/.vscode",
        f"{HOME}/proj/secrets",
        f"{HOME}/proj/secrets/.env.prod",
    }


def test_network_rules_per_mode() -> None:
    none = compile_ok(Policy()).text
    assert "network" not in _strip_comments(none)
    allowlist = compile_ok(RESTRICTIVE, proxy_port=8877).text
    assert '(allow network-outbound (remote ip "localhost:8877"))' in allowlist
    assert "(allow network*)" not in allowlist
    full = compile_ok(Policy(network=NetworkPolicy(mode=NetworkMode.FULL))).text
    assert '(allow network-outbound (remote ip "*:*"))' in full


def test_full_network_opens_no_host_unix_socket() -> None:
    """Full network is the internet: `(allow network*)` would also open docker.sock, the ssh
    agent and every other unix socket of the host; only the resolver's is allowed."""
    full = _strip_comments(compile_ok(Policy(network=NetworkPolicy(mode=NetworkMode.FULL))).text)
    assert "network*" not in full
    assert re.findall(r"unix-socket[^\n]*", full) == [
        'unix-socket (path-literal "/private/var/run/mDNSResponder")))'
    ]


def test_named_unix_sockets_are_the_only_ones_reachable() -> None:
    policy, workspace, port = CASES["named_sockets_full_network"]
    profile = compile_ok(policy, workspace, port)
    sockets = [value for name, value in profile.params if name.startswith("UNIX_SOCKET_")]
    assert sockets == [
        "/private/tmp/launchd-501/Listeners",
        "/private/tmp/ws/dev.sock",  # in the workspace: the name itself, never a link's target
        f"{HOME}/elsewhere/agent.sock",
    ]
    assert profile.text.count("(remote unix-socket (path-literal (param ") == 3


def test_allowlist_without_proxy_is_refused() -> None:
    result = compile_profile(
        RunRequest(argv=["true"], workspace="/w"),
        RESTRICTIVE,
        HOST,
        tmpdir=TMPDIR,
        realpath=fake_realpath,
    )
    assert result == Failure(
        PolicyUnsupported(backend="seatbelt", missing=(Protection.NETWORK_ALLOWLIST,))
    )


@pytest.mark.parametrize(
    ("filesystem", "field"),
    [
        (FilesystemPolicy(readable=("relative/dir",)), "filesystem.readable"),
        (FilesystemPolicy(deny_read=("nul\x00byte",)), "filesystem.deny_read"),
        (FilesystemPolicy(protected=("bad\x00",)), "filesystem.protected"),
    ],
)
def test_bad_paths_are_config_errors(filesystem: FilesystemPolicy, field: str) -> None:
    result = compile_profile(
        RunRequest(argv=["true"], workspace="/w"),
        Policy(filesystem=filesystem),
        HOST,
        tmpdir=TMPDIR,
        realpath=fake_realpath,
    )
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, ConfigInvalid)
    assert error.field == field


def test_bad_proxy_port_is_a_config_error() -> None:
    result = compile_profile(
        RunRequest(argv=["true"], workspace="/w"),
        Policy(),
        HOST,
        tmpdir=TMPDIR,
        realpath=fake_realpath,
        proxy_port=70000,
    )
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), ConfigInvalid)


# --- the backend --------------------------------------------------------------------------


def backend(
    runner: HelperProcessRunner,
    *,
    host: HostContext = HOST,
    present: bool = True,
    proxy_port: int | None = None,
    egress: EgressProxy | None = None,
) -> SeatbeltBackend:
    return SeatbeltBackend(
        runner=runner,
        host=host,
        proxy_port=proxy_port,
        egress=egress,
        realpath=fake_realpath,
        tmp_root="/private/var/folders/zz/abc/T",
        sandbox_exec_present=lambda: present,
        process_count=lambda _uid: 400,
    )


def test_probe_off_macos_says_why(runner: HelperProcessRunner) -> None:
    linux = HostContext(env=(), home="/home/u", uid=1000, gid=1000, platform="linux")
    probed = backend(runner, host=linux).probe()
    assert isinstance(probed, Failure)
    assert "needs macOS" in probed.failure().reason


def test_probe_without_sandbox_exec(runner: HelperProcessRunner) -> None:
    probed = backend(runner, present=False).probe()
    assert probed == Failure(
        BackendUnavailable(backend="seatbelt", reason=f"{SANDBOX_EXEC} is missing")
    )


def test_capabilities_are_honest(runner: HelperProcessRunner) -> None:
    capabilities = backend(runner).probe().unwrap()
    assert Protection.PID_ISOLATION not in capabilities.enforced
    assert Protection.TREE_TEARDOWN not in capabilities.enforced
    assert Protection.NETWORK_ALLOWLIST not in capabilities.enforced
    assert {Protection.FILESYSTEM_READ, Protection.PROTECTED_PATHS, Protection.NETWORK_NONE} <= (
        capabilities.enforced
    )
    # memory: no RLIMIT_AS on macOS, so not enforced, and said so
    assert Protection.MEMORY not in capabilities.enforced
    assert "not limited" in (capabilities.detail(Protection.MEMORY) or "")
    assert Protection.MEMORY in capabilities.missing(Policy())
    # a strict policy is refused: processes of the host stay visible
    assert Protection.PID_ISOLATION in capabilities.missing(Policy())
    with_proxy = backend(runner, proxy_port=8877).probe().unwrap()
    assert Protection.NETWORK_ALLOWLIST in with_proxy.enforced
    with_egress = backend(runner, egress=EgressProxy()).probe().unwrap()
    assert Protection.NETWORK_ALLOWLIST in with_egress.enforced
    root = HostContext(env=(), home="/var/root", uid=0, gid=0, platform="darwin")
    assert Protection.PROCESSES not in backend(runner, host=root).probe().unwrap().enforced


def test_nproc_is_shifted_by_the_users_processes() -> None:
    policy = Policy(limits=Limits(max_processes=100))

    def nproc(uid: int, count: int | None, hard: int | None) -> tuple[int, int] | None:
        settings = seatbelt_rlimits(policy, uid=uid, user_processes=count, nproc_hard=hard)
        found = [(s.soft, s.hard) for s in settings if s.resource == "RLIMIT_NPROC"]
        return found[0] if found else None

    assert nproc(501, 450, None) == (550, 550)
    assert nproc(501, 450, 500) == (500, 500)
    assert nproc(501, None, None) == (100, 100)
    assert nproc(0, 450, None) is None


def test_plan_renders_the_profile_and_scrubs_the_environment(
    runner: HelperProcessRunner, tmp_path: Path
) -> None:
    request = RunRequest(argv=["ls", "-la"], workspace=str(tmp_path))
    seatbelt = backend(runner)
    plan = seatbelt.plan(request, Policy(), HOST).unwrap()
    sections = dict(plan.sections)
    names = ["CLANG_MODULE_CACHE_PATH", "GOCACHE", "HOME", "PATH", "PIP_CACHE_DIR", "TMPDIR"]
    names.append("npm_config_cache")
    assert sections["argv"] == (
        f"{SANDBOX_EXEC} -p PROFILE -D... -- /usr/bin/env -i -- "
        + " ".join(f"{name}=\u2026" for name in names)
        + " ls -la"
    )
    assert f'(deny default (with message "{PLAN_TAG}"))' in sections["sbpl"]
    # HOME and the tools' caches: the run's private ones, in its TMPDIR
    assert sections["environment"].split() == names
    assert sections["sandbox-exec's own environment"] == "none"
    assert "RLIMIT_NPROC soft=912" in sections["rlimits"]  # 400 running + 512 allowed
    assert "RLIMIT_AS" not in sections["rlimits"]  # macOS: refused or breaks V8, the JVM


def job(request: RunRequest, policy: Policy) -> Job:
    """`request` to compile as a run would, in its own workspace."""
    return Job(request=request, policy=policy, host=HOST, workspace=request.workspace)


def test_spawn_spec_runs_sandbox_exec(runner: HelperProcessRunner, tmp_path: Path) -> None:
    seatbelt = backend(runner)
    request = RunRequest(argv=["ls", "-la"], workspace=str(tmp_path))
    launch = seatbelt.compile(job(request, Policy()), SeatbeltSetting(tmpdir=TMPDIR)).unwrap()
    spec, (profile, environment) = launch.spec, launch.compiled
    assert spec.executable == SANDBOX_EXEC
    assigned = tuple(f"{name}={value}" for name, value in environment)
    assert spec.argv == (
        SANDBOX_EXEC,
        *profile.sandbox_exec_args(),
        "--",
        ENV,
        "-i",
        "--",
        *assigned,
        "ls",
        "-la",
    )
    env = dict(environment)
    assert env["TMPDIR"] == TMPDIR
    assert env["HOME"] == f"{TMPDIR}/home"  # the run's private home, inside its TMPDIR
    assert spec.umask == 0o022
    assert "OPENAI_API_KEY" not in env
    assert posixpath.isabs(spec.cwd)


def test_sandbox_exec_starts_with_no_variable_of_the_command(
    runner: HelperProcessRunner, tmp_path: Path
) -> None:
    """`sandbox-exec` runs on the host, outside the profile: a policy's loader variables (a
    project layer writes those) must reach only the command, through `env -i` inside."""
    loader = (("DYLD_INSERT_LIBRARIES", "/tmp/evil.dylib"), ("LD_PRELOAD", "/tmp/evil.so"))
    policy = Policy(environment=EnvironmentPolicy(set=loader))
    request = RunRequest(argv=["env"], workspace=str(tmp_path))
    launch = backend(runner).compile(job(request, policy), SeatbeltSetting(tmpdir=TMPDIR)).unwrap()
    spec, (_, environment) = launch.spec, launch.compiled
    assert spec.env == ()
    assert set(loader) <= set(environment)
    launched = spec.argv[spec.argv.index("--") + 1 :]
    assert launched[:3] == (ENV, "-i", "--")
    assert "DYLD_INSERT_LIBRARIES=/tmp/evil.dylib" in launched
    assert launched[-1] == "env"


@pytest.mark.parametrize(
    ("variables", "argv", "kind"),
    [
        ((("INNOCENT", "x\0-P\0/tmp"),), ("true",), ConfigInvalid),
        ((("A=B", "x"),), ("true",), ConfigInvalid),
        ((), ("A=B",), SpawnFailed),
    ],
    ids=["a NUL in a value", "= in a name", "= in the command name"],
)
def test_what_env_would_misread_is_refused(
    runner: HelperProcessRunner,
    tmp_path: Path,
    variables: tuple[tuple[str, str], ...],
    argv: tuple[str, ...],
    kind: type,
) -> None:
    policy = Policy(environment=EnvironmentPolicy(set=variables))
    request = RunRequest(argv=argv, workspace=str(tmp_path))
    built = backend(runner).compile(job(request, policy), SeatbeltSetting(tmpdir=TMPDIR))
    assert isinstance(built, Failure), built
    assert isinstance(built.failure(), kind)


def test_run_off_macos_is_unavailable(runner: HelperProcessRunner, tmp_path: Path) -> None:
    linux = HostContext(env=(), home="/home/u", uid=1000, gid=1000, platform="linux")
    request = RunRequest(argv=["true"], workspace=str(tmp_path))
    result = anyio.run(backend(runner, host=linux).run, request, Policy())
    assert isinstance(result, Failure)
    assert isinstance(result.failure(), BackendUnavailable)


def test_the_runs_proxy_port_and_token_reach_profile_and_environment(
    runner: HelperProcessRunner,
) -> None:
    """The per-run proxy (port and token) is wired into the SBPL rule and the variables."""
    seatbelt = backend(runner, egress=EgressProxy())
    url = "http://sandbox:TOKEN@127.0.0.1:41234"
    built = seatbelt.compile(
        job(RunRequest(argv=["true"], workspace="/w"), RESTRICTIVE),
        SeatbeltSetting(tmpdir=TMPDIR, proxy=(41234, url)),
    )
    assert isinstance(built, Success), built
    profile, environment = built.unwrap().compiled
    assert '(allow network-outbound (remote ip "localhost:41234"))' in profile.text
    assert "(allow network*)" not in profile.text
    env = dict(environment)
    assert env["http_proxy"] == env["HTTPS_PROXY"] == url
    assert env["NO_PROXY"] == ""
