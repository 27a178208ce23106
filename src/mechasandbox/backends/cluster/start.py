"""Start a Ray node that advertises what this machine enforces (`resources`).

    mechasandbox-ray-node [--print] [--image IMAGE] [--runtime NAME]... -- RAY-START-ARGS
    (or python -m mechasandbox.backends.cluster.start ...)

probes every confining backend here (as `doctor` does; the container engines with
`--image`, also under each `--runtime`, e.g. `runsc` for gVisor), then runs `ray start
RAY-START-ARGS --resources '{...}'` with them (`--print`: prints that command instead, a
recipe to adapt). Ray's own options stay Ray's: `--head`, `--address`, `--block`...
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Iterator, Sequence

from returns.result import Success

from mechasandbox.backends.catalog import CATALOG
from mechasandbox.backends.cluster.resources import advertised, variant
from mechasandbox.containers import Application
from mechasandbox.domain.capabilities import Capabilities

_ENGINES = ("docker", "podman")


def _probed(app: Application, names: Sequence[str]) -> Iterator[tuple[str, Capabilities]]:
    for name in names:
        found = app.backends.named(name).probe()
        if isinstance(found, Success):
            yield name, found.unwrap()


def _application(**settings: object) -> Application:
    app = Application()
    app.config.from_dict({**app.config(), **settings})
    return app


def node_capabilities(
    runtimes: Sequence[str] = (), image: str | None = None
) -> list[tuple[str, Capabilities]]:
    """What each available confining backend enforces here, by variant (`image`: the one
    the container backends run in, which must be present to count)."""
    names = [e.name for e in CATALOG if e.confines and e.name != "ray"]
    app = _application(image=image)
    try:
        found = list(_probed(app, names))
    finally:
        app.shutdown_resources()
    for runtime in runtimes:
        with_runtime = _application(image=image, runtime=runtime)
        try:
            found += [
                (variant(name, runtime), capabilities)
                for name, capabilities in _probed(with_runtime, _ENGINES)
            ]
        finally:
            with_runtime.shutdown_resources()
    return found


def node_command(
    ray_arguments: Sequence[str], runtimes: Sequence[str] = (), image: str | None = None
) -> list[str]:
    """`ray start` with this machine's resources (see the module's docstring)."""
    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    ray = beside if os.access(beside, os.X_OK) else "ray"
    resources = advertised(node_capabilities(runtimes, image))
    return [ray, "start", *ray_arguments, "--resources", json.dumps(resources, sort_keys=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mechasandbox-ray-node",
        description="Start a Ray node advertising what mechasandbox enforces here.",
    )
    parser.add_argument("--print", action="store_true", help="print the command, run nothing")
    parser.add_argument(
        "--runtime", action="append", default=[], help="also probe docker/podman under it"
    )
    parser.add_argument("--image", help="the image docker/podman run in (as [backend] image)")
    parser.add_argument("ray_arguments", nargs="*", help="`ray start`'s own, after --")
    options = parser.parse_args(argv)
    if "--resources" in options.ray_arguments:
        parser.error("--resources is this command's to write")
    command = node_command(options.ray_arguments, options.runtime, options.image)
    if options.print:
        print(shlex.join(command))
        return 0
    os.execv(command[0], command) if os.sep in command[0] else os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
