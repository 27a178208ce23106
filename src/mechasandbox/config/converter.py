"""Structuring raw TOML/JSON data into `Settings`, with errors that name the key.

One `cattrs.Converter(forbid_extra_keys=True)` with a hook per field: a typo such as
`network.mood` must be an error, never a silently ignored key, and a bad value must be
reported as `limits.memory: invalid size '5 zettabytes' ...` — file, dotted key, the text
as written, and what would have been accepted. The values are checked by `validation`,
which the command line's options and the API share: one bad value, one message. Every
problem of a file is reported, not the first (`ConfigInvalid.more`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, override
from returns.result import Failure, Result, Success

from mechasandbox.backends import catalog
from mechasandbox.config import schema, validation
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import Enforcement, HostProcesses, NetworkMode

T = TypeVar("T")
E = TypeVar("E", bound="enum.Enum")

_MAX_ENTRIES = 4096  # a list longer than this in a policy file is a mistake or an attack


class _BadValueError(ValueError):
    """A value that has the right place but the wrong content; the message is user-facing."""


def _valid(checked: Result[T, str]) -> T:
    """The value of a shared check (`validation`), or its problem raised for cattrs to
    collect under the key."""
    if isinstance(checked, Failure):
        raise _BadValueError(checked.failure())
    return checked.unwrap()


def _list(value: object, what: str, item: Callable[[object], Result[str, str]]) -> tuple[str, ...]:
    # A bare string is refused rather than wrapped: `readable = "/opt"` is usually a
    # mistake for a list, and guessing would hide it.
    if not isinstance(value, list | tuple):
        raise _BadValueError(f"expected a list of {what}, got {value!r}")
    if len(value) > _MAX_ENTRIES:
        raise _BadValueError(f"too many entries ({len(value)}); at most {_MAX_ENTRIES}")
    return _valid(validation.entries(value, item))


def _paths(value: object, _type: Any) -> tuple[str, ...]:
    return _list(value, "absolute paths", validation.host_path)


def _protected(value: object, _type: Any) -> tuple[str, ...]:
    return _list(value, "paths", validation.protected_path)


def _toolchains(value: object, _type: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple) and len(value) > _MAX_ENTRIES:
        raise _BadValueError(f"too many entries ({len(value)}); at most {_MAX_ENTRIES}")
    return _valid(validation.toolchains(value))


def _umask(value: object, _type: Any) -> int:
    return _valid(validation.umask(value))


def _patterns(value: object, _type: Any) -> tuple[str, ...]:
    return _list(value, "domain patterns", validation.domain_pattern)


def _env_names(value: object, _type: Any) -> tuple[str, ...]:
    return _list(value, "variable names", validation.env_name)


def _env_set(value: object, _type: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise _BadValueError(f'expected a table of NAME = "value", got {value!r}')
    return tuple(_valid(validation.env_pair(name, text)) for name, text in value.items())


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
    return _valid(validation.count(value))


def _checked(check: Callable[[object], validation.Checked[T]]) -> Callable[[object, Any], T]:
    def hook(value: object, _type: Any) -> T:
        return _valid(check(value))

    return hook


def _retries(value: object, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
        raise _BadValueError(f"expected a whole number from 0 to 10, got {value!r}")
    return value


def _optional_text(what: str) -> Callable[[object, Any], str]:
    def hook(value: object, _type: Any) -> str:
        return _valid(validation.text(value, what))

    return hook


def _limit(key: str) -> Callable[[object, Any], float | int | schema.Unlimited]:
    """The limit `key` as written, read and bounded by the rule the options share."""
    rule = validation.RULE_OF_KEY[key]

    def hook(value: object, _type: Any) -> float | int | schema.Unlimited:
        checked = _valid(rule.checked(value))
        return schema.UNLIMITED if checked is None else checked

    return hook


# Keys as written in files, per settings class; used for `unknown key` messages.
_RENAMES: dict[str, str] = {"pass_": "pass"}


def keys_of(cls: type) -> tuple[str, ...]:
    """The keys of a settings class as files spell them."""
    return tuple(_RENAMES.get(field.name, field.name) for field in attrs.fields(cls))


@cache
def converter() -> cattrs.Converter:
    """The one converter for settings; built once, since hook generation is not free."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    hooks: dict[type, dict[str, Any]] = {
        schema.BackendSettings: {
            "name": override(struct_hook=_backend_name),
            "pool_size": override(struct_hook=_pool_size),
            "image": override(struct_hook=_optional_text("image name")),
            "runtime": override(struct_hook=_optional_text("runtime name")),
        },
        schema.RaySettings: {
            "address": override(struct_hook=_optional_text("cluster address")),
            "backend": override(struct_hook=_backend_name),
            "max_transfer": override(struct_hook=_checked(validation.size)),
            "grace": override(struct_hook=_checked(validation.duration)),
            "retries": override(struct_hook=_retries),
        },
        schema.FilesystemSettings: {
            "readable": override(struct_hook=_paths),
            "writable": override(struct_hook=_paths),
            "deny_read": override(struct_hook=_paths),
            "deny_write": override(struct_hook=_paths),
            "protected": override(struct_hook=_protected),
            "toolchains": override(struct_hook=_toolchains),
            "umask": override(struct_hook=_umask),
        },
        schema.NetworkSettings: {
            "mode": override(struct_hook=_choice(NetworkMode, "network mode")),
            "allow": override(struct_hook=_patterns),
            "deny": override(struct_hook=_patterns),
            "allow_unix_sockets": override(struct_hook=_paths),
        },
        schema.LimitsSettings: {
            key: override(struct_hook=_limit(key)) for key in validation.RULE_OF_KEY
        },
        schema.EnvironmentSettings: {
            "allow": override(struct_hook=_env_names),
            "pass_": override(rename="pass", struct_hook=_env_names),
            "set": override(struct_hook=_env_set),
        },
        schema.Settings: {
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
        for key in sorted(exc.extra_fields):
            yield ".".join((*path, key)), validation.unknown_key(key, keys_of(exc.cl))
    elif isinstance(exc, _BadValueError):
        yield ".".join(path), str(exc)
    else:  # a cattrs or attrs complaint we did not anticipate: still name the key
        yield ".".join(path), f"invalid value: {exc}"


def structure_settings(
    data: Mapping[str, object], source: str
) -> Result[schema.Settings, ConfigInvalid]:
    """Raw data of one layer (a parsed file, or values built by the CLI) as `schema.Settings`."""
    try:
        return Success(converter().structure(data, schema.Settings))
    except (ClassValidationError, ForbiddenExtraKeysError, _BadValueError) as exc:
        problems = list(_problems(exc, ())) or [("", str(exc))]
        return Failure(
            ConfigInvalid.together(
                [
                    ConfigInvalid(problem=problem, source=source, field=field or None)
                    for field, problem in problems
                ]
            )
        )
