"""`mechasandbox build-shim`: compile the exec shim where the runner looks for it.

The shim (`runner/shim/exec_shim.c`, see `runner.native`) ships as source: a built binary
is for one platform, and the wheel is not. A checkout builds it with `make shim`; this is
the same build for an installed package, with the system C compiler (`$CC`, else `cc`,
`gcc` or `clang`), into `$MECHASANDBOX_EXEC_SHIM` when that names a path, else beside the
package. The result is checked the way the spawn helper checks it (it must answer
`--protocol` with ours), so a binary this prints is one the runner uses.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from mechasandbox.leftovers import sweep_temp_dir, temp_prefix
from mechasandbox.runner import native

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


def build(destination: str) -> None:
    """Compile the shim to `destination`, replacing what is there only with a binary that
    speaks our protocol."""
    command = compiler()
    directory = os.path.dirname(destination)
    try:
        os.makedirs(directory, exist_ok=True)
        sweep_temp_dir(directory)  # what a build killed midway left
        fd, partial = tempfile.mkstemp(prefix=temp_prefix("shim"), dir=directory)
    except OSError as error:
        raise BuildFailed(
            f"cannot write to {directory} ({error.strerror}): set {native.SHIM_ENV} to a "
            "path you can write and run `mechasandbox build-shim` again with it set"
        ) from error
    os.close(fd)
    try:
        try:
            done = subprocess.run(
                [*command, *CFLAGS, "-o", partial, native.SHIM_SOURCE],
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
        if not native.speaks_protocol(partial):
            raise BuildFailed(f"the built shim does not answer --protocol {native.PROTOCOL}")
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
    return 0
