"""The checks every way of configuring a run shares, each with one message.

A configuration file (`converter`), the command line's options and a library caller's
`PolicyChanges` (`changes`), and a `Policy` built in code and handed to `Sandbox`
(`policy_problems`) all go through these functions, so that the same bad value gets the
same message whichever way it came in: `--env 1X=y` and `set = { 1X = "y" }` both say
`'1X' is not a valid environment variable name`. A check returns the value or the problem
as text; its caller says where the value was (`--env`, `f.toml: environment.set`).

Light on purpose (no cattrs, and `units`, which brings `decimal`, only when a text is
parsed): every run of the CLI and of `Sandbox` goes through here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TypeVar

import attrs
from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.limits import (
    MAX_MEMORY_BYTES,
    MAX_OPEN_FILES,
    MAX_OUTPUT_BYTES,
    MAX_PROCESSES,
    MAX_TIMEOUT_S,
    MIN_OPEN_FILES,
)
from mechasandbox.domain.policy import TOOLCHAINS_AUTO, TOOLCHAINS_NONE, Policy

T = TypeVar("T")
Checked = Result[T, str]  # the value, or what is wrong with it, as a person reads it

UNLIMITED_TEXT = "unlimited"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- texts, paths, names ---------------------------------------------------------------------
def text(value: object, what: str) -> Checked[str]:
    """A non-empty string without NUL bytes (a NUL would end it early wherever it is passed
    on as a C string: an argument, a path, a variable)."""
    if not isinstance(value, str):
        return Failure(f"expected {what} as a string, got {value!r}")
    if not value or "\0" in value:
        return Failure(f"expected a non-empty {what} without NUL bytes, got {value!r}")
    return Success(value)


def _absolute(path: str) -> Checked[str]:
    if not path.startswith(("/", "~")):
        # Relative to what? The workspace, the caller's directory and the backend's
        # launcher would each read it differently (landlock would take it literally).
        return Failure(f"{path!r} is relative; write an absolute path or one starting with ~")
    return Success(path)


def host_path(value: object) -> Checked[str]:
    """A path on the host: absolute, or starting with `~` (expanded against HOME)."""
    return text(value, "path").bind(_absolute)


def protected_path(value: object) -> Checked[str]:
    """A `protected` entry: relative entries are relative to the workspace."""
    return text(value, "path")


def toolchain_entry(value: object) -> Checked[str]:
    """A `filesystem.toolchains` entry: "auto" or a host path."""
    if value == TOOLCHAINS_AUTO:
        return Success(TOOLCHAINS_AUTO)
    return host_path(value)


def toolchains(value: object) -> Checked[tuple[str, ...]]:
    """`filesystem.toolchains`: "auto", "none", or a list of "auto" and host paths."""
    if value == TOOLCHAINS_NONE:
        return Success(())
    if value == TOOLCHAINS_AUTO:
        return Success((TOOLCHAINS_AUTO,))
    if not isinstance(value, list | tuple):
        return Failure(f'expected "auto", "none" or a list of paths (and "auto"), got {value!r}')
    return entries(value, toolchain_entry)


def umask(value: object) -> Checked[int]:
    """A umask: octal digits as text (`"022"`, `"0o027"`) or a number (TOML's `0o022`)."""
    if isinstance(value, str):
        digits = value.strip().lower().removeprefix("0o")
        if digits and len(digits) <= 4 and all(ch in "01234567" for ch in digits):
            value = int(digits, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        return Failure(f'expected a umask in octal such as "022" or "077", got {value!r}')
    return Success(value)


def _without_whitespace(pattern: str) -> Checked[str]:
    if any(ch.isspace() for ch in pattern):
        return Failure(f"domain pattern {pattern!r} contains whitespace")
    return Success(pattern)


def domain_pattern(value: object) -> Checked[str]:
    return text(value, "domain pattern").bind(_without_whitespace)


def _valid_name(name: str) -> Checked[str]:
    if not _ENV_NAME.fullmatch(name):
        return Failure(f"{name!r} is not a valid environment variable name")
    return Success(name)


def env_name(value: object) -> Checked[str]:
    return text(value, "variable name").bind(_valid_name)


def env_value(name: str, value: object) -> Checked[str]:
    if not isinstance(value, str) or "\0" in value:
        return Failure(f"{name}: expected a string value without NUL bytes, got {value!r}")
    return Success(value)


def env_pair(name: object, value: object) -> Checked[tuple[str, str]]:
    """One variable to set: `NAME = "value"` in a file, `--env NAME=VALUE`."""
    return env_name(name).bind(
        lambda valid: env_value(valid, value).map(lambda content: (valid, content))
    )


def entries(
    values: Iterable[object], check: Callable[[object], Checked[T]]
) -> Checked[tuple[T, ...]]:
    """Every entry of a list checked, each problem prefixed with the entry's index."""
    checked: list[T] = []
    problems: list[str] = []
    for index, value in enumerate(values):
        result = check(value)
        if isinstance(result, Failure):
            problems.append(f"entry {index}: {result.failure()}")
        else:
            checked.append(result.unwrap())
    return Failure("; ".join(problems)) if problems else Success(tuple(checked))


# --- numbers ---------------------------------------------------------------------------------
def count(value: object, *, or_unlimited: bool = False) -> Checked[int]:
    """A positive whole number: `512` in a file, `"512"` on the command line."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        accepted = "a positive whole number" + (" or 'unlimited'" if or_unlimited else "")
        return Failure(f"expected {accepted}, got {value!r}")
    if value <= 0:
        return Failure(f"must be greater than zero, got {value!r}")
    return Success(value)


def duration(value: object) -> Checked[float]:
    """Seconds: a number, or a text such as `30s`, `500ms`, `2m` (see `domain.units`)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return Failure(f"invalid duration {value!r}: expected a number or a string like '30s'")
    from mechasandbox.domain.units import parse_duration

    return parse_duration(value)


def size(value: object) -> Checked[int]:
    """Bytes: a whole number, or a text such as `512m`, `1.5GiB` (see `domain.units`)."""
    if isinstance(value, float):  # TOML `memory = 1.5`: a fraction of a byte needs a unit
        return Failure(f"invalid size {value!r}: write a whole number or a string like '1.5g'")
    if not isinstance(value, str | int):
        return Failure(f"invalid size {value!r}: expected a number or a string like '512m'")
    from mechasandbox.domain.units import parse_size

    return parse_size(value)


def _show_duration(seconds: float) -> str:
    from mechasandbox.domain.units import format_duration

    return format_duration(seconds)


def _show_size(size_bytes: float) -> str:
    from mechasandbox.domain.units import format_size

    return format_size(int(size_bytes))


def _show_count(number: float) -> str:
    return str(int(number))


@attrs.frozen(kw_only=True)
class LimitRule:
    """One limit in each vocabulary, with how it is read, shown and bounded."""

    key: str  # in files: `limits.memory`
    attribute: str  # in `Limits`: `memory_bytes`
    option: str  # on the command line: `--memory`
    parse: Callable[[object], Checked[float]]  # an int for sizes and counts
    show: Callable[[float], str]
    maximum: float
    minimum: float = 0
    why_minimum: str = ""
    may_be_unlimited: bool = True

    def checked(self, value: object) -> Checked[float | None]:
        """`value` as written (a text, or a number in the file's unit) read and bounded;
        None for `unlimited`."""
        if value == UNLIMITED_TEXT:
            return self.unlimited()
        written = value if isinstance(value, str) else None
        return self.parse(value).bind(lambda number: self.bounded(number, written))

    def unlimited(self) -> Checked[float | None]:
        if not self.may_be_unlimited:
            return Failure("cannot be unlimited: captured output is held in memory; give a size")
        return Success(None)

    def bounded(self, number: float, written: str | None = None) -> Checked[float | None]:
        """`number` (in `Limits`' unit) within the bounds; a problem quotes `written`, the
        user's own spelling, when there is one (`5t is above the maximum 1t`)."""
        shown = written.strip() if written is not None else self.show(number)
        if number > self.maximum:
            return Failure(f"{shown} is above the maximum {self.show(self.maximum)}")
        if number < self.minimum:
            return Failure(
                f"{shown} is below the minimum {self.show(self.minimum)}: {self.why_minimum}"
            )
        return Success(number)


def _count_or_unlimited(value: object) -> Checked[int]:
    return count(value, or_unlimited=True)


LIMIT_RULES: tuple[LimitRule, ...] = (
    LimitRule(
        key="timeout",
        attribute="timeout_s",
        option="--timeout",
        parse=duration,
        show=_show_duration,
        maximum=MAX_TIMEOUT_S,
    ),
    LimitRule(
        key="cpu_time",
        attribute="cpu_time_s",
        option="--cpu-time",
        parse=duration,
        show=_show_duration,
        maximum=MAX_TIMEOUT_S,
    ),
    LimitRule(
        key="memory",
        attribute="memory_bytes",
        option="--memory",
        parse=size,
        show=_show_size,
        maximum=MAX_MEMORY_BYTES,
    ),
    LimitRule(
        key="max_processes",
        attribute="max_processes",
        option="--max-processes",
        parse=_count_or_unlimited,
        show=_show_count,
        maximum=MAX_PROCESSES,
    ),
    LimitRule(
        key="max_open_files",
        attribute="max_open_files",
        option="--max-open-files",
        parse=_count_or_unlimited,
        show=_show_count,
        maximum=MAX_OPEN_FILES,
        minimum=MIN_OPEN_FILES,
        why_minimum="too few to start a command: the launcher (bwrap, the container "
        "runtime) runs under this limit too",
    ),
    LimitRule(
        key="max_file_size",
        attribute="max_file_size_bytes",
        option="--max-file-size",
        parse=size,
        show=_show_size,
        maximum=MAX_MEMORY_BYTES,
    ),
    LimitRule(
        key="max_output",
        attribute="max_output_bytes",
        option="--max-output",
        parse=size,
        show=_show_size,
        maximum=MAX_OUTPUT_BYTES,
        may_be_unlimited=False,
    ),
)
RULE_OF_KEY: Mapping[str, LimitRule] = {rule.key: rule for rule in LIMIT_RULES}
RULE_OF_ATTRIBUTE: Mapping[str, LimitRule] = {rule.attribute: rule for rule in LIMIT_RULES}


def limit_value(rule: LimitRule, value: object) -> Checked[float | int | None]:
    """A limit already in `Limits`' unit (from code: `PolicyChanges`, a `Policy`): a number
    within the bounds, or None (no limit)."""
    if value is None:
        return rule.unlimited()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Failure(f"expected a number, got {value!r}")
    if not value > 0:
        return Failure(f"must be greater than zero, got {value!r}")
    return rule.bounded(value).map(lambda _: value)


# --- keys ------------------------------------------------------------------------------------
def unknown_key(key: str, expected: Sequence[str]) -> str:
    """`unknown key; expected one of: ...`, with the closest accepted key when one is close."""
    message = f"unknown key; expected one of: {', '.join(expected)}"
    close = difflib.get_close_matches(key, expected, n=1, cutoff=0.75)
    return f"{message} (did you mean {close[0]!r}?)" if close else message


# --- a whole policy, as code builds it -------------------------------------------------------
def _located(field: str, problem: Checked[object]) -> list[ConfigInvalid]:
    if isinstance(problem, Failure):
        return [ConfigInvalid(problem=problem.failure(), source="policy", field=field)]
    return []


def _pairs(values: object) -> Checked[object]:
    """`environment.set` as pairs; a bad variable is told as a file's table is (by name)."""
    if not isinstance(values, tuple):
        return Failure(f"expected (name, value) pairs, got {values!r}")
    problems: list[str] = []
    for index, entry in enumerate(values):
        if not isinstance(entry, tuple) or len(entry) != 2:
            problems.append(f"entry {index}: expected a (name, value) pair, got {entry!r}")
            continue
        checked = env_pair(*entry)
        if isinstance(checked, Failure):
            problems.append(checked.failure())
    return Failure("; ".join(problems)) if problems else Success(values)


def _problems(policy: Policy) -> tuple[ConfigInvalid, ...]:
    fs, net, env = policy.filesystem, policy.network, policy.environment
    found: list[ConfigInvalid] = []
    for key, paths in (
        ("readable", fs.readable),
        ("writable", fs.writable),
        ("deny_read", fs.deny_read),
        ("deny_write", fs.deny_write),
    ):
        found += _located(f"filesystem.{key}", entries(paths, host_path))
    found += _located("filesystem.protected", entries(fs.protected, protected_path))
    found += _located("filesystem.toolchains", entries(fs.toolchains, toolchain_entry))
    found += _located("network.allow", entries(net.allow, domain_pattern))
    found += _located("network.deny", entries(net.deny, domain_pattern))
    found += _located("network.allow_unix_sockets", entries(net.allow_unix_sockets, host_path))
    found += _located("environment.allow", entries(env.allow, env_name))
    found += _located("environment.pass", entries(env.pass_through, env_name))
    found += _located("environment.set", _pairs(env.set))
    for rule in LIMIT_RULES:
        found += _located(
            f"limits.{rule.key}", limit_value(rule, getattr(policy.limits, rule.attribute))
        )
    return tuple(found)


@lru_cache(maxsize=64)
def _cached_problems(policy: Policy) -> tuple[ConfigInvalid, ...]:
    return _problems(policy)


def policy_problems(policy: Policy) -> ConfigInvalid | None:
    """What is wrong with a policy built in code, as a configuration file would be told
    (`filesystem.readable: entry 0: 'src' is relative; ...`), or None. An agent runs command
    after command under one policy: the answer is remembered."""
    try:
        found = _cached_problems(policy)
    except TypeError:  # unhashable: a list or a dict where a tuple belongs; say which
        found = _problems(policy)
    return ConfigInvalid.together(found) if found else None
