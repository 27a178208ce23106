"""The project rule: every way to narrow is accepted, every way to widen is refused."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from returns.pipeline import is_successful
from returns.result import Result

from mechasandbox.config import (
    BackendChoice,
    BackendSettings,
    LimitsSettings,
    Settings,
    narrow,
    narrow_backend,
    pattern_covers,
    structure_settings,
)
from mechasandbox.domain import (
    ConfigInvalid,
    Enforcement,
    EnvironmentPolicy,
    FilesystemPolicy,
    Limits,
    NetworkMode,
    NetworkPolicy,
    Policy,
)
from mechasandbox.domain.policy import DEFAULT_DENY_READ, DEFAULT_PROTECTED

WS = "/home/dev/project"
SOURCE = "/home/dev/project/.mechasandbox.toml"

BASE = Policy(
    filesystem=FilesystemPolicy(readable=("/opt/sdk",), writable=("/tmp/build",)),
    network=NetworkPolicy(mode=NetworkMode.ALLOWLIST, allow=("*.github.com", "pypi.org:443")),
    environment=EnvironmentPolicy(pass_through=("HOME",), set=(("CI", "1"),)),
)


def project(data: dict[str, Any]) -> Settings:
    return structure_settings(data, SOURCE).unwrap()


def narrowed(data: dict[str, Any], base: Policy = BASE) -> Policy:
    result = narrow(base, project(data), SOURCE, workspace=WS)
    assert is_successful(result), result
    return result.unwrap()


def widened(data: dict[str, Any], base: Policy = BASE) -> ConfigInvalid:
    result = narrow(base, project(data), SOURCE, workspace=WS)
    assert not is_successful(result), result
    error = result.failure()
    assert error.source == SOURCE
    assert "would widen the policy" in error.problem
    return error


def test_empty_project_changes_nothing() -> None:
    assert narrowed({}) == BASE


# Narrowing: accepted ------------------------------------------------------------------


def test_add_deny_entries() -> None:
    policy = narrowed(
        {
            "filesystem": {
                "deny_read": [*DEFAULT_DENY_READ, "/home/dev/project/secrets"],
                "deny_write": ["/home/dev/project/vendor"],
                "protected": [*DEFAULT_PROTECTED, "Makefile"],
            }
        }
    )
    assert policy.filesystem.deny_read[-1] == "/home/dev/project/secrets"
    assert policy.filesystem.deny_write == ("/home/dev/project/vendor",)
    assert "Makefile" in policy.filesystem.protected


def test_a_broader_deny_entry_is_added_to_the_ones_it_covers() -> None:
    policy = narrowed({"filesystem": {"deny_read": ["~"]}})
    assert policy.filesystem.deny_read == (*DEFAULT_DENY_READ, "~")


@pytest.mark.parametrize("key", ["deny_read", "deny_write", "protected"])
@pytest.mark.parametrize("entries", [[], ["/"], [WS], ["/home"], ["~/.aws"]])
def test_project_deny_lists_only_add(key: str, entries: list[str]) -> None:
    """An entry outside the workspace, or an ancestor of it, or an empty list never erases
    what the project inherits (`protected = ["/"]` once dropped `.git/hooks`)."""
    base = attrs.evolve(BASE, filesystem=attrs.evolve(BASE.filesystem, deny_write=("/srv",)))
    inherited = getattr(base.filesystem, key)
    assert inherited
    policy = narrowed({"filesystem": {key: entries}}, base)
    assert getattr(policy.filesystem, key) == tuple(dict.fromkeys((*inherited, *entries)))


def test_project_network_deny_only_adds() -> None:
    base = attrs.evolve(
        BASE, network=NetworkPolicy(mode=NetworkMode.FULL, deny=("evil.example", "bad.example"))
    )
    policy = narrowed({"network": {"deny": ["*.example"]}}, base)
    assert policy.network.deny == ("evil.example", "bad.example", "*.example")


def test_protected_may_be_spelled_absolute_inside_the_workspace() -> None:
    absolute = [f"{WS}/{entry}" for entry in DEFAULT_PROTECTED]
    protected = narrowed({"filesystem": {"protected": absolute}}).filesystem.protected
    assert protected == (*DEFAULT_PROTECTED, *absolute)


def test_lower_limits() -> None:
    policy = narrowed(
        {
            "limits": {
                "timeout": "30s",
                "cpu_time": "10s",  # base has no cpu limit: adding one narrows
                "memory": "512m",
                "max_processes": 10,
                "max_open_files": 64,
                "max_file_size": "10m",
                "max_output": "64k",
            }
        }
    )
    assert policy.limits == Limits(
        timeout_s=30.0,
        cpu_time_s=10.0,
        memory_bytes=512 * 1024**2,
        max_processes=10,
        max_open_files=64,
        max_file_size_bytes=10 * 1024**2,
        max_output_bytes=64 * 1024,
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (NetworkMode.FULL, "allowlist"),
        (NetworkMode.FULL, "none"),
        (NetworkMode.ALLOWLIST, "none"),
        (NetworkMode.NONE, "none"),
    ],
)
def test_network_may_step_down(before: NetworkMode, after: str) -> None:
    base = attrs.evolve(BASE, network=NetworkPolicy(mode=before))
    assert narrowed({"network": {"mode": after}}, base).network.mode.value == after


def test_allowlist_may_narrow_to_covered_patterns() -> None:
    policy = narrowed(
        {"network": {"allow": ["api.github.com", "*.api.github.com", "pypi.org:443"]}}
    )
    assert policy.network.allow == ("api.github.com", "*.api.github.com", "pypi.org:443")


def test_allowlist_from_full_network_may_name_anything() -> None:
    base = attrs.evolve(BASE, network=NetworkPolicy(mode=NetworkMode.FULL))
    policy = narrowed({"network": {"mode": "allowlist", "allow": ["example.com"]}}, base)
    assert policy.network.mode is NetworkMode.ALLOWLIST


def test_add_network_deny() -> None:
    assert narrowed({"network": {"deny": ["evil.example"]}}).network.deny == ("evil.example",)


def test_best_effort_to_strict() -> None:
    base = attrs.evolve(BASE, enforcement=Enforcement.BEST_EFFORT)
    assert narrowed({"enforcement": "strict"}, base).enforcement is Enforcement.STRICT


def test_readable_inside_the_workspace_is_not_a_widening() -> None:
    policy = narrowed({"filesystem": {"readable": [f"{WS}/docs", "/opt/sdk/lib"]}})
    assert policy.filesystem.readable == (f"{WS}/docs", "/opt/sdk/lib")


def test_fewer_writable_paths_and_env_variables() -> None:
    policy = narrowed(
        {"filesystem": {"writable": []}, "environment": {"allow": ["PATH"], "pass": []}}
    )
    assert policy.filesystem.writable == ()
    assert policy.environment.allow == ("PATH",)
    assert policy.environment.pass_through == ()


def test_env_set_may_add_new_variables() -> None:
    policy = narrowed({"environment": {"set": {"NO_COLOR": "1"}}})
    assert policy.environment.set == (("CI", "1"), ("NO_COLOR", "1"))


# Widening: refused -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"filesystem": {"writable": ["/tmp/build", "/var"]}}, "filesystem.writable", "'/var'"),
        ({"filesystem": {"readable": ["/etc/shadow"]}}, "filesystem.readable", "outside"),
        ({"filesystem": {"readable": ["~/.ssh"]}}, "filesystem.readable", "outside"),
        ({"filesystem": {"readable": [f"{WS}/../other"]}}, "filesystem.readable", "outside"),
        ({"limits": {"memory": "8g"}}, "limits.memory", "8g is above the inherited 4g"),
        ({"limits": {"timeout": "1h"}}, "limits.timeout", "above the inherited 2m"),
        ({"limits": {"timeout": "unlimited"}}, "limits.timeout", "removes the inherited"),
        ({"limits": {"max_processes": 513}}, "limits.max_processes", "above"),
        ({"limits": {"max_open_files": "unlimited"}}, "limits.max_open_files", "removes"),
        ({"limits": {"max_file_size": "2g"}}, "limits.max_file_size", "above"),
        ({"limits": {"max_output": "8m"}}, "limits.max_output", "above"),
        ({"network": {"mode": "full"}}, "network.mode", "'full' is wider than"),
        ({"network": {"allow": ["github.com"]}}, "network.allow", "'github.com'"),
        ({"network": {"allow": ["evil-github.com"]}}, "network.allow", "evil-github.com"),
        ({"network": {"allow": ["pypi.org"]}}, "network.allow", "'pypi.org'"),
        ({"network": {"allow": ["pypi.org:80"]}}, "network.allow", "pypi.org:80"),
        ({"environment": {"allow": ["AWS_SECRET_ACCESS_KEY"]}}, "environment.allow", "AWS"),
        ({"environment": {"pass": ["GITHUB_TOKEN"]}}, "environment.pass", "GITHUB_TOKEN"),
        ({"environment": {"set": {"CI": "0"}}}, "environment.set", "changes CI"),
        ({"environment": {"set": {"LD_PRELOAD": "x.so"}}}, "environment.set", "LD_PRELOAD"),
        ({"environment": {"set": {"LD_LIBRARY_PATH": "."}}}, "environment.set", "loader"),
        ({"environment": {"set": {"GCONV_PATH": "."}}}, "environment.set", "GCONV_PATH"),
        ({"environment": {"set": {"GLIBC_TUNABLES": "x"}}}, "environment.set", "loader"),
        ({"environment": {"set": {"DYLD_INSERT_LIBRARIES": "x"}}}, "environment.set", "DYLD"),
        ({"enforcement": "best-effort"}, "enforcement", "weaker"),
    ],
)
def test_widening_is_refused(data: dict[str, Any], field: str, fragment: str) -> None:
    error = widened(data)
    assert error.field == field
    assert fragment in error.problem
    assert "project file may only narrow" in error.problem


def test_network_none_to_full_or_allowlist() -> None:
    base = attrs.evolve(BASE, network=NetworkPolicy(mode=NetworkMode.NONE))
    assert widened({"network": {"mode": "full"}}, base).field == "network.mode"
    assert widened({"network": {"mode": "allowlist"}}, base).field == "network.mode"


def test_allow_entries_need_the_user_allowlist_even_with_network_off() -> None:
    # A later `--network allowlist` from the user must not pick up the project's domains.
    base = attrs.evolve(BASE, network=NetworkPolicy(mode=NetworkMode.NONE))
    assert widened({"network": {"allow": ["example.com"]}}, base).field == "network.allow"


def test_a_loader_variable_the_user_set_may_stay() -> None:
    base = attrs.evolve(BASE, environment=EnvironmentPolicy(set=(("LD_LIBRARY_PATH", "/opt/l"),)))
    policy = narrowed({"environment": {"set": {"LD_LIBRARY_PATH": "/opt/l"}}}, base)
    assert dict(policy.environment.set)["LD_LIBRARY_PATH"] == "/opt/l"
    assert widened({"environment": {"set": {"LD_LIBRARY_PATH": "."}}}, base).field == (
        "environment.set"
    )


# Paths are judged where they lead: a fake file system of symlinks ------------------------

LINKS = {
    f"{WS}/ref": "/",
    f"{WS}/home": "/home/dev",
    f"{WS}/docs": f"{WS}/site/docs",
    "/opt/sdk/current": "/opt/sdk/v2",
    "/opt/sdk/escape": "/etc",
}


def fake_realpath(path: str) -> str:
    """`os.path.realpath` over LINKS (a prefix that is a link is replaced, repeatedly)."""
    import posixpath

    path = posixpath.normpath(path)
    for _ in range(10):
        for link, target in LINKS.items():
            if path == link or path.startswith(link + "/"):
                path = posixpath.normpath(posixpath.join(target, path[len(link) :].lstrip("/")))
                break
        else:
            return path
    return path


def narrowed_on_links(data: dict[str, Any]) -> Result[Policy, ConfigInvalid]:
    return narrow(BASE, project(data), SOURCE, workspace=WS, resolve=fake_realpath)


@pytest.mark.parametrize(
    ("key", "entry", "leads_to"),
    [
        ("readable", f"{WS}/ref", "/"),
        ("readable", f"{WS}/ref/var/run/docker.sock", "/var/run/docker.sock"),
        ("readable", f"{WS}/home/.ssh", "/home/dev/.ssh"),
        ("readable", "/opt/sdk/escape", "/etc"),
        ("writable", "/tmp/build/../../etc", "/etc"),
        # `..` after a link: as text it climbs out of the workspace, by the link it stays in
        ("readable", f"{WS}/docs/../../../../run", "/run"),
        ("readable", "/proc/self/cwd/ref/../../../../run", "/run"),
    ],
)
def test_a_path_through_a_symlink_is_judged_where_it_leads(
    key: str, entry: str, leads_to: str
) -> None:
    result = narrowed_on_links({"filesystem": {key: [entry]}})
    assert not is_successful(result), result
    error = result.failure()
    assert error.field == f"filesystem.{key}"
    assert repr(leads_to) in error.problem


@pytest.mark.parametrize("entry", [f"{WS}/docs", f"{WS}/docs/api", "/opt/sdk/current/lib"])
def test_a_symlink_that_stays_inside_is_accepted(entry: str) -> None:
    assert is_successful(narrowed_on_links({"filesystem": {"readable": [entry]}}))


def test_the_real_file_system_is_consulted(tmp_path: Any) -> None:
    """Without a fake: a symlink planted in a real workspace is followed."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "ref").symlink_to("/")
    result = narrow(
        BASE,
        project({"filesystem": {"readable": [str(workspace / "ref")]}}),
        SOURCE,
        workspace=str(workspace),
    )
    assert not is_successful(result)
    assert result.failure().field == "filesystem.readable"


def test_bounds_are_still_checked_for_project_values() -> None:
    base = attrs.evolve(BASE, limits=Limits(memory_bytes=None))
    # Read from a file, the value is refused as it is read...
    read = structure_settings({"limits": {"memory": "2t"}}, SOURCE)
    assert "2t is above the maximum 1t" in read.failure().problem
    # ...and `Settings` built in code, when they are laid over the policy.
    settings = Settings(limits=LimitsSettings(memory=2 * 1024**4))
    result = narrow(base, settings, SOURCE, workspace=WS)
    error = result.failure()
    assert error.field == "limits.memory"
    assert "above the maximum" in error.problem


# Backend choice --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["none", "process"])
def test_project_may_not_choose_an_unconfined_backend(name: str) -> None:
    result = narrow_backend(BackendChoice(), BackendSettings(name=name), SOURCE)
    error = result.failure()
    assert error.field == "backend.name"
    assert "would widen the policy" in error.problem


def test_project_fills_in_what_the_user_left_open() -> None:
    result = narrow_backend(
        BackendChoice(),
        BackendSettings(name="docker", image="img:1", runtime="runsc"),
        SOURCE,
    ).unwrap()
    assert result.choice == BackendChoice(name="docker", image="img:1", runtime="runsc")
    assert result.warnings == ()


def test_users_choice_stands_and_the_project_choice_is_reported() -> None:
    user = BackendChoice(name="bubblewrap", runtime="runsc")
    result = narrow_backend(
        user, BackendSettings(name="docker", runtime="runc", image="x"), SOURCE
    ).unwrap()
    assert result.choice == BackendChoice(name="bubblewrap", runtime="runsc", image="x")
    assert len(result.warnings) == 2
    assert "backend.name = 'docker' ignored" in result.warnings[0]
    assert "backend.runtime = 'runc' ignored" in result.warnings[1]


# Pattern coverage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wider", "narrower", "covered"),
    [
        ("example.com", "example.com", True),
        ("Example.COM.", "example.com", True),
        ("example.com", "example.com:443", True),
        ("example.com:443", "example.com", False),
        ("example.com:443", "example.com:443", True),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "*.api.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "evil-example.com", False),
        ("example.com", "*.example.com", False),
        ("[::1]:8080", "[::1]:8080", True),
        ("[::1]:8080", "[::1]:9090", False),
        ("127.0.0.1:8080", "127.0.0.1:8080", True),
    ],
)
def test_pattern_covers(wider: str, narrower: str, covered: bool) -> None:
    assert pattern_covers(wider, narrower) is covered


def test_project_may_hide_host_processes_but_not_reveal_them() -> None:
    from mechasandbox.config import Settings, narrow
    from mechasandbox.domain import HostProcesses, Policy

    visible = Policy(host_processes=HostProcesses.VISIBLE)
    hidden = narrow(
        visible, Settings(host_processes=HostProcesses.HIDDEN), "p.toml", workspace="/w"
    )
    assert hidden.unwrap().host_processes is HostProcesses.HIDDEN
    widened = narrow(
        Policy(), Settings(host_processes=HostProcesses.VISIBLE), "p.toml", workspace="/w"
    )
    assert "host_processes" in widened.failure().message


# --- host unix sockets: a project may keep or drop the user's names, never add one ----------
AGENT = "/run/user/1000/ssh-agent.sock"


@pytest.mark.parametrize("mode", list(NetworkMode))
def test_a_project_cannot_name_a_unix_socket_the_user_did_not(mode: NetworkMode) -> None:
    base = attrs.evolve(BASE, network=NetworkPolicy(mode=mode, allow_unix_sockets=(AGENT,)))
    for added in ("/var/run/docker.sock", "/run/user/1000/../1000/bus", f"{WS}/agent.sock"):
        error = widened({"network": {"allow_unix_sockets": [AGENT, added]}}, base)
        assert error.field == "network.allow_unix_sockets"
        assert repr(added) in error.problem


def test_a_project_may_keep_or_drop_the_named_unix_sockets() -> None:
    base = attrs.evolve(
        BASE, network=NetworkPolicy(mode=NetworkMode.FULL, allow_unix_sockets=(AGENT,))
    )
    kept = narrowed({"network": {"allow_unix_sockets": ["/run/user/1000/./ssh-agent.sock"]}}, base)
    assert kept.network.allow_unix_sockets == ("/run/user/1000/./ssh-agent.sock",)
    assert narrowed({"network": {"allow_unix_sockets": []}}, base).network.allow_unix_sockets == ()
    assert narrowed({}, base).network.allow_unix_sockets == (AGENT,)


def test_a_relative_unix_socket_name_is_invalid() -> None:
    result = structure_settings({"network": {"allow_unix_sockets": ["agent.sock"]}}, SOURCE)
    assert not is_successful(result)
    assert "relative" in result.failure().problem


def test_every_widening_of_a_project_file_at_once() -> None:
    settings = project(
        {
            "backend": {"name": "none"},
            "network": {"mode": "full"},
            "limits": {"memory": "64g", "timeout": "unlimited"},
            "environment": {"pass": ["AWS_SECRET_ACCESS_KEY"]},
        }
    )
    error = narrow(BASE, settings, SOURCE, workspace=WS).failure()
    assert [error.field, *(more.field for more in error.more)] == [
        "network.mode",
        "limits.timeout",
        "limits.memory",
        "environment.pass",
        "backend.name",
    ]
    assert all(more.source == SOURCE for more in error.more)
    assert error.message.count("would widen the policy") == 5
    assert error.message.count("a project file may only narrow") == 1


# --- toolchains and umask ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("toolchains", "expected"),
    [
        ("none", ()),
        ([], ()),
        ("auto", ("auto",)),
        (["~/.cargo"], ("~/.cargo",)),  # known roots, one by one, under "auto"
        (["~/.pyenv", "~/.local/bin"], ("~/.pyenv", "~/.local/bin")),
    ],
)
def test_a_project_may_name_fewer_toolchains(toolchains: object, expected: tuple[str]) -> None:
    assert narrowed({"filesystem": {"toolchains": toolchains}}).filesystem.toolchains == expected


@pytest.mark.parametrize(
    ("base", "toolchains"),
    [
        (("auto",), ["~/secrets"]),
        (("auto",), ["/opt/other"]),
        ((), ["auto"]),
        (("~/.cargo",), ["~/.pyenv"]),
    ],
)
def test_a_project_may_not_add_a_toolchain(base: tuple[str, ...], toolchains: list[str]) -> None:
    inherited = attrs.evolve(BASE, filesystem=attrs.evolve(BASE.filesystem, toolchains=base))
    error = widened({"filesystem": {"toolchains": toolchains}}, inherited)
    assert error.field == "filesystem.toolchains"


@pytest.mark.parametrize(
    ("umask", "allowed"),
    [("077", True), ("027", True), ("022", True), ("002", False), ("000", False)],
)
def test_a_project_may_only_mask_more(umask: str, allowed: bool) -> None:
    data = {"filesystem": {"umask": umask}}
    if allowed:
        assert narrowed(data).filesystem.umask == int(umask, 8)
    else:
        assert widened(data).field == "filesystem.umask"
