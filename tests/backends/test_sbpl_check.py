"""The structural check of generated SBPL, over the golden cases and generated policies."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.result import Success

from mechasandbox.backends.macos.sbpl import SbplProfile, compile_profile
from mechasandbox.backends.macos.sbpl_check import (
    SANDBOX_EXEC,
    check_invocation,
    check_profile,
    parse,
)
from mechasandbox.domain import (
    Enforcement,
    FilesystemPolicy,
    NetworkMode,
    NetworkPolicy,
    Policy,
    RunRequest,
)
from tests.backends.test_seatbelt_golden import CASES, HOST, TMPDIR, compile_ok, fake_realpath


def problems(profile: SbplProfile, policy: Policy) -> tuple[str, ...]:
    return check_profile(
        profile.text, profile.params, network_none=policy.network.mode is NetworkMode.NONE
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_profiles_pass(case: str) -> None:
    policy, workspace, port = CASES[case]
    profile = compile_ok(policy, workspace, port)
    assert problems(profile, policy) == ()
    argv = (SANDBOX_EXEC, *profile.sandbox_exec_args(), "--", "echo", "hi")
    assert check_invocation(argv, profile.params) == ()


def test_tagged_profile_passes() -> None:
    profile = compile_profile(
        RunRequest(argv=["true"], workspace="/Users/dev/proj"),
        CASES["restrictive"][0],
        HOST,
        tmpdir=TMPDIR,
        realpath=fake_realpath,
        proxy_port=8877,
        log_tag="mechasandbox-0123abcd",
    ).unwrap()
    assert '(deny default (with message "mechasandbox-0123abcd"))' in profile.text
    # deny default, deny_read, its renames, deny_write, protected paths, their parents,
    # git's and husky's places at any depth and their renames
    assert profile.text.count('(with message "mechasandbox-0123abcd")') == 8
    assert problems(profile, CASES["restrictive"][0]) == ()


# --- the check catches what it is for -----------------------------------------------------

BASE = compile_ok(Policy())


def broken(old: str, new: str) -> tuple[str, ...]:
    assert old in BASE.text
    return check_profile(BASE.text.replace(old, new, 1), BASE.params, network_none=True)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("(allow process-fork)", "(allow process-fork", "does not parse"),
        ("(allow process-fork)", "(allow process-fork))", "does not parse"),
        ('(literal "/dev/ptmx")', '(literal "/dev/ptmx)', "does not parse"),
        ("(allow process-fork)", "(allow process-fork*)", "unknown operation 'process-fork*'"),
        ("(allow process-fork)", "(allow default)", "only a bare (deny default)"),
        ('(sysctl-name "kern.argmax")', '(sysctl-nam "kern.argmax")', "unknown filter"),
        ("(target same-sandbox)", "(target others)", "unexpected target"),
        ("(allow process-fork)", "(allow network*)", "network mode is none"),
        ("(allow process-fork)", "(allow system-socket)", "network mode is none"),
        (
            "(allow process-fork)",
            '(allow network-outbound (remote ip "localhost:9"))',
            "network mode is none",
        ),
        (
            "(allow process-fork)",
            '(allow network-outbound (remote ip "*:*"))',
            "network mode is none",
        ),
        (
            "(allow process-fork)",
            '(allow network-outbound (remote unix-socket (path-literal "/var/run/docker.sock")))',
            "not parameterised",
        ),
        (
            "(allow process-fork)",
            "(allow network-outbound (remote unix-socket))",
            "only `(remote unix-socket (path-literal PATH))`",
        ),
        (
            "(allow process-fork)",
            '(allow network-outbound (remote ip "evil.example:443"))',
            '"*:*" is expected',
        ),
        ('(subpath (param "WORKSPACE"))', '(subpath "/Users/dev/proj")', "not parameterised"),
        ('(subpath (param "WORKSPACE"))', '(subpath (param "NOPE"))', "not defined"),
        ('(subpath (param "TMPDIR"))', '(subpath "/usr/bin")', "never used: TMPDIR"),
        # Too open: /usr and /opt wholesale (Homebrew's var), loopback's every port
        ('(subpath "/usr/bin")', '(subpath "/usr")', "literal path '/usr' is not parameterised"),
        ('(subpath "/opt/homebrew/bin")', '(subpath "/opt")', "'/opt' is not parameterised"),
        (
            '(subpath "/opt/homebrew/bin")',
            '(subpath "/opt/homebrew/var")',
            "is not parameterised",
        ),
        (
            "(allow process-fork)",
            '(allow network-outbound (remote ip "localhost:*"))',
            '"*:*" is expected',
        ),
        # TLS and DNS services only where the network is reachable
        (
            "(allow user-preference-read)",
            '(allow mach-lookup (global-name "com.apple.trustd.agent"))',
            "network services com.apple.trustd.agent although the mode is none",
        ),
        (
            '(sysctl-name "kern.grade_cputype")',
            '(sysctl-name "kern.tcsm_enable")',
            "sysctl-write beyond",
        ),
        (
            '(sysctl-name "kern.grade_cputype")',
            '(sysctl-name-prefix "kern.")',
            "sysctl-write beyond",
        ),
        # git's places at any depth: the rule must be there, scoped to the workspace
        (
            '(require-all (subpath (param "WORKSPACE")) (require-any (regex',
            '(require-all (subpath (param "TMPDIR")) (require-any (regex',
            "the workspace lacks the deny of 2 protected names",
        ),
        # deny_write and protected paths: the path itself, not only what is under it
        (
            '(literal (param "PROTECTED_0"))',
            '(literal (param "TMPDIR"))',
            "PROTECTED_0 is not denied as literal",
        ),
        ("(version 1)", "(version 2)", "does not start with (version 1)"),
        ('(regex #"^/dev/ttys[0-9]+$")', '(regex #"^/.*$")', "unexpected regex"),
    ],
)
def test_broken_profiles_are_caught(old: str, new: str, expected: str) -> None:
    found = broken(old, new)
    assert any(expected in problem for problem in found), found


def test_allow_before_deny_default_is_caught() -> None:
    text = BASE.text.replace("(deny default)", "(allow process-fork)\n(deny default)", 1)
    found = check_profile(text, BASE.params, network_none=True)
    assert any("allow before (deny default)" in p for p in found), found


def test_spliced_policy_path_is_caught() -> None:
    text = BASE.text + '(allow file-read* (subpath "/Users/dev/proj"))\n'
    found = check_profile(text, BASE.params, network_none=True)
    assert any("appears literally" in p for p in found), found


def test_with_message_only_on_denies() -> None:
    text = BASE.text.replace("(allow process-fork)", '(allow process-fork (with message "t"))')
    found = check_profile(text, BASE.params, network_none=True)
    assert any("on a deny" in p for p in found), found


def test_parser_reads_strings_and_regexes() -> None:
    forms = parse('(a "x\\"y)" #"^re$") ; (comment\n(b)')
    assert len(forms) == 2


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("sandbox-exec", "-p", "P", "--", "ls"), "absolute path"),
        ((SANDBOX_EXEC, "-f", "P", "--", "ls"), "inline"),
        ((SANDBOX_EXEC, "-p", "P", "ls"), "no `--`"),
        ((SANDBOX_EXEC, "-p", "P", "-DX=1", "--", "ls"), "exactly the -D params"),
        ((SANDBOX_EXEC, "-p", "P", "--"), "no command"),
    ],
)
def test_bad_invocations_are_caught(argv: tuple[str, ...], expected: str) -> None:
    found = check_invocation(argv, ())
    assert any(expected in p for p in found), found


# --- every generated profile passes ------------------------------------------------------

_SEGMENT = st.text(
    alphabet=st.characters(exclude_characters="/\x00", codec="utf-8"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
_ABSOLUTE = st.lists(_SEGMENT, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
_HOME = st.lists(_SEGMENT, min_size=1, max_size=3).map(lambda parts: "~/" + "/".join(parts))
_PATH = st.one_of(
    _ABSOLUTE,
    _HOME,
    st.sampled_from(["/usr", "/tmp/x", "/", "/Users/dev/proj/.git", "/dev/null"]),
)
_RELATIVE = st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join)


@st.composite
def policies(draw: st.DrawFn) -> tuple[Policy, str, int | None, str | None]:
    mode = draw(st.sampled_from(list(NetworkMode)))
    paths = st.lists(_PATH, max_size=4).map(tuple)
    policy = Policy(
        filesystem=FilesystemPolicy(
            readable=draw(paths),
            writable=draw(paths),
            deny_read=draw(paths),
            deny_write=draw(paths),
            protected=draw(st.lists(st.one_of(_RELATIVE, _PATH), max_size=4).map(tuple)),
        ),
        network=NetworkPolicy(mode=mode, allow_unix_sockets=draw(paths)),
        enforcement=Enforcement.BEST_EFFORT,
    )
    workspace = draw(st.one_of(_ABSOLUTE, st.just("/Users/dev/proj")))
    port = draw(st.integers(1, 65535)) if mode is NetworkMode.ALLOWLIST else None
    tag = draw(st.one_of(st.none(), st.from_regex(r"\A[A-Za-z0-9_-]{1,20}\Z")))
    return policy, workspace, port, tag


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_every_generated_profile_passes(case: tuple[Policy, str, int | None, str | None]) -> None:
    policy, workspace, port, tag = case
    compiled = compile_profile(
        RunRequest(argv=["true"], workspace=workspace),
        policy,
        HOST,
        tmpdir=TMPDIR,
        realpath=fake_realpath,
        proxy_port=port,
        log_tag=tag,
    )
    assert isinstance(compiled, Success), compiled
    profile = compiled.unwrap()
    assert problems(profile, policy) == ()
    argv = (SANDBOX_EXEC, *profile.sandbox_exec_args(), "--", "true")
    assert check_invocation(argv, profile.params) == ()
