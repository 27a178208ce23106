"""Structuring raw TOML/JSON data into `Settings`, with errors that name the key.

One `cattrs.Converter(forbid_extra_keys=True)` with a hook per field: a typo such as
`network.mood` must be an error, never a silently ignored key, and a bad value must be
reported as `limits.memory: invalid size '5 zettabytes' ...` — file, dotted key, the text
as written, and what would have been accepted.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, override
from returns.result import Failure, Result, Success

from mechasandbox.backends import catalog
from mechasandbox.config.schema import (
    UNLIMITED,
    BackendSettings,
    EnvironmentSettings,
    FilesystemSettings,
    LimitsSettings,
    NetworkSettings,
    Settings,
    Unlimited,
)
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Enforcement, HostProcesses, NetworkMode
from mechasandbox.domain.units import parse_duration, parse_size

T = TypeVar("T")
E = TypeVar("E", bound="enum.Enum")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_ENTRIES = 4096  # a list longer than this in a policy file is a mistake or an attack


class _BadValueError(ValueError):
    """A value that has the right place but the wrong content; the message is user-facing."""


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _BadValueError(f"expected {what} as a string, got {value!r}")
    if not value or "\0" in value:
        raise _BadValueError(f"expected a non-empty {what} without NUL bytes, got {value!r}")
    return value


def _list(value: object, what: str, item: Callable[[object], str]) -> tuple[str, ...]:
    # A bare string is refused rather than wrapped: `readable = "/opt"` is usually a
    # mistake for a list, and guessing would hide it.
    if not isinstance(value, list | tuple):
        raise _BadValueError(f"expected a list of {what}, got {value!r}")
    if len(value) > _MAX_ENTRIES:
        raise _BadValueError(f"too many entries ({len(value)}); at most {_MAX_ENTRIES}")
    problems = []
    items = []
    for index, entry in enumerate(value):
        try:
            items.append(item(entry))
        except _BadValueError as exc:
            problems.append(f"entry {index}: {exc}")
    if problems:
        raise _BadValueError("; ".join(problems))
    return tuple(items)


def _host_path(value: object) -> str:
    path = _text(value, "path")
    if not (path.startswith(("/", "~"))):
        raise _BadValueError(f"{path!r} is relative; write an absolute path or one starting with ~")
    return path


def _protected_path(value: object) -> str:
    return _text(value, "path")  # relative entries are relative to the workspace


def _pattern(value: object) -> str:
    pattern = _text(value, "domain pattern")
    if any(ch.isspace() for ch in pattern):
        raise _BadValueError(f"domain pattern {pattern!r} contains whitespace")
    return pattern


def _env_name(value: object) -> str:
    name = _text(value, "variable name")
    if not _ENV_NAME.fullmatch(name):
        raise _BadValueError(f"{name!r} is not a valid environment variable name")
    return name


def _paths(value: object, _type: Any) -> tuple[str, ...]:
    return _list(value, "absolute paths", _host_path)


def _protected(value: object, _type: Any) -> tuple[str, ...]:
    return _list(value, "paths", _protected_path)


def _patterns(value: object, _type: Any) -> tuple[str, ...]:
    return _list(value, "domain patterns", _pattern)


def _env_names(value: object, _type: Any) -> tuple[str, ...]:
    return _list(value, "variable names", _env_name)


def _env_set(value: object, _type: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise _BadValueError(f'expected a table of NAME = "value", got {value!r}')
    pairs = []
    for name, text in value.items():
        env_name = _env_name(name)
        if not isinstance(text, str) or "\0" in text:
            raise _BadValueError(
                f"{env_name}: expected a string value without NUL bytes, got {text!r}"
            )
        pairs.append((env_name, text))
    return tuple(pairs)


def _choice(kind: type[E], what: str) -> Callable[[object, Any], E]:
    accepted = ", ".join(member.value for member in kind)

    def hook(value: object, _type: Any) -> E:
        for member in kind:
            if value == member.value:
                return member
        raise _BadValueError(f"unknown {what} {value!r}; expected one of: {accepted}")

    return hook


def _backend_name(value: object, _type: Any) -> str:
    if value not in catalog.NAMES:
        raise _BadValueError(
            f"unknown backend {value!r}; expected one of: {', '.join(catalog.NAMES)}"
        )
    return str(value)


def _pool_size(value: object, _type: Any) -> int:
    return _count(value)


def _optional_text(what: str) -> Callable[[object, Any], str]:
    def hook(value: object, _type: Any) -> str:
        return _text(value, what)

    return hook


def _unlimited_or(parse: Callable[[object], T]) -> Callable[[object, Any], T | Unlimited]:
    def hook(value: object, _type: Any) -> T | Unlimited:
        if value == UNLIMITED.value:
            return UNLIMITED
        return parse(value)

    return hook


def _duration(value: object) -> float:
    if not isinstance(value, str | int | float):
        raise _BadValueError(
            f"invalid duration {value!r}: expected a number or a string like '30s'"
        )
    parsed = parse_duration(value)
    if isinstance(parsed, Failure):
        raise _BadValueError(parsed.failure())
    return parsed.unwrap()


def _size(value: object) -> int:
    if isinstance(value, float):  # TOML `memory = 1.5`: a fraction of a byte needs a unit
        raise _BadValueError(
            f"invalid size {value!r}: write a whole number or a string like '1.5g'"
        )
    if not isinstance(value, str | int):
        raise _BadValueError(f"invalid size {value!r}: expected a number or a string like '512m'")
    parsed = parse_size(value)
    if isinstance(parsed, Failure):
        raise _BadValueError(parsed.failure())
    return parsed.unwrap()


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadValueError(f"expected a positive whole number or 'unlimited', got {value!r}")
    if value <= 0:
        raise _BadValueError(f"must be greater than zero, got {value!r}")
    return value


def _size_hook(value: object, _type: Any) -> int:
    if value == UNLIMITED.value:
        raise _BadValueError("cannot be unlimited: captured output is held in memory; give a size")
    return _size(value)


# Keys as written in files, per settings class; used for `unknown key` messages.
_RENAMES: dict[str, str] = {"pass_": "pass"}


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(_RENAMES.get(field.name, field.name) for field in attrs.fields(cls))


@cache
def converter() -> cattrs.Converter:
    """The one converter for settings; built once, since hook generation is not free."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    hooks: dict[type, dict[str, Any]] = {
        BackendSettings: {
            "name": override(struct_hook=_backend_name),
            "pool_size": override(struct_hook=_pool_size),
            "image": override(struct_hook=_optional_text("image name")),
            "runtime": override(struct_hook=_optional_text("runtime name")),
        },
        FilesystemSettings: {
            "readable": override(struct_hook=_paths),
            "writable": override(struct_hook=_paths),
            "deny_read": override(struct_hook=_paths),
            "deny_write": override(struct_hook=_paths),
            "protected": override(struct_hook=_protected),
        },
        NetworkSettings: {
            "mode": override(struct_hook=_choice(NetworkMode, "network mode")),
            "allow": override(struct_hook=_patterns),
            "deny": override(struct_hook=_patterns),
            "allow_unix_sockets": override(struct_hook=_paths),
        },
        LimitsSettings: {
            "timeout": override(struct_hook=_unlimited_or(_duration)),
            "cpu_time": override(struct_hook=_unlimited_or(_duration)),
            "memory": override(struct_hook=_unlimited_or(_size)),
            "max_processes": override(struct_hook=_unlimited_or(_count)),
            "max_open_files": override(struct_hook=_unlimited_or(_count)),
            "max_file_size": override(struct_hook=_unlimited_or(_size)),
            "max_output": override(struct_hook=_size_hook),
        },
        EnvironmentSettings: {
            "allow": override(struct_hook=_env_names),
            "pass_": override(rename="pass", struct_hook=_env_names),
            "set": override(struct_hook=_env_set),
        },
        Settings: {
            "enforcement": override(struct_hook=_choice(Enforcement, "enforcement")),
            "host_processes": override(struct_hook=_choice(HostProcesses, "host_processes")),
        },
    }
    for cls, fields in hooks.items():
        generated: Callable[[Any, Any], Any] = make_dict_structure_fn(
            cls, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True, **fields
        )
        conv.register_structure_hook(cls, _require_table(generated))
    return conv


def _require_table(generated: Callable[[Any, Any], T]) -> Callable[[Any, Any], T]:
    """A section given as a scalar (`limits = 5`) gets a message, not a cattrs TypeError."""

    def hook(value: Any, cls: Any) -> T:
        if not isinstance(value, Mapping):
            raise _BadValueError(f"expected a table of settings, got {value!r}")
        return generated(value, cls)

    return hook


def _problems(exc: BaseException, path: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(dotted key, message) for every leaf of a cattrs exception tree, in file order."""
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for inner, note in with_notes:
            yield from _problems(inner, (*path, _RENAMES.get(note.name, note.name)))
        for inner in without:
            yield from _problems(inner, path)
    elif isinstance(exc, IterableValidationError):
        with_notes_i, without_i = exc.group_exceptions()
        for inner, note_i in with_notes_i:
            yield from _problems(inner, (*path, str(note_i.index)))
        for inner in without_i:
            yield from _problems(inner, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        expected = ", ".join(_keys(exc.cl))
        for key in sorted(exc.extra_fields):
            yield ".".join((*path, key)), f"unknown key; expected one of: {expected}"
    elif isinstance(exc, _BadValueError):
        yield ".".join(path), str(exc)
    else:  # a cattrs or attrs complaint we did not anticipate: still name the key
        yield ".".join(path), f"invalid value: {exc}"


def structure_settings(data: Mapping[str, object], source: str) -> Result[Settings, ConfigInvalid]:
    """Raw data of one layer (a parsed file, or values built by the CLI) as `Settings`."""
    try:
        return Success(converter().structure(data, Settings))
    except (ClassValidationError, ForbiddenExtraKeysError, _BadValueError) as exc:
        problems = list(_problems(exc, ()))
        field, problem = problems[0] if problems else ("", str(exc))
        if len(problems) > 1:
            problem += f" (and {len(problems) - 1} more problem(s) in this file)"
        return Failure(ConfigInvalid(problem=problem, source=source, field=field or None))
