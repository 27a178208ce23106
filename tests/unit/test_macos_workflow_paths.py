"""The macOS workflow runs on a pull request only when it touches what it tests: its path
filter must cover every module the macOS backends import, directly or not, so that a change
to, say, `domain/policy.py` or `backends/template.py` runs the real-sandbox tests."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).parents[2]
SOURCE = REPO / "src"
WORKFLOW = REPO / ".github" / "workflows" / "macos.yml"
# What the workflow runs besides the package: the tests, the build, the project's metadata.
ALSO = ("pyproject.toml", "Makefile", "tests/backends/test_seatbelt_macos.py")


def pull_request_paths() -> list[str]:
    """The `on.pull_request.paths` globs of the workflow (a plain list in the file)."""
    text = WORKFLOW.read_text()
    block = re.search(r"\n  pull_request:\n    paths:\n((?:      - .*\n)+)", text)
    assert block is not None, "the workflow has no pull_request paths list"
    return [line.split("- ", 1)[1].strip().strip('"') for line in block.group(1).splitlines()]


def module_file(name: str) -> Path | None:
    """The source file of module `name` of the package, None for other modules."""
    if name != "mechasandbox" and not name.startswith("mechasandbox."):
        return None
    base = SOURCE.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[str]:
    """The package modules `path` imports (a `from X import y` may name a module y)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def macos_backend_closure() -> set[Path]:
    """Every source file the macOS backends import, transitively, with the packages'
    `__init__` files on the way."""
    start = sorted((SOURCE / "mechasandbox" / "backends" / "macos").glob("*.py"))
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports_of(path):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # the packages on the way are run too
                found = module_file(".".join(parts[:depth]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def test_the_path_filter_covers_everything_the_macos_backends_import() -> None:
    globs = pull_request_paths()
    files = [str(p.relative_to(REPO)) for p in macos_backend_closure()] + list(ALSO)
    uncovered = sorted(f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs))
    assert uncovered == [], f"add to {WORKFLOW.name}'s pull_request paths: {uncovered}"


def test_the_closure_is_not_vacuous() -> None:
    closure = {str(p.relative_to(SOURCE / "mechasandbox")) for p in macos_backend_closure()}
    assert {
        "backends/macos/seatbelt.py",
        "backends/base.py",
        "backends/template.py",
        "domain/policy.py",
        "network/proxy/__init__.py",
    } <= closure
