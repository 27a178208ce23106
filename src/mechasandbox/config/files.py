"""Reading one configuration file into plain data, with every failure as `ConfigInvalid`.

Files are read with a size cap (a policy file is a few hundred bytes; a huge one is a
mistake or an attack on the loader) and parsed with the standard library only. Nothing is
interpolated: `${HOME}` in a value stays the literal text `${HOME}`, because textual
substitution can inject keys and values the author of the file never wrote.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tomllib
from typing import Any

from returns.result import Failure, Result, Success

from mechasandbox.config import validation
from mechasandbox.domain.errors import ConfigInvalid

MAX_CONFIG_BYTES = 1024 * 1024
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _read_regular(path: str, *, follow: bool) -> bytes:
    """At most the cap and one byte of the regular file at `path`. Opened without blocking
    (a FIFO planted there would otherwise hang the caller) and, unless `follow`, without
    following a symlink (a project file is the repository's: a link to `/dev/stdin` or to
    a host file would be read as the caller)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return stream.read(MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)


def read_text(path: str, *, follow: bool = True) -> Result[str, ConfigInvalid]:
    """The UTF-8 text of `path`, or why it cannot be had (missing, a directory, not a
    regular file, too big; with `follow=False`, a symlink)."""
    named = validation.text(path, "file name")  # `--config ''` names no file
    if isinstance(named, Failure):
        return Failure(ConfigInvalid(problem=named.failure(), source="configuration file"))
    try:
        data = _read_regular(path, follow=follow)
    except FileNotFoundError:
        return Failure(ConfigInvalid(problem="file not found", source=path))
    except IsADirectoryError:
        return Failure(ConfigInvalid(problem="is a directory, not a file", source=path))
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            return Failure(
                ConfigInvalid(problem="is a symlink; a project file must be a file", source=path)
            )
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
    except RecursionError:
        return Failure(ConfigInvalid(problem="invalid TOML: nested too deeply", source=source))
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


def read_toml(path: str, *, follow: bool = True) -> Result[dict[str, Any], ConfigInvalid]:
    return read_text(path, follow=follow).bind(lambda text: parse_toml(text, path))


def read_json(path: str, *, follow: bool = True) -> Result[object, ConfigInvalid]:
    return read_text(path, follow=follow).bind(lambda text: parse_json(text, path))
