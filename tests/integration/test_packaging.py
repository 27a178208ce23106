"""The sdist and the wheel: built offline from a copy of this checkout (the wheel from the
sdist, as `python -m build` does, so a file the sdist lacks is missing from the wheel too),
without a warning, with the license, the exec shim's source and the image recipe the error
messages point to; and the wheel alone, unpacked, does what a pip user is told to do."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import mechasandbox
from mechasandbox.runner import native

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = mechasandbox.__version__
# What a checkout holds that is no source of the package (caches, the venv, builds, the
# exec shim built for this host).
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.egg-info",
    ".*_cache",
    ".hypothesis",
    "build",
    "dist",
    "results",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path, str]:
    """(the sdist, the wheel, what the build printed)."""
    tree = tmp_path_factory.mktemp("checkout") / "mechasandbox"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    out = tree / "dist"
    # With bytecode writing off (PYTHONDONTWRITEBYTECODE), setuptools warns that it does not
    # byte-compile: that says nothing of the package.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel, log


def test_the_build_prints_no_warning(built: tuple[pathlib.Path, pathlib.Path, str]) -> None:
    log = built[2]
    assert [line for line in log.splitlines() if "warn" in line.lower()] == []


def test_the_wheel_holds_the_license_shim_source_and_image_recipe(
    built: tuple[pathlib.Path, pathlib.Path, str],
) -> None:
    with zipfile.ZipFile(built[1]) as wheel:
        names = set(wheel.namelist())
        modes = {info.filename: info.external_attr >> 16 for info in wheel.infolist()}
        metadata = wheel.read(f"mechasandbox-{VERSION}.dist-info/METADATA").decode()
    assert {
        f"mechasandbox-{VERSION}.dist-info/licenses/LICENSE",
        "mechasandbox/py.typed",
        "mechasandbox/defaults/default.toml",
        "mechasandbox/runner/shim/exec_shim.c",
        "mechasandbox/images/Dockerfile",
        "mechasandbox/images/busybox-rootfs.sh",
        "mechasandbox/images/__main__.py",
        "mechasandbox/cli/build_shim.py",
    } <= names
    assert modes["mechasandbox/images/busybox-rootfs.sh"] & 0o111
    # A binary built for this host is never shipped.
    assert f"mechasandbox/runner/shim/{native.SHIM_NAME}" not in names
    headers, _, description = metadata.partition("\n\n")
    assert f"Version: {VERSION}" in headers.splitlines()
    assert "License-Expression: MIT" in headers.splitlines()
    assert "Project-URL: Homepage, https://github.com/mechasandbox/mechasandbox" in headers
    assert any(line.startswith("Classifier: ") for line in headers.splitlines())
    # PyPI's description says what this is before any command, and no make target.
    assert "# mechasandbox\n\nmechasandbox runs commands" in description
    assert "make demo" not in description


def test_the_sdist_holds_what_builds_tests_and_documents_it(
    built: tuple[pathlib.Path, pathlib.Path, str],
) -> None:
    with tarfile.open(built[0]) as sdist:
        names = {name.partition("/")[2] for name in sdist.getnames()}
    assert {
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "Makefile",
        "pyproject.toml",
        "docs/cli.md",
        "docs/pypi.md",
        "scripts/ci-engines.sh",
        "src/mechasandbox/runner/shim/exec_shim.c",
        "src/mechasandbox/images/Dockerfile",
        "src/mechasandbox/images/busybox-rootfs.sh",
        "tests/conftest.py",
    } <= names
    assert f"src/mechasandbox/runner/shim/{native.SHIM_NAME}" not in names


def test_the_unpacked_wheel_alone_shows_its_recipe_and_builds_its_shim(
    built: tuple[pathlib.Path, pathlib.Path, str], tmp_path: pathlib.Path
) -> None:
    """What a pip user runs: the wheel's own files, not this checkout's."""
    site = tmp_path / "site"
    with zipfile.ZipFile(built[1]) as wheel:
        wheel.extractall(site)
    env = {k: v for k, v in os.environ.items() if k != native.SHIM_ENV} | {"PYTHONPATH": str(site)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )

    shown = run("-m", "mechasandbox.images")
    assert shown.returncode == 0, shown.stderr
    assert f"docker build -t mechasandbox/sandbox:latest {site}/mechasandbox/images" in shown.stdout
    assert f"bash {site}/mechasandbox/images/busybox-rootfs.sh" in shown.stdout
    version = run("-m", "mechasandbox", "--version")
    assert (version.returncode, version.stdout) == (0, f"mechasandbox {VERSION}\n")
    if not sys.platform.startswith("linux") or shutil.which("cc") is None:
        return  # the shim: Linux only, and test_build_shim says why it is not built here
    # Where the installed package's runner looks when nothing else is configured.
    shim = site / "mechasandbox" / "runner" / "shim" / native.SHIM_NAME
    built_shim = run("-m", "mechasandbox", "build-shim")
    assert built_shim.returncode == 0, built_shim.stderr
    assert built_shim.stdout.startswith(f"exec shim built: {shim} ")
    assert native.speaks_protocol(str(shim))
