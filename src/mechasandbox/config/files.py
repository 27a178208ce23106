"""Reading one configuration file into plain data, with every failure as `ConfigInvalid`.

Files are read with a size cap (a policy file is a few hundred bytes; a huge one is a
mistake or an attack on the loader) and parsed with the standard library only. Nothing is
interpolated: `${HOME}` in a value stays the literal text `${HOME}`, because textual
substitution can inject keys and values the author of the file never wrote.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import ConfigInvalid

MAX_CONFIG_BYTES = 1024 * 1024
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def read_text(path: str) -> Result[str, ConfigInvalid]:
    """The UTF-8 text of `path`, or why it cannot be had (missing, a directory, too big)."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return Failure(ConfigInvalid(problem="file not found", source=path))
    except IsADirectoryError:
        return Failure(ConfigInvalid(problem="is a directory, not a file", source=path))
    except OSError as exc:
        return Failure(ConfigInvalid(problem=f"cannot read: {exc.strerror or exc}", source=path))
    if len(data) > MAX_CONFIG_BYTES:
        return Failure(
            ConfigInvalid(problem=f"larger than {MAX_CONFIG_BYTES} bytes; refusing", source=path)
        )
    try:
        return Success(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Failure(ConfigInvalid(problem=f"not UTF-8 text (byte {exc.start})", source=path))


def parse_toml(text: str, source: str) -> Result[dict[str, Any], ConfigInvalid]:
    """TOML `text` as a dict; a syntax error names the line and column where it was found."""
    try:
        return Success(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        where = f"line {position[1]}, column {position[2]}" if position else None
        problem = _TOML_POSITION.sub("", message) if position else message
        return Failure(
            ConfigInvalid(problem=f"invalid TOML: {problem}", source=source, field=where)
        )


def parse_json(text: str, source: str) -> Result[object, ConfigInvalid]:
    """JSON `text` as plain data; a syntax error names the line and column."""
    try:
        return Success(json.loads(text))
    except json.JSONDecodeError as exc:
        return Failure(
            ConfigInvalid(
                problem=f"invalid JSON: {exc.msg}",
                source=source,
                field=f"line {exc.lineno}, column {exc.colno}",
            )
        )
    except RecursionError:
        return Failure(ConfigInvalid(problem="invalid JSON: nested too deeply", source=source))


def read_toml(path: str) -> Result[dict[str, Any], ConfigInvalid]:
    return read_text(path).bind(lambda text: parse_toml(text, path))


def read_json(path: str) -> Result[object, ConfigInvalid]:
    return read_text(path).bind(lambda text: parse_json(text, path))
