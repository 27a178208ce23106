"""Argument parsing for `run` and `policy`, and turning options into `PolicyChanges`.

Parse errors never print a traceback: they become `ConfigInvalid` naming the option.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from returns.result import Failure, Result, Success

from mechasandbox.backends.catalog import NAMES
from mechasandbox.config.changes import PolicyChanges
from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.domain.policy import HostProcesses, NetworkMode

T = TypeVar("T")


class UsageError(Exception):
    """Raised by the parser instead of exiting, so the CLI can answer with exit 125."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--backend", default=None, choices=NAMES, help="sandbox backend (default: auto)")
    add("--workspace", default=None, help="working directory and writable tree (default: .)")
    add("--network", default=None, choices=[m.value for m in NetworkMode])
    add("--allow-domain", action="append", default=[], metavar="PATTERN")
    add("--deny-domain", action="append", default=[], metavar="PATTERN")
    add(
        "--allow-unix-socket",
        action="append",
        default=[],
        metavar="PATH",
        help='a host unix socket the command may connect to (e.g. "$SSH_AUTH_SOCK")',
    )
    add("--allow-read", action="append", default=[], metavar="PATH")
    add("--allow-write", action="append", default=[], metavar="PATH")
    add("--deny-read", action="append", default=[], metavar="PATH")
    add("--deny-write", action="append", default=[], metavar="PATH")
    add("--timeout", default=None, metavar="DURATION")
    add("--cpu-time", default=None, metavar="DURATION")
    add("--memory", default=None, metavar="SIZE")
    add("--max-processes", default=None, metavar="N")
    add("--max-open-files", default=None, metavar="N")
    add("--max-file-size", default=None, metavar="SIZE")
    add("--max-output", default=None, metavar="SIZE")
    add("--env", action="append", default=[], metavar="NAME=VALUE")
    add("--pass-env", action="append", default=[], metavar="NAME")
    add("--image", default=None, help="container image (docker, podman, apple-container)")
    add("--config", action="append", default=[], metavar="FILE")
    add(
        "--host-processes",
        default=None,
        choices=[h.value for h in HostProcesses],
        help="hidden (default; needs a pid namespace) or visible (lets landlock run)",
    )
    add("--best-effort", action="store_true")
    add("--json", action="store_true", help="print one JSON object instead of the output")
    add("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")


def _field(option: str, parsed: Result[T, str]) -> Result[T, ConfigInvalid]:
    return parsed.alt(lambda problem: ConfigInvalid(problem=problem, source=option))


def _count(option: str, text: str) -> Result[int, ConfigInvalid]:
    if text.isdigit() and int(text) > 0:
        return Success(int(text))
    return Failure(
        ConfigInvalid(problem=f"expected a positive whole number, got {text!r}", source=option)
    )


def _optional(
    option: str, text: str | None, parse: Callable[[str, str], Result[T, ConfigInvalid]]
) -> Result[T | None, ConfigInvalid]:
    if text is None:
        return Success(None)
    return parse(option, text)


def _size(option: str, text: str) -> Result[int, ConfigInvalid]:
    from mechasandbox.domain.units import parse_size  # decimal: only for calls that use it

    return _field(option, parse_size(text))


def _duration(option: str, text: str) -> Result[float, ConfigInvalid]:
    from mechasandbox.domain.units import parse_duration

    return _field(option, parse_duration(text))


def _env_pairs(values: Sequence[str]) -> Result[tuple[tuple[str, str], ...], ConfigInvalid]:
    pairs: list[tuple[str, str]] = []
    for value in values:
        name, sep, content = value.partition("=")
        if not sep or not name or not name.replace("_", "a").isalnum():
            return Failure(
                ConfigInvalid(problem=f"expected NAME=VALUE, got {value!r}", source="--env")
            )
        pairs.append((name, content))
    return Success(tuple(pairs))


def _socket_paths(values: Sequence[str]) -> Result[tuple[str, ...], ConfigInvalid]:
    for value in values:
        if not value.startswith(("/", "~")):
            return Failure(
                ConfigInvalid(
                    problem=f"{value!r} is relative; write an absolute path or one starting with ~",
                    source="--allow-unix-socket",
                )
            )
    return Success(tuple(values))


def policy_changes(args: argparse.Namespace) -> Result[PolicyChanges, ConfigInvalid]:
    """What the options the user gave change on top of the configuration files."""
    limit_options = (
        ("timeout_s", "--timeout", args.timeout, _duration),
        ("cpu_time_s", "--cpu-time", args.cpu_time, _duration),
        ("memory_bytes", "--memory", args.memory, _size),
        ("max_processes", "--max-processes", args.max_processes, _count),
        ("max_open_files", "--max-open-files", args.max_open_files, _count),
        ("max_file_size_bytes", "--max-file-size", args.max_file_size, _size),
        ("max_output_bytes", "--max-output", args.max_output, _size),
    )
    limits: list[tuple[str, float | int]] = []
    for field, option, text, parse in limit_options:
        parsed = _optional(option, text, parse)
        if isinstance(parsed, Failure):
            return Failure(parsed.failure())
        value = parsed.unwrap()
        if value is not None:
            limits.append((field, value))
    return _env_pairs(args.env).bind(
        lambda env_pairs: _socket_paths(args.allow_unix_socket).map(
            lambda sockets: PolicyChanges(
                allow_read=tuple(args.allow_read),
                allow_write=tuple(args.allow_write),
                deny_read=tuple(args.deny_read),
                deny_write=tuple(args.deny_write),
                network=NetworkMode(args.network) if args.network else None,
                allow_domains=tuple(args.allow_domain),
                deny_domains=tuple(args.deny_domain),
                allow_unix_sockets=sockets,
                pass_env=tuple(args.pass_env),
                set_env=env_pairs,
                limits=tuple(limits),
                best_effort=bool(args.best_effort),
                host_processes=(
                    HostProcesses(args.host_processes) if args.host_processes else None
                ),
                backend=args.backend,
                image=args.image,
            )
        )
    )


def command_of(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return command
