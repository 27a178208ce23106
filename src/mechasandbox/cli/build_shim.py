"""`mechasandbox build-shim`: compile the exec shim, and the session agent, where the
runner and the sessions look for them.

The shim (`runner/shim/exec_shim.c`, see `runner.native`) and the agent
(`runner/shim/session_agent.c`, see `runner.session_protocol`) ship as source: a built
binary is for one platform, and the wheel is not. A checkout builds them with `make shim`;
this is the same build for an installed package, with the system C compiler (`$CC`, else
`cc`, `gcc` or `clang`), into `$MECHASANDBOX_EXEC_SHIM` / `$MECHASANDBOX_SESSION_AGENT`
when those name a path, else beside the package. The agent is linked statically (it runs
inside sandboxes whose file system it must not need: a static libc, Debian's libc6-dev).
Each result is checked the way its user checks it (it must answer `--protocol` with ours),
so a binary this prints is one that is used. The agent is optional: without it the shim
still counts as built (sessions on bubblewrap and landlock say they need it).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

from mechasandbox.leftovers import sweep_temp_dir, temp_prefix
from mechasandbox.runner import native, session_protocol

# The Makefile's flags for `make shim`: the same binary either way.
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror")
COMPILERS = ("cc", "gcc", "clang")
FAILED = 125  # CLI.md's status for a failure of mechasandbox itself
COMPILE_TIMEOUT_S = 300.0


class BuildFailed(Exception):
    """The shim was not built; the message says why and what to do."""


def target() -> str:
    """Where the runner looks for the shim (see `native.shim_path`)."""
    configured = os.environ.get(native.SHIM_ENV, "")
    if configured and configured != "off":
        if not os.path.isabs(configured):
            raise BuildFailed(f"{native.SHIM_ENV}={configured} is not an absolute path")
        return configured
    return native.DEFAULT_SHIM


def compiler() -> list[str]:
    """The C compiler's command: `$CC` (may carry flags), else the first one on PATH."""
    configured = shlex.split(os.environ.get("CC", ""))
    if configured:
        return configured
    for name in COMPILERS:
        found = shutil.which(name)
        if found is not None:
            return [found]
    raise BuildFailed(
        "no C compiler found (cc, gcc or clang on PATH, or $CC): install one "
        "(Debian: apt-get install gcc libc6-dev) and run `mechasandbox build-shim` again"
    )


def agent_target() -> str:
    """Where the sessions look for the agent (see `session_protocol.agent_path`)."""
    configured = os.environ.get(session_protocol.AGENT_ENV, "")
    if configured and configured != "off":
        if not os.path.isabs(configured):
            raise BuildFailed(f"{session_protocol.AGENT_ENV}={configured} is not an absolute path")
        return configured
    return session_protocol.DEFAULT_AGENT


def build(destination: str) -> None:
    """Compile the shim to `destination`, replacing what is there only with a binary that
    speaks our protocol."""
    _compile(native.SHIM_SOURCE, destination, (), native.SHIM_ENV, native.speaks_protocol)


def build_agent(destination: str) -> None:
    """Compile the session agent (static) to `destination`, as `build` the shim."""
    _compile(
        session_protocol.AGENT_SOURCE,
        destination,
        ("-static",),
        session_protocol.AGENT_ENV,
        session_protocol.agent_speaks,
    )


def _compile(
    source: str,
    destination: str,
    flags: tuple[str, ...],
    variable: str,
    speaks: Callable[[str], bool],
) -> None:
    command = compiler()
    directory = os.path.dirname(destination)
    try:
        os.makedirs(directory, exist_ok=True)
        sweep_temp_dir(directory)  # what a build killed midway left
        fd, partial = tempfile.mkstemp(prefix=temp_prefix("shim"), dir=directory)
    except OSError as error:
        raise BuildFailed(
            f"cannot write to {directory} ({error.strerror}): set {variable} to a "
            "path you can write and run `mechasandbox build-shim` again with it set"
        ) from error
    os.close(fd)
    try:
        try:
            done = subprocess.run(
                [*command, *CFLAGS, *flags, "-o", partial, source],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise BuildFailed(f"the C compiler {command[0]} did not run: {error}") from error
        if done.returncode != 0:
            raise BuildFailed(
                f"{shlex.join(command)} failed (exit {done.returncode}):\n"
                f"{(done.stderr or done.stdout).strip()}"
            )
        os.chmod(partial, 0o755)  # noqa: S103 - a program, as `make shim` leaves it
        if not speaks(partial):
            raise BuildFailed(
                f"the built {os.path.basename(destination)} does not speak our protocol"
            )
        os.replace(partial, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def main() -> int:
    if not sys.platform.startswith("linux"):
        print("mechasandbox: error: the exec shim is Linux only", file=sys.stderr)
        return FAILED
    try:
        destination = target()
        build(destination)
    except BuildFailed as error:
        print(f"mechasandbox: error: exec shim not built: {error}", file=sys.stderr)
        print("(runs take the slower, forked way without it)", file=sys.stderr)
        return FAILED
    print(f"exec shim built: {destination} (protocol {native.PROTOCOL})")
    if os.environ.get(native.SHIM_ENV) == "off":
        print(f"note: {native.SHIM_ENV}=off: runs do not use it while that is set")
    try:
        agent = agent_target()
        build_agent(agent)
    except BuildFailed as error:
        print(f"mechasandbox: warning: session agent not built: {error}", file=sys.stderr)
        print("(no sessions on bubblewrap and landlock without it)", file=sys.stderr)
        return 0
    print(f"session agent built: {agent} (protocol {session_protocol.SESSION_PROTOCOL})")
    return 0
