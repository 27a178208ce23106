"""The command's environment, handed to the engine CLI as an env file on a private descriptor.

`--env NAME=VALUE` would put every value on the CLI's command line, which any user of the
host can read in `/proc/PID/cmdline`. The CLI gets `--env-file /dev/fd/3` instead, where
descriptor 3 is an anonymous memory file holding it, made in the child just before it execs the CLI
(the hook that hands bwrap its seccomp program; the exec shim does it natively): only the
CLI itself, and whoever may ptrace it, can read it. Both `run` and the pool's `exec` take it.

The format is one `NAME=VALUE` per line, parsed by the CLI: docker and podman take what
follows the first `=` verbatim (no quotes, no escapes), skip lines that start with `#`, and
strip leading whitespace from a line; docker refuses a file that is not UTF-8, and drops a
carriage return before a line break. So a value cannot hold a line break (`\\n`, `\\r`), and a
name must be printable ASCII without `=` and not start with `#`. A variable that does not
fit is refused (`ConfigInvalid` naming it), never changed or dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import ConfigInvalid
from mechasandbox.runner import fd_data
from mechasandbox.runner.spec import ChildHook

ENV_FILE_FD = 3
ENV_FILE = f"/dev/fd/{ENV_FILE_FD}"
# A policy's environment is a few variables; far more is a mistake, refused with a reason.
MAX_ENV_FILE_BYTES = 65536
_FIELD = "environment"


def _problem(name: str, value: str) -> str | None:
    if not name or not all("!" <= char <= "~" for char in name) or "=" in name:
        return "a container's variable name must be printable ASCII without spaces or '='"
    if name.startswith("#"):
        return "a container's variable name cannot start with '#' (a comment in an env file)"
    if any(char in value for char in "\n\r\0"):
        return (
            "its value holds a line break, which the engine's env file cannot carry "
            "(one variable per line)"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "its value is not valid UTF-8, which the engine's env file requires"
    return None


def env_file(env: Mapping[str, str]) -> Result[bytes, ConfigInvalid]:
    """The env file for `env`, or why one of its variables cannot be passed."""
    lines: list[bytes] = []
    for name, value in sorted(env.items()):
        problem = _problem(name, value)
        if problem is not None:
            return Failure(ConfigInvalid(problem=f"variable {name!r}: {problem}", field=_FIELD))
        lines.append(f"{name}={value}\n".encode())
    content = b"".join(lines)
    if len(content) > MAX_ENV_FILE_BYTES:
        return Failure(
            ConfigInvalid(
                problem=(
                    f"the command's environment is {len(content)} bytes, more than the "
                    f"{MAX_ENV_FILE_BYTES} an env file may hold"
                ),
                field=_FIELD,
            )
        )
    return Success(content)


def env_file_hook(content: bytes) -> ChildHook:
    """The child hook that makes `content` readable on `ENV_FILE_FD` of the engine CLI."""
    return ChildHook(target=fd_data.TARGET, argument=fd_data.argument(ENV_FILE_FD, content))
