"""The recipe of the default container image, shipped with the package.

`Dockerfile` builds it on hosts with registry access; `busybox-rootfs.sh` is the offline
recipe (a static busybox and the host's socat, then `docker import`/`podman import`). The
docker and podman backends never pull an image: when theirs is missing they point here,
and `python -m mechasandbox.images` says where the recipe is and how to build from it.
"""

from __future__ import annotations

from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent
DOCKERFILE = RECIPE_DIR / "Dockerfile"
BUSYBOX_ROOTFS = RECIPE_DIR / "busybox-rootfs.sh"
# What `docker import` gives the image: the recipe sets no PATH of its own.
IMPORT_CHANGE = "ENV PATH=/usr/local/bin:/usr/bin:/bin"


def instructions(image: str) -> str:
    """How to build `image` from the recipe, online and offline, as shell commands."""
    return "\n".join(
        (
            f"The recipe of the image {image} is in {RECIPE_DIR}",
            "",
            "With registry access:",
            f"  docker build -t {image} {RECIPE_DIR}",
            "",
            "Offline (needs a static busybox, Debian: busybox-static; socat is copied from",
            "this host for --network allowlist):",
            "  rootfs=$(mktemp -d)",
            f'  bash {BUSYBOX_ROOTFS} "$rootfs"',
            '  tar --owner=0 --group=0 --numeric-owner -C "$rootfs" -c . |',
            f"    docker import --change '{IMPORT_CHANGE}' - {image}",
            "",
            "For podman, the same commands with podman.",
        )
    )
