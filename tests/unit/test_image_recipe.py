"""The image recipe the docker and podman probes point to when their image is missing."""

from __future__ import annotations

import os
import subprocess
import sys

from mechasandbox.backends.oci.engine import DEFAULT_IMAGE
from mechasandbox.images import BUSYBOX_ROOTFS, DOCKERFILE, RECIPE_DIR, instructions


def test_the_recipe_files_are_there() -> None:
    assert DOCKERFILE.is_file()
    assert BUSYBOX_ROOTFS.is_file() and os.access(BUSYBOX_ROOTFS, os.X_OK)


def test_the_instructions_name_the_image_and_the_files_as_they_are_here() -> None:
    text = instructions("example/image:1")
    assert f"docker build -t example/image:1 {RECIPE_DIR}\n" in text
    assert f'bash {BUSYBOX_ROOTFS} "$rootfs"' in text
    assert text.rstrip().endswith("For podman, the same commands with podman.")


def test_python_m_mechasandbox_images_prints_them_for_the_default_image() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mechasandbox.images"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == instructions(DEFAULT_IMAGE) + "\n"
